"""The AOTInductor runner: a ``.pt2`` package from ``export.py --engine aoti``.

A package is compiled code for one torch version and one device type: both are checked against
its sidecar before loading, so a stale package is refused with the command that rebuilds it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landslide.errors import ContractError
from landslide.export.sidecar import read_sidecar, rebuild_command
from landslide.runtime import Runner, fit_profile


class AotiRunner(Runner):
    backend = "aoti"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        side = read_sidecar(self.path, kind="aoti")
        self.rebuild = "rebuild it: " + rebuild_command(self.path, side)  # the real run folder and flags
        built_with = side["versions"].get("torch")
        if built_with != torch.__version__:
            raise ContractError(f"package compiled with torch {built_with}, this is torch {torch.__version__}",
                                file=self.path, fix=self.rebuild)
        self.device = torch.device(side["device"])
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ContractError("package compiled for CUDA, this host has no GPU", file=self.path, fix=self.rebuild)
            here = torch.cuda.get_device_name(self.device)  # the GPU it will run on, not always GPU 0
            if here != side["device_name"]:
                raise ContractError(f"package compiled for {side['device_name']}, this GPU is {here}",
                                    file=self.path, fix=self.rebuild)
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
        return f"aoti ({self.path.name}, device={self.sidecar['device_name']}, precision=fp32)"
