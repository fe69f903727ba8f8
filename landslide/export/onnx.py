"""ONNX export: one graph per fold, one fused graph of the whole ensemble, its FP16 twin; each proven.

- Per fold: each ``LandslideNet`` (``(B, C, 64, 64)`` median-filtered raw NCHW -> ``(B,)`` logits),
  for tools that want the units one by one.
- Fused: :class:`~landslide.ensemble.FusedEnsemble` (``(B, 64, 64, C)`` raw NHWC -> ``(B,)``
  calibrated probability): median filter, 4 flip views, every fold of every arch, weights, in one graph.
- FP16: the same with every model in half precision, but FP32 inputs/outputs, FP32 normalisation
  (raw optical values reach ~1e4 where FP16 steps are ~8) and FP32 sigmoid/averaging. This is the
  graph TensorRT builds from, strongly typed (the graph's types are the engine's types).

The TorchScript-based exporter is used (``dynamo=False``): it exports these timm models exactly
(max abs diff ~1e-7) in ~8 s where the dynamo exporter takes ~50 s for the same graph.
After every export: ``onnx.checker``, then ONNX Runtime against the torch ensemble on real patches, then the
sidecar; all in a temp folder beside the target, swapped in only when verified (``staging``), so a failed or
interrupted re-export keeps the previous graph and sidecar.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landslide.contract import arch_stem
from landslide.ensemble import FusedEnsemble, RunInfo
from landslide.errors import VerificationError
from landslide.export.sidecar import weights_path, write_sidecar
from landslide.export.staging import staged
from landslide.model import LandslideNet

log = logging.getLogger(__name__)

OPSET = 18
INPUT, OUTPUT = "patches", "prob"
FP32_TOL = 1e-5
FP16_TOL = 1e-2
FP16_AGREEMENT = 0.995


class HalfNet(nn.Module):
    """A fold's net with the model in FP16 and normalisation in FP32; FP32 logits out."""

    def __init__(self, net: LandslideNet) -> None:
        super().__init__()
        self.normalize = copy.deepcopy(net.normalize)
        self.model = copy.deepcopy(net.model).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, cloud = self.normalize(x)
        return self.model(z.half(), cloud.half()).float()


def half_ensemble(fused: FusedEnsemble, info: RunInfo) -> FusedEnsemble:
    nets = [[HalfNet(n) for n in row] for row in fused.archs]
    return FusedEnsemble(nets, info.weights, info.layout.sar_idx, info.layout.n_channels).eval()


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, input_name: str = INPUT,
                output_name: str = OUTPUT) -> Path:
    """Trace ``module`` to ``path`` with a dynamic batch axis, then run ``onnx.checker``.

    ``path`` is written in place: callers build inside :func:`~landslide.export.staging.staged`, which
    swaps the graph in only once it is verified and has its sidecar."""
    import onnx

    with warnings.catch_warnings():  # tracer warnings about shape-dependent Python branches are expected
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    gather_weights(path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def gather_weights(graph: Path) -> None:
    """Give the graph just written at ``graph`` one weights file, or none.

    Past 2 GB (the full fp32 ensemble of 5 folds x 2 archs is ~2.9 GB) the exporter writes one file per
    weight beside the graph: hundreds of files named after parameters. They are gathered into
    :func:`~landslide.export.sidecar.weights_path` (what the graph then names), which the sidecar hashes too. A smaller graph
    embeds its weights, and a ``.data`` file in the folder from an earlier, larger export is removed.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    data = weights_path(graph)
    model = onnx.load(str(graph), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        data.unlink(missing_ok=True)
        return
    pieces = {graph.parent / ExternalDataInfo(t).location for t in external}
    onnx.load_external_data_for_model(model, str(graph.parent))
    data.unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    for piece in pieces - {data}:
        piece.unlink(missing_ok=True)


def ort_run(path: Path, x: np.ndarray, batch_size: int = 64, provider: str = "CPUExecutionProvider") -> np.ndarray:
    """Run an ONNX file in batches, on the CPU provider by default (the reference check needs no GPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=[provider])
    if sess.get_providers()[0] != provider:  # ORT drops a provider it cannot start; a check must not
        raise VerificationError(f"{provider} did not start (session runs on {sess.get_providers()})", file=path,
                                fix="install an onnxruntime build with that provider, or verify on the CPU")
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[s:s + batch_size]})[0] for s in range(0, len(x), batch_size)])


@torch.inference_mode()
def torch_run(module, x: np.ndarray, batch_size: int = 64, device: torch.device | str = "cpu",
              min_batch: int = 1) -> np.ndarray:
    """``module`` (an ``nn.Module`` or a loaded AOTInductor package) over ``x`` in batches on ``device``;
    a last batch under ``min_batch`` (a package's profile) is padded and its extra rows dropped."""
    from landslide.runtime import pad_batch

    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        out.append(module(torch.from_numpy(pad_batch(xb, min_batch)).to(device)).float().cpu().numpy()[:len(xb)])
    return np.concatenate(out)


