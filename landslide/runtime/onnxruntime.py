"""The ONNX Runtime runner: a fused graph from ``export.py`` on an explicitly chosen provider.

Providers are named, never guessed: ``cpu``, ``cuda`` (CUDA EP) or ``tensorrt`` (TensorRT EP, CUDA EP
behind it for unsupported nodes). ONNX Runtime silently drops a provider it cannot load and runs on
the CPU, so after the session is created the providers it actually uses are checked, and a missing
one is an error that names the package to install.
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np

from landslide.errors import ConfigError
from landslide.export.sidecar import read_sidecar
from landslide.runtime import Runner

log = logging.getLogger(__name__)

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
INSTALL = {"tensorrt": "pip install onnxruntime-gpu tensorrt (and a CUDA GPU)",
           "cuda": "pip install onnxruntime-gpu (instead of onnxruntime; needs a CUDA GPU)", "cpu": "pip install onnxruntime"}


TRT_MAX_BATCH = 256  # the TensorRT EP's profile covers batches 1 .. max(this, --batch-size)


def provider_options(provider: str, device_id: int, graph: Path, side: dict, batch_size: int = 64) -> dict:
    """ONNX Runtime options for one of :data:`PROVIDERS` (short name) on CUDA device ``device_id``.

    For the TensorRT EP: one explicit batch profile, because without it the EP builds an engine for
    the shapes seen so far and rebuilds it (minutes for a whole ensemble) whenever a batch falls
    outside them (a last partial batch, a benchmark's next size); and engine + timing caches beside
    the graph, so the next process loads the engine instead of rebuilding it. The graph's own types
    decide the precision (``fused_fp16.onnx`` for FP16), so ``trt_fp16_enable`` stays off.
    """
    opts: dict = {"device_id": device_id}
    if provider != "tensorrt":
        return opts
    name, dims = side["input"]["name"], "x".join(str(d) for d in side["input"]["shape"][1:])
    cache = graph.parent / "ort-tensorrt-cache"
    return {**opts,
            "trt_profile_min_shapes": f"{name}:1x{dims}",
            "trt_profile_opt_shapes": f"{name}:{batch_size}x{dims}",
            "trt_profile_max_shapes": f"{name}:{max(batch_size, TRT_MAX_BATCH)}x{dims}",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("onnxruntime is not installed", fix=INSTALL["cpu"]) from None
    return ort


def auto_provider(device: str = "auto") -> str:
    """CUDA EP when ``device`` resolves to a GPU and this ORT build has it, else CPU (TensorRT EP only on request)."""
    from landslide.device import resolve_device

    ort = import_ort()
    gpu = resolve_device(device).type == "cuda"
    return "cuda" if gpu and PROVIDERS["cuda"] in ort.get_available_providers() else "cpu"


class OnnxRunner(Runner):
    """``(B, 64, 64, C)`` float32 raw patches -> ``(B,)`` probabilities through a fused ONNX graph."""
    backend = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "auto", batch_size: int = 64, device: str = "auto") -> None:
        ort = import_ort()
        self.path = Path(path)
        side = read_sidecar(self.path, kind="onnx-fused")
        self.sidecar = side
        self.contract = side["contract"]
        self.threshold = float(side["threshold"])
        # ONNX Runtime's own names (CPUExecutionProvider, ...) are accepted as well as the short ones.
        provider = {v: k for k, v in PROVIDERS.items()}.get(provider, provider)
        self.provider = auto_provider(device) if provider == "auto" else provider
        if self.provider not in PROVIDERS:
            raise ConfigError(f"onnxruntime provider {provider!r} unknown", fix=f"use auto or one of {list(PROVIDERS)}")
        if device != "auto":
            from landslide.device import resolve_device

            on_gpu = resolve_device(device).type == "cuda"
            if self.provider != "cpu" and not on_gpu:
                raise ConfigError(f"--provider {self.provider} runs on a GPU, and --device {device} was asked for",
                                  fix="drop one of the two (--provider auto follows --device)")
            if self.provider == "cpu" and on_gpu and provider == "auto":  # asked for the GPU: no quiet CPU run
                raise ConfigError(f"--device {device} asked for, but this onnxruntime build has no CUDA provider "
                                  f"(it offers {ort.get_available_providers()})",
                                  fix=f"{INSTALL['cuda']}, or use --backend torch on the GPU")
        want = PROVIDERS[self.provider]
        if want not in ort.get_available_providers():
            raise ConfigError(f"{want} asked for, but this onnxruntime build offers only "
                              f"{ort.get_available_providers()}", fix=INSTALL[self.provider])
        chain = {"tensorrt": ["tensorrt", "cuda"], "cuda": ["cuda"], "cpu": []}[self.provider]
        self.device_id = 0
        if chain:
            import torch

            self.device_id = torch.cuda.current_device()  # --device cuda:N made N current (resolve_device)
        providers = [(PROVIDERS[p], provider_options(p, self.device_id, self.path, side, batch_size)) for p in chain]
        providers.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        used = self.session.get_providers()
        missing = [PROVIDERS[p] for p in chain if PROVIDERS[p] not in used]
        if missing:
            raise ConfigError(f"onnxruntime could not start {missing} (session runs on {used}); refusing to "
                              "fall back silently", file=self.path, fix=INSTALL[self.provider])
        self.providers_used = used
        if not chain and side.get("precision") == "fp16" and platform.machine() in ("x86_64", "AMD64"):
            # Asked for (--precision fp16): say what it costs on this host (measured ~3x on a 2-core EPYC).
            log.warning("%s on ONNX Runtime's CPU EP: it has no FP16 convolution kernel for x86, so its convolutions "
                        "run in FP32 between casts, slower than the FP32 graph; the FP16 graph is for a GPU",
                        self.path.name)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.gpu = self.provider != "cpu"
        self.name = f"onnxruntime-{self.provider}"

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.gpu:
            return self.session.run(None, {self.input_name: x})[0]
        return self._predict_cuda(x)

    def _predict_cuda(self, x: np.ndarray) -> np.ndarray:
        """Pinned host buffer -> async copy to the GPU -> IO binding (no ORT-side host copies)."""
        import torch

        xt = torch.from_numpy(x).pin_memory().to("cuda", non_blocking=True)
        out = torch.empty(len(x), dtype=torch.float32, device="cuda")
        b = self.session.io_binding()
        b.bind_input(self.input_name, "cuda", self.device_id, np.float32, tuple(xt.shape), xt.data_ptr())
        b.bind_output(self.output_name, "cuda", self.device_id, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream().synchronize()  # the copy must land before ORT's stream reads it
        self.session.run_with_iobinding(b)
        return out.cpu().numpy()

    def describe(self) -> str:
        return (f"{self.name} ({self.path.name}, precision={self.sidecar['precision']}, "
                f"providers used={self.providers_used})")
