"""The whole trained ensemble as one module: raw ``.npy`` batch in, one probability per patch out.

``FusedEnsemble`` does, inside one graph: NHWC -> NCHW, the SAR median filter, the 4 flip views
stacked into the batch, every fold of every architecture (each with its own normalisation), sigmoid,
the TTA mean, the fold mean, and the calibrated architecture weights. It is what the torch runner
runs and what ``export`` turns into the fused ONNX graph and engines. ``LoopedEnsemble`` computes
the same numbers the conventional way (a Python loop over folds and views) as the baseline.
"""
from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from landslide.bands import BandLayout
from landslide.contract import PREPROCESS_FIX, checkpoint_path
from landslide.errors import ContractError
from landslide.io import read_json
from landslide.model import LandslideNet, tta_mean, tta_views
from landslide.preprocess import PREPROCESS_VERSION, median3x3

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What a run folder says about its ensemble."""

    run_dir: Path
    layout: BandLayout
    archs: list[str]
    folds: list[int]
    weights: list[float]
    threshold: float
    contract: dict
    calibration: dict


def read_run(run_dir: str | Path) -> RunInfo:
    run = Path(run_dir)
    if not run.is_dir():
        raise ContractError("run folder not found", file=run,
                            fix="check the path: pass the --out folder train.py wrote (it holds contract.json)")
    resume = f"python train.py --out {shlex.quote(str(run))} --resume"
    for name, fix in (("contract.json", "train first: python train.py --data DIR --out RUN"),
                      ("calibration.json", f"the run has not finished all folds: finish it with {resume}")):
        if not (run / name).is_file():
            raise ContractError(f"{name} missing: not a finished run folder", file=run / name, fix=fix)
    contract = read_json(run / "contract.json")
    if (pv := contract.get("preprocess_version")) != PREPROCESS_VERSION:  # export and every runner start here
        raise ContractError(f"the run was trained with preprocessing v{pv}, this code is v{PREPROCESS_VERSION}",
                            file=run / "contract.json", fix=PREPROCESS_FIX)
    cal = read_json(run / "calibration.json")
    archs = list(contract["archs"])
    folds = sorted(int(p.name[4:]) for p in run.glob("fold*") if p.is_dir() and p.name[4:].isdigit())
    return RunInfo(run, BandLayout(tuple(contract["bands"])), archs, folds,
                   [float(cal["weights"][a]) for a in archs], float(cal["threshold"]), contract, cal)


def load_nets(info: RunInfo) -> list[list[LandslideNet]]:
    """``nets[arch][fold]``, each in eval mode on the CPU."""
    from landslide.train import load_checkpoint

    nets = []
    for arch in info.archs:
        row = []
        for k in info.folds:
            path = checkpoint_path(info.run_dir, k, arch)
            if not path.is_file():
                raise ContractError(f"checkpoint for fold {k} / {arch} missing", file=path,
                                    fix=f"train that fold again: python train.py --out {shlex.quote(str(info.run_dir))} "
                                        f"--resume --only-folds {k}")
            net, ck = load_checkpoint(path)
            if ck["contract"]["bands"] != info.layout.to_list():
                raise ContractError("checkpoint bands disagree with the run's contract.json", file=path,
                                    fix="do not mix checkpoints from different runs")
            row.append(net)
        nets.append(row)
    return nets


class FusedEnsemble(nn.Module):
    """``(B, 64, 64, C)`` float32 raw patches -> ``(B,)`` ensemble probability."""

    def __init__(self, nets: list[list[LandslideNet]], weights: list[float], sar_idx: list[int],
                 n_channels: int) -> None:
        super().__init__()
        self.archs = nn.ModuleList(nn.ModuleList(row) for row in nets)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("sar_idx", torch.tensor(sar_idx, dtype=torch.long))
        self.has_sar = bool(sar_idx)
        # Where each channel of the result comes from in cat([x, filtered SAR]): a SAR band from its filtered
        # copy, any other as it is. One Gather in the graph; index_copy would export as ScatterElements with
        # indices broadcast through Shape/Expand, a shape computation TensorRT may refuse to build.
        merge = list(range(n_channels))
        for j, c in enumerate(sar_idx):
            merge[c] = n_channels + j
        self.register_buffer("merge_idx", torch.tensor(merge, dtype=torch.long), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC raw -> NCHW with the SAR bands median-filtered (the cache's representation)."""
        x = x.permute(0, 3, 1, 2)
        if self.has_sar:
            sar = median3x3(x.index_select(1, self.sar_idx))
            x = torch.cat([x, sar], 1).index_select(1, self.merge_idx)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tta_views(self.preprocess(x.float()))
        b = x.shape[0] // 4
        total = torch.zeros(b, dtype=torch.float32, device=x.device)
        for i, row in enumerate(self.archs):
            fold_sum = torch.zeros(b, dtype=torch.float32, device=x.device)
            for net in row:
                fold_sum = fold_sum + tta_mean(net(x))
            total = total + self.weights[i] * fold_sum / len(row)
        return total


class LoopedEnsemble(FusedEnsemble):
    """Same result as :class:`FusedEnsemble`, one forward per (fold, view): the conventional baseline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x.float())
        views = [x, x.flip(3), x.flip(2), x.flip((2, 3))]
        total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for i, row in enumerate(self.archs):
            acc = torch.zeros_like(total)
            for net in row:
                for v in views:
                    acc = acc + torch.sigmoid(net(v).float())
            total = total + self.weights[i] * acc / (len(row) * len(views))
        return total


def build_ensemble(run_dir: str | Path, looped: bool = False) -> tuple[FusedEnsemble, RunInfo]:
    info = read_run(run_dir)
    cls = LoopedEnsemble if looped else FusedEnsemble
    return cls(load_nets(info), info.weights, info.layout.sar_idx, info.layout.n_channels).eval(), info


