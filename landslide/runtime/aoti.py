"""The AOTInductor runner: a ``.pt2`` package from ``export.py --engine aoti``.

A package is compiled code for one torch version and one device type (on CUDA, one GPU model): all
are checked against its sidecar before loading (:func:`mismatch`, which ``infer.find_engine`` also
uses to skip packages that cannot run here), so a stale package is refused with the command that
rebuilds it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landslide.device import tf32_note
from landslide.errors import ContractError
from landslide.export.sidecar import read_sidecar, rebuild_command
from landslide.runtime import Runner, fit_profile


def mismatch(side: dict, device_type: str | None = None) -> str | None:
    """Why the package its sidecar ``side`` describes cannot run here, or None. ``device_type`` (cpu|cuda),
    when given, is where it is to serve: a package for the other one is refused too."""
    built_with = (side.get("versions") or {}).get("torch")
    if built_with != torch.__version__:
        return f"package compiled with torch {built_with}, this is torch {torch.__version__}"
    if device_type is not None and side.get("device") != device_type:
        return f"package compiled for {side.get('device')}, serving on {device_type}"
    if side.get("device") == "cuda":
        if not torch.cuda.is_available():
            return "package compiled for CUDA, this host has no GPU"
        here = torch.cuda.get_device_name(torch.device("cuda"))  # the GPU it will run on, not always GPU 0
        if here != side.get("device_name"):
            return f"package compiled for {side.get('device_name')}, this GPU is {here}"
    return None


class AotiRunner(Runner):
    backend = "aoti"

    def __init__(self, path: str | Path, device_type: str | None = None) -> None:
        self.path = Path(path)
        side = read_sidecar(self.path, kind="aoti")
        self.rebuild = "rebuild it: " + rebuild_command(self.path, side)  # the real run folder and flags
        if why := mismatch(side, device_type):
            raise ContractError(why, file=self.path, fix=self.rebuild)
        self.device = torch.device(side["device"])
        self.sidecar = side
        self.contract = side["contract"]
        self.threshold = float(side["threshold"])
        self.min_batch, _, self.max_batch = side["profile"]
        self.fn = torch._inductor.aoti_load_package(str(self.path))
        self.name = "aoti"

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        xp = fit_profile(x, (self.min_batch, self.max_batch), self.path, "package")
        xt = torch.from_numpy(np.ascontiguousarray(xp, dtype=np.float32))
        if self.device.type == "cuda":
            xt = xt.pin_memory().to(self.device, non_blocking=True)
        return self.fn(xt).float().cpu().numpy()[:n]

    def describe(self) -> str:
        # Checked in true fp32 when built (export/aoti.py); served with the process's TF32 setting, as torch is.
        return f"aoti ({self.path.name}, device={self.sidecar['device_name']}, precision=fp32{tf32_note(self.device)})"
