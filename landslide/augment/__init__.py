"""Training augmentation backends behind one interface.

Every backend is a callable ``aug(x, generator, index=None) -> x`` on a ``(B, C, H, W)`` batch already
on the training device (or on the batch ``x[index]`` of a device-resident fold ``x``, gathered by the
backend), applying the seed's augmentations (flips, rot90, shift-scale-rotate, coarse
dropout, Gaussian noise, Gaussian blur). ``torch`` is the reference; ``dali`` runs the same ops as an
NVIDIA DALI pipeline. On a CPU the torch backend's ops can run as compiled kernels (``compiled.py``,
``--augment-kernel``). Mixup/CutMix run after either backend, in torch on the device (``mix.py``).
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


def resolve_backend(requested: str, device: torch.device, kernel: str = "eager") -> str:
    """The augmentation pipeline's resolved name: ``torch``, ``torch-compiled`` or ``dali``.

    ``auto`` -> ``dali`` when DALI imports and the device is a GPU, else ``torch``; ``kernel``
    (``--augment-kernel``) then picks the torch backend's CPU kernels (``compiled.resolve_kernel``).
    """
    from landslide.augment.compiled import resolve_kernel
    from landslide.errors import ConfigError

    if requested not in BACKENDS:
        raise ConfigError(f"data backend {requested!r} unknown", fix=f"use one of {BACKENDS}")
    if requested == "auto":
        backend = "dali" if device.type == "cuda" and dali_available() else "torch"
    elif requested == "dali" and not dali_available():
        raise ConfigError("--data-backend dali asked for, but nvidia-dali is not installed",
                          fix="pip install nvidia-dali-cuda120 or nvidia-dali-cuda130, matching the CUDA major "
                              "version (or use --data-backend torch)")
    else:
        backend = requested
    k = resolve_kernel(kernel, backend, device)
    return backend if k == "eager" else f"{backend}-{k}"


def build_augment(name: str, cfg: AugmentConfig, device: torch.device, batch_size: int, seed: int):
    """The augmentation callable for a resolved pipeline name (:func:`resolve_backend`). Its
    ``memory_format`` is how the training fold should be stored for it to read the fold in place."""
    if name == "torch-compiled":
        from landslide.augment.compiled import CompiledAugment

        return CompiledAugment(cfg)
    if name == "torch":
        return TorchAugment(cfg)
    if name == "dali":
        from landslide.augment.dali import DaliAugment

        return DaliAugment(cfg, device=device, batch_size=batch_size, seed=seed)
    raise ValueError(f"unresolved augmentation pipeline {name!r}")
