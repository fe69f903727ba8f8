"""AOTInductor: the fused ensemble through ``torch.export`` + Inductor into one ``.pt2`` package.

The package is compiled C++/Triton for one torch version and one device type, so it is cached in
the engine folder under a key of (run hash, torch version, device, batch profile), with a sidecar;
``landslide.runtime.aoti`` refuses a package whose key parts disagree with the host.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from landslide.contract import stable_hash
from landslide.device import ieee_fp32
from landslide.ensemble import FusedEnsemble, RunInfo
from landslide.export.onnx import FP32_TOL, compare, require, torch_run
from landslide.export.sidecar import read_sidecar, write_sidecar
from landslide.export.staging import staged
from landslide.runtime import pad_batch

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def package_key(run_sha: str, device: torch.device, profile: tuple[int, int, int]) -> dict:
    return {"run": run_sha, "torch": torch.__version__, "device": device_name(device), "profile": list(profile)}


def build_package(fused: FusedEnsemble, info: RunInfo, run_sha: str, engine_dir: Path,
                  profile: tuple[int, int, int], x: np.ndarray, ref: np.ndarray, *, rebuild: bool = False) -> Path:
    """Compile (or reuse) ``engine_dir/fused-<key>.pt2``; verify it against ``ref``; write its sidecar."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = package_key(run_sha, device, profile)
    path = engine_dir / f"fused-{stable_hash(key)}.pt2"
    if path.is_file() and not rebuild:
        read_sidecar(path, kind="aoti")
        log.info("aoti: reusing %s (same run, torch, device and profile; --rebuild to force)", path)
        _verify(path, str(path), device, x, ref, info.threshold, profile[2], profile[0])
        return path
    module = fused.to(device).eval()
    lo, hi = profile[0], profile[2]
    # torch.export specialises a dimension traced at size 1, so a dynamic batch is traced at >= 2
    # (within the profile); a profile of batch 1 alone is exported static.
    n = min(max(2, profile[1]), hi)
    example = torch.from_numpy(pad_batch(x[:n], n)).to(device)
    dynamic = ({0: torch.export.Dim("batch", min=lo, max=hi)},) if hi >= 2 else None
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad():
        ep = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    with staged(path) as p:
        built = torch._inductor.aoti_compile_and_package(ep, package_path=str(p))
        dt = time.perf_counter() - t0
        log.info("aoti: compiled %s on %s in %.1f s", path.name, device_name(device), dt)
        _verify(path, built, device, x, ref, info.threshold, hi, lo)
        write_sidecar(p, kind="aoti", info=info, precision="fp32", run_sha=run_sha,
                      extra={"device": device.type, "device_name": device_name(device), "profile": list(profile),
                             "cache_key": key, "compile_s": round(dt, 1)})
    return path


def _verify(path: Path, package: str, device: torch.device, x: np.ndarray, ref: np.ndarray, threshold: float,
            batch_size: int, min_batch: int = 1) -> None:
    """Load ``package`` and hold it to the CPU reference at fp32 tolerance (true fp32 on CUDA, not TF32)."""
    fn = torch._inductor.aoti_load_package(package)
    with ieee_fp32(device):
        got = torch_run(fn, x, batch_size, device, min_batch)
    require(compare(path.name, got, ref, threshold, FP32_TOL), path)
