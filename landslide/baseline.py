"""The bar the CNN must clear: logistic regression on per-band patch means (NumPy, no extra deps)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from landslide.calibrate import best_threshold, f1_at
from landslide.data import load_split
from landslide.synth import read_test_labels


def band_means(x) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, C)`` per-band means."""
    return np.asarray(x, dtype=np.float64).mean((2, 3))


def fit_logreg(f: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 500) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by Newton's method on standardised features."""
    n, d = f.shape
    sw = np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))
    xb = np.c_[f, np.ones(n)]
    theta = np.zeros(d + 1)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-xb @ theta))
        g = xb.T @ (sw * (p - y)) / n + l2 * np.r_[theta[:-1], 0]
        hdiag = sw * p * (1 - p)
        h = (xb * hdiag[:, None]).T @ xb / n + l2 * np.diag(np.r_[np.ones(d), 0])
        step = np.linalg.solve(h, g)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    w, b = theta[:-1], theta[-1]
    return w, b


def means_logreg(data_dir: str | Path, folds_csv: str | Path, cache_dir: str | Path | None = None) -> dict:
    """OOF F1 on the run's folds, and test F1 (when ``test_labels.csv`` exists) of the full-data fit."""
    tr = load_split(data_dir, "train", cache_dir=cache_dir)
    with open(folds_csv, newline="") as fh:
        fold_of = {r["ID"]: int(r["fold"]) for r in csv.DictReader(fh)}
    folds = np.array([fold_of[i] for i in tr.ids])
    f, y = band_means(tr.x), tr.labels
    oof = np.zeros(len(y))
    for k in np.unique(folds):
        m = folds != k
        mu, sd = f[m].mean(0), f[m].std(0) + 1e-9
        w, b = fit_logreg((f[m] - mu) / sd, y[m])
        oof[~m] = 1 / (1 + np.exp(-(((f[~m] - mu) / sd) @ w + b)))
    thr, oof_f1 = best_threshold(y, oof)
    out = {"oof_f1": oof_f1, "threshold": thr, "test_f1": float("nan")}
    labels_path = Path(data_dir) / "test_labels.csv"
    if labels_path.is_file():
        te = load_split(data_dir, "test", cache_dir=cache_dir)
        truth = read_test_labels(data_dir)
        mu, sd = f.mean(0), f.std(0) + 1e-9
        w, b = fit_logreg((f - mu) / sd, y)
        p = 1 / (1 + np.exp(-(((band_means(te.x) - mu) / sd) @ w + b)))
        out["test_f1"] = f1_at(np.array([truth[i] for i in te.ids]), p, thr)
    return out
