"""The torch runner: the fused ensemble module, eager or ``torch.compile``d, on CPU or CUDA."""
from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from landslide.device import enable_autotune, resolve_runtime
from landslide.ensemble import build_ensemble
from landslide.runtime import Runner

CPU_CHUNK = 8  # patches per fused call on a CPU (32 views in flight)


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, run_dir: str | Path, device: str = "auto", precision: str = "fp32", compile: str = "off",
                 looped: bool = False, run_hash: Callable[[], str] | None = None) -> None:
        """``run_hash``: the run's hash as the caller computes it once (``infer.lazy_run_hash``), so that
        a shard's record does not read every checkpoint a second time."""
        self._run_hash = run_hash
        self.rt = resolve_runtime(device, precision, "auto", compile)
        enable_autotune(self.rt)  # fixed batch shapes: cuDNN's search runs once per shape
        module, info = build_ensemble(run_dir, looped=looped)
        self.module = module.to(self.rt.device)
        if self.rt.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.fn = torch.compile(self.module) if self.rt.compile else self.module
        self.info = info
        self.contract = info.contract
        self.threshold = info.threshold
        self.name = f"torch-{'looped' if looped else 'fused'}{'-compiled' if self.rt.compile else ''}"

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.rt.device.type == "cuda":
            xt = xt.pin_memory().to(self.rt.device, non_blocking=True)
        # On a CPU the 4x TTA batch of a large call spills the caches: measured (bench.infer), the fused
        # module at batch 32 ran at 0.6x the looped one. Chunks of CPU_CHUNK patches keep it ahead.
        with self.rt.autocast():
            if self.rt.device.type == "cpu":
                p = torch.cat([self.fn(xt[s:s + CPU_CHUNK]) for s in range(0, len(xt), CPU_CHUNK)])
            else:
                p = self.fn(xt)
        return p.float().cpu().numpy()

    @property
    def precision(self) -> str:
        return self.rt.precision

    @cached_property
    def source_hash(self) -> str:  # hashes every checkpoint: computed only when asked (a shard's record)
        if self._run_hash is not None:
            return self._run_hash()
        from landslide.export.sidecar import run_hash

        return run_hash(self.info)

    def describe(self) -> str:
        return f"{self.name} ({self.rt.describe()})"
