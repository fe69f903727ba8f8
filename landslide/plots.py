"""Run-folder plots (PNG): training curves, precision-recall curve, confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(rows: list[dict], path: Path) -> None:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = sorted({(r["fold"], r["arch"]) for r in rows})
    for fold, arch in keys:
        rs = [r for r in rows if r["fold"] == fold and r["arch"] == arch]
        ep = [r["epoch"] for r in rs]
        a.plot(ep, [r["train_loss"] for r in rs], label=f"f{fold} {arch} train")
        a.plot(ep, [r["val_loss"] for r in rs], "--", label=f"f{fold} val")
        b.plot(ep, [r["val_f1"] for r in rs], label=f"f{fold} {arch}")
    a.set(xlabel="epoch", ylabel="focal loss", title="loss")
    b.set(xlabel="epoch", ylabel="best-threshold F1", title="validation F1")
    b.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def pr_and_confusion(y: np.ndarray, p: np.ndarray, thr: float, path: Path) -> None:
    plt = _plt()
    order = np.argsort(-p)
    tp = np.cumsum(y[order])
    prec = tp / np.arange(1, len(y) + 1)
    rec = tp / max(y.sum(), 1)
    pred = p >= thr
    cm = np.array([[np.sum(~pred & (y == 0)), np.sum(pred & (y == 0))],
                   [np.sum(~pred & (y == 1)), np.sum(pred & (y == 1))]])
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.6))
    a.plot(rec, prec)
    a.set(xlabel="recall", ylabel="precision", title="OOF precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    b.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            b.text(j, i, str(cm[i, j]), ha="center", va="center")
    b.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true", title=f"OOF confusion @ {thr:.3f}")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    from landslide.io import atomic_write

    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    _plt().close(fig)
