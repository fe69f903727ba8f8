"""The TensorRT runner: a cached engine, torch CUDA tensors as I/O buffers, one CUDA stream.

Input goes pinned host -> device asynchronously on the runner's stream; ``set_tensor_address`` binds
the torch buffers and ``execute_async_v3`` runs on the same stream, so copy and compute are ordered
without a host sync until the result is read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from landslide.errors import ContractError
from landslide.export.sidecar import read_sidecar, rebuild_command
from landslide.export.tensorrt import gpu_name, import_trt
from landslide.runtime import Runner, fit_profile


def mismatch(side: dict, trt) -> str | None:
    """Why the engine its sidecar ``side`` describes cannot run here, or None: engines are specific to the
    TensorRT version and the GPU model they were built on (``infer.find_engine`` skips those that differ)."""
    built_with = (side.get("versions") or {}).get("tensorrt")
    if built_with != trt.__version__:
        return f"engine built with TensorRT {built_with}, this is {trt.__version__}"
    if side.get("gpu") != (here := gpu_name()):
        return f"engine built for {side.get('gpu')}, this GPU is {here}"
    return None


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        import torch

        trt = import_trt()
        self.path = Path(path)
        side = read_sidecar(self.path, kind="tensorrt")
        self.rebuild = "rebuild it on this machine: " + rebuild_command(self.path, side)  # the real run folder and flags
        if why := mismatch(side, trt):
            raise ContractError(why, file=self.path, fix=self.rebuild)
        self.sidecar = side
        self.contract = side["contract"]
        self.threshold = float(side["threshold"])
        self.min_batch, _, self.max_batch = side["profile"]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ContractError("TensorRT could not deserialize the engine", file=self.path, fix=self.rebuild)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream()
        self.name = "tensorrt"

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        n = len(x)  # a last batch under the profile's minimum is padded (fit_profile), its extra rows dropped
        xp = fit_profile(x, (self.min_batch, self.max_batch), self.path, "engine")
        host = torch.from_numpy(np.ascontiguousarray(xp, dtype=np.float32)).pin_memory()
        with torch.cuda.stream(self.stream):
            xt = host.to("cuda", non_blocking=True)
            out = torch.empty(len(xt), dtype=torch.float32, device="cuda")
            self.context.set_input_shape(self.input, tuple(xt.shape))
            self.context.set_tensor_address(self.input, xt.data_ptr())
            self.context.set_tensor_address(self.output, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ContractError("TensorRT execution failed", file=self.path, fix=self.rebuild)
            res = out.to("cpu", non_blocking=True)
        self.stream.synchronize()
        return res.numpy()[:n]

    def describe(self) -> str:
        return (f"tensorrt ({self.path.name}, TensorRT {self.sidecar['versions'].get('tensorrt')}, "
                f"gpu={self.sidecar['gpu']}, precision=fp16, profile={self.sidecar['profile']})")
