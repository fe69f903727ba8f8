"""TensorRT engines from the fused ONNX graph (GPU hosts; nothing here is imported on a CPU path).

- TensorRT 10 or 11, strongly typed, from ``fused_fp16.onnx`` (FP16 models; FP32 I/O, normalisation,
  SAR median and cloud score): the graph's types are the engine's types. 11 has only this mode
  (``BuilderFlag.FP16`` is gone; its ``STRONGLY_TYPED`` creation flag is kept but ignored); on 10.x that
  flag opts in (weak typing is deprecated since 10.12). Weak typing (``BuilderFlag.FP16`` on the FP32
  graph) would let TensorRT run any layer in FP16, the normalisation of raw optical values near 1e4
  included, which is what the FP16 graph keeps in FP32; so it is never used.
- An older TensorRT is refused when imported: 8.x builds implicit-batch networks unless told otherwise,
  and its ONNX parser stops at opset 17 (the graphs are opset 18).
- One optimisation profile on the batch axis (``--min/--opt/--max-batch``).
- A timing cache per (TensorRT version, GPU) in the engine folder makes rebuilds fast.
- Engines are cached as ``engines/fused-<key>.engine`` with key = hash(graph sha256, TensorRT
  version, GPU name, profile) and a JSON sidecar; the runner refuses one whose key parts differ.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from landslide.contract import stable_hash
from landslide.errors import ConfigError, ContractError
from landslide.export.sidecar import read_sidecar, rebuild_command, sidecar_path, write_sidecar
from landslide.export.staging import staged
from landslide.io import atomic_write

log = logging.getLogger(__name__)

INSTALL = "pip install tensorrt (matching your CUDA driver), on a machine with an NVIDIA GPU"
MIN_MAJOR = 10


def import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ConfigError("TensorRT is not installed", fix=INSTALL) from None
    check_version(trt.__version__)
    return trt


def check_version(version: str) -> None:
    major = int(version.split(".")[0])
    if major < MIN_MAJOR:
        raise ConfigError(f"TensorRT {version} is too old: landslide builds and runs engines with TensorRT "
                          f"{MIN_MAJOR} or 11 (strongly typed networks, opset-18 graphs, name-based I/O)",
                          fix="pip install 'tensorrt>=10' (matching your CUDA driver), or use --engine aoti")


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("TensorRT needs a CUDA GPU and this host has none",
                          fix="build engines on the GPU machine that will run them (or use --engine aoti)")
    return torch.cuda.get_device_name(torch.cuda.current_device())  # the GPU the engine is built/run on


def network_flags(trt) -> int:
    """``STRONGLY_TYPED`` where the enum has it (needed on 10.x, ignored on 11); a later release that drops
    it types every network strongly anyway."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def source_graph(export_dir: Path) -> Path:
    return export_dir / "fused_fp16.onnx"


def engine_key(graph_sha256: str, trt, profile: tuple[int, int, int]) -> dict:
    return {"graph_sha256": graph_sha256, "tensorrt": trt.__version__, "gpu": gpu_name(),
            "profile": list(profile)}


def build_engine(export_dir: Path, engine_dir: Path, profile: tuple[int, int, int], x: np.ndarray,
                 ref: np.ndarray, *, rebuild: bool = False) -> Path:
    """Build (or reuse) the engine for ``export_dir``'s fused graph; verify it; write its sidecar."""
    from landslide.export.onnx import FP16_AGREEMENT, FP16_TOL, compare, require
    from landslide.infer import run_batches

    trt = import_trt()
    graph = source_graph(export_dir)
    gside = read_sidecar(graph, kind="onnx-fused")
    key = engine_key(gside["sha256"], trt, profile)  # read_sidecar has just checked the file against it
    path = engine_dir / f"fused-{stable_hash(key)}.engine"
    from landslide.ensemble import read_run
    from landslide.runtime.tensorrt import TensorRTRunner

    info = read_run(gside["source_run"])

    def sign_and_verify(engine: Path) -> None:
        write_sidecar(engine, kind="tensorrt", info=info, precision="fp16", run_sha=gside["source_hash"],
                      libs=("tensorrt",),
                      extra={"graph": graph.name, "cache_key": key, "gpu": key["gpu"], "profile": list(profile),
                             "build": "strongly typed from the FP16 graph"})
        got = run_batches(TensorRTRunner(engine), x, profile[2])
        require(compare(path.name, got, ref, float(gside["threshold"]), FP16_TOL, FP16_AGREEMENT), path)

    if path.is_file() and not rebuild:
        log.info("tensorrt: reusing %s (same graph, TensorRT, GPU and profile; --rebuild to force)", path)
        try:
            sign_and_verify(path)
        except Exception:
            # This very engine failed its check (nothing newer to keep the old one for): no contract.
            sidecar_path(path).unlink(missing_ok=True)
            raise
        return path
    t0 = time.perf_counter()
    plan = _build(trt, graph, engine_dir, profile)
    with staged(path) as p:  # the engine cached under this key stays until the new one verifies
        p.write_bytes(plan)
        log.info("tensorrt %s: built %s from %s in %.1f s", trt.__version__, path.name, graph.name,
                 time.perf_counter() - t0)
        sign_and_verify(p)
    return path


def _build(trt, graph: Path, engine_dir: Path, profile: tuple[int, int, int]) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # From the file, not its bytes: a graph over protobuf's 2 GB (the full fp32 ensemble) keeps its
    # weights in files beside it, which the parser finds only through the graph's path.
    if not parser.parse_from_file(str(graph)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ContractError(f"TensorRT cannot parse the graph: {errs}", file=graph,
                            fix=f"re-export it with this landslide version: {rebuild_command(graph)}")
    config = builder.create_builder_config()  # no precision flags: the graph's types decide
    name = network.get_input(0).name
    c, (h, w) = network.get_input(0).shape[3], (64, 64)
    prof = builder.create_optimization_profile()
    prof.set_shape(name, *[(b, h, w, c) for b in profile])
    config.add_optimization_profile(prof)
    cache_path = engine_dir / f"timing-{trt.__version__}-{stable_hash(gpu_name())}.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ContractError("TensorRT failed to build the engine (see the TensorRT log above)", file=graph,
                            fix="check the profile (--min/--opt/--max-batch) fits GPU memory")
    engine_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache_path, "wb") as f:
        f.write(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(plan))
