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
    name: str = "runner"
    contract: dict
    threshold: float

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(B, 64, 64, C)`` float32 raw patches -> ``(B,)`` float32 probabilities."""

    def describe(self) -> str:
        return self.name


def pad_batch(x: np.ndarray, min_batch: int) -> np.ndarray:
    """``x`` with its last patch repeated up to ``min_batch`` rows, for an engine whose profile starts
    above a last, partial batch. Every patch is scored on its own (no batch statistics at inference),
    so the padding changes no real row's probability; the caller keeps the first ``len(x)`` outputs."""
    if len(x) >= min_batch or len(x) == 0:
        return x
    return np.concatenate([x, np.repeat(x[-1:], min_batch - len(x), axis=0)])
