"""Training augmentation backends behind one interface.

Every backend is a callable ``aug(x, generator) -> x`` on a ``(B, C, H, W)`` batch already on the
training device, applying the seed's augmentations (flips, rot90, shift-scale-rotate, coarse
dropout, Gaussian noise, Gaussian blur). ``torch`` is the reference; ``dali`` runs the same ops as an
NVIDIA DALI pipeline. Mixup/CutMix run after either backend, in torch on the device (``mix.py``).
"""
from __future__ import annotations

import logging

import torch

from landslide.augment.torch import AugmentConfig, TorchAugment

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "dali")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, device: torch.device) -> str:
    """``auto`` -> ``dali`` when DALI imports and the device is a GPU, else ``torch``."""
    from landslide.errors import ConfigError

    if requested not in BACKENDS:
        raise ConfigError(f"data backend {requested!r} unknown", fix=f"use one of {BACKENDS}")
    if requested == "auto":
        return "dali" if device.type == "cuda" and dali_available() else "torch"
    if requested == "dali" and not dali_available():
        raise ConfigError("--data-backend dali asked for, but nvidia-dali is not installed",
                          fix="pip install nvidia-dali-cuda120 or nvidia-dali-cuda130, matching the CUDA major "
                              "version (or use --data-backend torch)")
    return requested


def build_augment(backend: str, cfg: AugmentConfig, device: torch.device, batch_size: int, seed: int):
    """The augmentation callable for a resolved backend name."""
    if backend == "torch":
        return TorchAugment(cfg)
    if backend == "dali":
        from landslide.augment.dali import DaliAugment

        return DaliAugment(cfg, device=device, batch_size=batch_size, seed=seed)
    raise ValueError(f"unresolved backend {backend!r}")
