"""Inference runners behind one interface.

A runner maps a batch of raw patches, exactly as read from the ``.npy`` files, ``(B, 64, 64, C)``
float32, to the calibrated ensemble probability ``(B,)``. It carries the artefact's data contract
(bands, shape) and the calibrated threshold, so ``infer`` can check the data and binarise.
The torch runner is the reference the other backends are verified against.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Runner(ABC):
    backend: str = ""  # the --backend value that builds this runner
    name: str = "runner"
    contract: dict
    threshold: float
    sidecar: dict  # an exported artefact's runners (export/sidecar.py); the torch runner has none

    @property
    def precision(self) -> str:
        """What the probabilities are computed at: an exported artefact's was fixed when it was built."""
        return self.sidecar["precision"]

    @property
    def source_hash(self) -> str:
        """Which ensemble this runner computes: the hash of the run's checkpoints and calibration it was built
        from (``export.sidecar.run_hash``), the same for every backend of one run. Shards record it, so a
        merge refuses a set scored by different models."""
        return self.sidecar["source_hash"]

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(B, 64, 64, C)`` float32 raw patches -> ``(B,)`` float32 probabilities."""

    def describe(self) -> str:
        return self.name


def fit_profile(x: np.ndarray, profile: tuple[int, int], path, what: str) -> np.ndarray:
    """``x`` ready for an engine whose batch ``profile`` is ``(min, max)``: a batch over the max is refused;
    one under the min (a last, partial batch) is padded with repeats of its last patch. Every patch is
    scored on its own (no batch statistics at inference), so the padding changes no real row's
    probability; the caller keeps the first ``len(x)`` outputs."""
    from landslide.errors import ContractError

    lo, hi = profile
    if len(x) > hi:
        raise ContractError(f"batch of {len(x)} over the {what}'s profile [{lo}, {hi}]", file=path,
                            fix="pass --batch-size within it, or rebuild with --max-batch")
    return pad_batch(x, lo)


def pad_batch(x: np.ndarray, min_batch: int) -> np.ndarray:
    """``x`` with its last patch repeated up to ``min_batch`` rows (see :func:`fit_profile`)."""
    if len(x) >= min_batch or len(x) == 0:
        return x
    return np.concatenate([x, np.repeat(x[-1:], min_batch - len(x), axis=0)])
