"""F1, the F1-optimal threshold, and ensemble weights fitted on out-of-fold predictions.

The seed set the architecture weights by hand (0.7/0.3); here they are fitted: a grid over the
weight simplex (step 0.05), each candidate scored by its best-threshold OOF F1, ties broken by log
loss, so the choice is stable when F1 is flat.

The OOF F1 at the fitted threshold scores the rows the threshold was fitted on, so it is an upper
bound. :func:`crossfit_f1` is the honest figure: each fold scored at weights and a threshold fitted on
the other folds' rows, the way the test set meets a calibration it has never seen.
"""
from __future__ import annotations

import itertools

import numpy as np


def f1_at(y: np.ndarray, p: np.ndarray, thr: float) -> float:
    pred = p >= thr
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def best_threshold(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1, over every distinct score as a cut (one sort, vectorised)."""
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    # Only the last index of each run of equal scores is a valid cut.
    last = np.r_[ps[1:] != ps[:-1], True]
    n_pos = ys.sum()
    f1 = np.where(last, 2 * tp / np.maximum(tp + fp + n_pos, 1), -1.0)
    i = int(np.argmax(f1))
    if n_pos == 0 or f1[i] <= 0:
        return 0.5, 0.0
    # Cut halfway to the next lower score so the threshold generalises rather than sitting on a point.
    thr = (ps[i] + ps[i + 1]) / 2 if i + 1 < len(ps) else ps[i]
    return float(thr), float(f1[i])


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_weights(y: np.ndarray, probs: np.ndarray, step: float = 0.05) -> np.ndarray:
    """Ensemble weights ``(A,)`` summing to 1 for ``probs (N, A)`` (one column per architecture)."""
    a = probs.shape[1]
    if a == 1:
        return np.ones(1)
    n = round(1 / step)
    best: tuple[float, float] | None = None
    best_w = np.full(a, 1.0 / a)
    for c in itertools.product(range(n + 1), repeat=a - 1):
        if sum(c) > n:
            continue
        w = np.array([*c, n - sum(c)], dtype=np.float64) / n
        p = probs @ w
        score = (best_threshold(y, p)[1], -log_loss(y, p))
        if best is None or score > best:
            best, best_w = score, w
    return best_w


def calibrate(y: np.ndarray, probs: np.ndarray, archs: list[str]) -> dict:
    """Weights and threshold from OOF ``probs (N, A)``; returns the ``calibration.json`` content."""
    w = fit_weights(y, probs)
    p = probs @ w
    thr, f1 = best_threshold(y, p)
    per_arch = {arch: dict(zip(("threshold", "f1"), best_threshold(y, probs[:, i]))) for i, arch in enumerate(archs)}
    return {"threshold": thr, "weights": dict(zip(archs, map(float, w))), "oof_f1": f1,
            "oof_f1_at_0.5": f1_at(y, p, 0.5), "oof_log_loss": log_loss(y, p), "per_arch": per_arch,
            "n": int(len(y)), "n_pos": int(np.sum(y))}


def crossfit_f1(y: np.ndarray, probs: np.ndarray, fold_of: np.ndarray) -> float:
    """Pooled F1 of OOF ``probs (N, A)`` when each fold's rows are called at the weights and threshold
    :func:`calibrate` fits on every other fold's rows (folds from ``fold_of (N,)``)."""
    y, fold_of = np.asarray(y).astype(np.int64), np.asarray(fold_of)
    pred = np.zeros(len(y), dtype=bool)
    for k in np.unique(fold_of):
        fit, held = fold_of != k, fold_of == k
        if not fit.any():
            raise ValueError("crossfit_f1 needs at least two folds")
        w = fit_weights(y[fit], probs[fit])
        thr, _ = best_threshold(y[fit], probs[fit] @ w)
        pred[held] = probs[held] @ w >= thr
    return f1_at(y, pred.astype(np.float64), 0.5)