@dataclass
class Parity:
    """How an artefact's probabilities compare with the torch reference."""

    name: str
    n: int
    max_abs: float
    agreement: float  # share of identical decisions at the calibrated threshold
    tol: float
    min_agreement: float
    what: str = "p"  # what max_abs is a difference of: the probability, or a fold graph's logit

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tol and self.agreement >= self.min_agreement

    def line(self) -> str:
        return (f"verify {self.name}: n={self.n} max|d{self.what}|={self.max_abs:.3g} (tol {self.tol:g}) "
                f"decision agreement={100 * self.agreement:.2f}% (min {100 * self.min_agreement:.1f}%) "
                f"{'OK' if self.ok else 'FAILED'}")


def compare(name: str, got: np.ndarray, ref: np.ndarray, threshold: float, tol: float,
            min_agreement: float = 1.0, what: str = "p") -> Parity:
    p = Parity(name, len(ref), float(np.abs(got.astype(np.float64) - ref).max()),
               float(((got >= threshold) == (ref >= threshold)).mean()), tol, min_agreement, what)
    log.info(p.line())
    return p


def require(p: Parity, path: Path) -> None:
    if not p.ok:
        raise VerificationError(p.line(), file=path,
                                fix="the artefact does not reproduce the torch ensemble; it was not used. "
                                    "Check the exporter/opset (see landslide/export/onnx.py) and re-export")


def export_folds(fused: FusedEnsemble, info: RunInfo, x: np.ndarray, out: Path,
                 run_sha: str) -> list[tuple[int, str, Path]]:
    """One ONNX per (fold, arch): ``fold<k>_<arch>.onnx``, each verified on its logits; (fold, arch, path)."""
    paths = []
    xp = fused.preprocess(torch.from_numpy(x)).contiguous()
    for arch, row in zip(info.archs, fused.archs):
        for k, net in zip(info.folds, row):
            path = out / f"fold{k}_{arch_stem(arch)}.onnx"
            with staged(path) as p:
                export_onnx(net, xp[:2], p, output_name="logit")
                ref = torch_run(net, xp.numpy())
                got = ort_run(p, xp.numpy())
                # Logits are unbounded, so the tolerance is relative to their scale.
                tol = FP32_TOL * max(1.0, float(np.abs(ref).max()))
                require(compare(path.name, got, ref, 0.0, tol, what="logit"), path)
                write_sidecar(p, kind="onnx-fold", info=info, precision="fp32", run_sha=run_sha,
                              extra={"fold": k, "arch": arch,
                                     # A logit of one model, no TTA: the calibrated probability threshold is
                                     # the whole ensemble's, so it is named as such rather than as this graph's.
                                     "threshold": None, "ensemble_threshold": info.threshold,
                                     "note": "one fold's logit on preprocessed input, no TTA; score the ensemble "
                                             "with fused.onnx",
                                     "input": {"name": INPUT, "shape": ["batch", info.layout.n_channels, 64, 64],
                                               "dtype": "float32", "layout": "NCHW, SAR median-filtered, raw units"},
                                     "output": {"name": "logit", "shape": ["batch"], "dtype": "float32"}})
            paths.append((k, arch, path))
    return paths


def export_fused(fused: FusedEnsemble, info: RunInfo, x: np.ndarray, ref: np.ndarray, path: Path,
                 run_sha: str) -> Path:
    with staged(path) as p:
        export_onnx(fused, torch.from_numpy(x[:2]), p)
        require(compare(path.name, ort_run(p, x), ref, info.threshold, FP32_TOL), path)
        write_sidecar(p, kind="onnx-fused", info=info, precision="fp32", run_sha=run_sha)
    return path


def export_fp16(fused: FusedEnsemble, info: RunInfo, x: np.ndarray, ref: np.ndarray, path: Path,
                run_sha: str) -> Path:
    with staged(path) as p:
        export_onnx(half_ensemble(fused, info), torch.from_numpy(x[:2]), p)
        require(compare(path.name, ort_run(p, x), ref, info.threshold, FP16_TOL, FP16_AGREEMENT), path)
        if gpu_check_provider():  # FP16 arithmetic, not just FP16 weights: see gpu_check_provider
            require(compare(f"{path.name} (CUDA EP)", ort_run(p, x, provider="CUDAExecutionProvider"), ref,
                            info.threshold, FP16_TOL, FP16_AGREEMENT), path)
        write_sidecar(p, kind="onnx-fused", info=info, precision="fp16", run_sha=run_sha,
                      extra={"note": "FP16 models, FP32 input/output, normalisation and averaging"})
    return path


def gpu_check_provider() -> bool:
    """Whether the FP16 graph is also checked on ONNX Runtime's CUDA EP (a CUDA GPU and onnxruntime-gpu).

    ORT's CPU EP has no FP16 convolution on x86: it wraps those nodes in casts and computes them in
    FP32, so the CPU check covers the FP16 weights and the graph's structure but not FP16 arithmetic
    (accumulation, overflow). The CUDA EP computes in FP16; TensorRT engines are checked at build.
    """
    if not torch.cuda.is_available():
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()
