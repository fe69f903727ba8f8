"""Multi-modal landslide detection. ``import landslide`` is light: heavy parts load on first use."""
from __future__ import annotations

from typing import Any

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    # Lazy: Predictor pulls in torch/onnxruntime, which scripts that only parse flags should not pay for.
    if name == "Predictor":
        from landslide.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'landslide' has no attribute {name!r}")
