"""The conventional data path, as the seed had it: a ``DataLoader`` whose ``Dataset`` augments one
``(64, 64, C)`` sample at a time on the CPU, then the default collate stacks the batch.

Two implementations of the seed's chain (HorizontalFlip, VerticalFlip, RandomRotate90,
ShiftScaleRotate, GaussianBlur, GaussNoise, CoarseDropout), probabilities and ranges from the same
``AugmentConfig`` as the batched backends:

* ``albumentations`` (the default, what the seed ran): OpenCV per sample. albumentations clips float
  images to [0, 1] in its noise op, so its output is not usable for training on standardised
  patches; it is here to time the seed's pipeline, and the bench only measures speed.
* ``numpy``: the same ops in NumPy, one sample at a time (no OpenCV). Slower than OpenCV; kept as the
  baseline that needs nothing beyond NumPy, and because its output is correct on standardised data.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from landslide.augment.torch import BLUR_K, AugmentConfig
from landslide.errors import ConfigError

BASELINES = ("albumentations", "numpy")


def _bilinear_affine(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Warp ``(H, W, C)`` with the 2x3 output->input pixel matrix ``m``; replicate border (cv2 BORDER_REPLICATE)."""
    h, w = x.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sx = m[0, 0] * xx + m[0, 1] * yy + m[0, 2]
    sy = m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    sx = np.clip(sx, 0, w - 1)
    sy = np.clip(sy, 0, h - 1)
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (sx - x0)[..., None]
    fy = (sy - y0)[..., None]
    top = x[y0, x0] * (1 - fx) + x[y0, x1] * fx
    bot = x[y1, x0] * (1 - fx) + x[y1, x1] * fx
    return (top * (1 - fy) + bot * fy).astype(x.dtype, copy=False)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(H, W, C)``, ``BLUR_K`` taps, replicate border."""
    r = np.arange(BLUR_K, dtype=np.float32) - (BLUR_K - 1) / 2
    k = np.exp(-0.5 * (r / sigma) ** 2)
    k /= k.sum()
    pad = BLUR_K // 2
    h, w = x.shape[:2]
    p = np.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="edge")
    y = sum(k[i] * p[:, i:i + w] for i in range(BLUR_K))
    p = np.pad(y, ((pad, pad), (0, 0), (0, 0)), mode="edge")
    return sum(k[i] * p[i:i + h] for i in range(BLUR_K)).astype(x.dtype, copy=False)


def augment_one(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One ``(H, W, C)`` float32 sample through the seed's chain, each op drawn on its own (albumentations order)."""
    h, w = x.shape[:2]
    if rng.random() < cfg.p_hflip:
        x = x[:, ::-1]
    if rng.random() < cfg.p_vflip:
        x = x[::-1]
    if rng.random() < cfg.p_rot90:
        x = np.rot90(x, int(rng.integers(1, 4)))
    if rng.random() < cfg.p_ssr:
        a = math.radians(rng.uniform(-cfg.rotate, cfg.rotate))
        s = 1 + rng.uniform(-cfg.scale, cfg.scale)
        dx, dy = rng.uniform(-cfg.shift, cfg.shift, 2) * (w, h)
        c, si = math.cos(a) / s, math.sin(a) / s
        cx, cy = (w - 1) / 2, (h - 1) / 2
        # inverse map about the centre: src = R^-1 S^-1 (dst - centre - shift) + centre
        m = np.array([[c, si, 0.0], [-si, c, 0.0]])
        m[:, 2] = [cx, cy] - m[:, :2] @ np.array([cx + dx, cy + dy])
        x = _bilinear_affine(np.ascontiguousarray(x), m)
    if rng.random() < cfg.p_blur:
        x = _blur(np.ascontiguousarray(x), rng.uniform(0.1, cfg.blur_sigma))
    if rng.random() < cfg.p_noise:
        x = x + rng.normal(0.0, rng.uniform(0, cfg.noise_std), x.shape).astype(np.float32)
    if rng.random() < cfg.p_dropout:
        x = np.array(x)  # own the memory before writing holes
        for _ in range(int(rng.integers(1, max(cfg.holes, 1) + 1))):
            hh, ww = rng.integers(1, cfg.hole_size + 1, 2)
            y0, x0 = int(rng.integers(h)), int(rng.integers(w))
            x[y0:y0 + hh, x0:x0 + ww] = 0.0
    return np.ascontiguousarray(x, dtype=np.float32)


def albumentations_chain(cfg: AugmentConfig, seed: int):
    """The seed's albumentations ``Compose`` for ``(H, W, C)`` float32 patches: ``fn(image) -> image``."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import-time version check needs the internet
    try:
        import albumentations as A
        import cv2
    except ImportError:
        raise ConfigError("--per-sample albumentations needs albumentations (and OpenCV)",
                          fix="pip install -r requirements.txt (pins albumentations), or use --per-sample numpy") from None
    with warnings.catch_warnings():  # ShiftScaleRotate is deprecated in favour of Affine; the seed used it
        warnings.simplefilter("ignore")
        chain = A.Compose([
            A.HorizontalFlip(p=cfg.p_hflip),
            A.VerticalFlip(p=cfg.p_vflip),
            A.RandomRotate90(p=cfg.p_rot90),
            A.ShiftScaleRotate(shift_limit=cfg.shift, scale_limit=cfg.scale, rotate_limit=cfg.rotate,
                               border_mode=cv2.BORDER_REPLICATE, p=cfg.p_ssr),
            A.GaussianBlur(blur_limit=(BLUR_K, BLUR_K), sigma_limit=(0.1, cfg.blur_sigma), p=cfg.p_blur),
            A.GaussNoise(std_range=(0.0, cfg.noise_std), p=cfg.p_noise),
            A.CoarseDropout(num_holes_range=(1, max(cfg.holes, 1)), hole_height_range=(1, cfg.hole_size),
                            hole_width_range=(1, cfg.hole_size), fill=0, p=cfg.p_dropout),
        ], seed=seed)
    return lambda image: chain(image=image)["image"]


def per_sample_fn(impl: str, cfg: AugmentConfig, seed: int):
    """``fn((H, W, C) float32) -> (H, W, C) float32`` for one baseline implementation, seeded."""
    if impl == "albumentations":
        return albumentations_chain(cfg, seed)
    if impl == "numpy":
        rng = np.random.default_rng(seed)
        return lambda image: augment_one(image, cfg, rng)
    raise ConfigError(f"per-sample baseline {impl!r} unknown", fix=f"use one of {BASELINES}")


class PerSampleDataset(Dataset):
    """``x (N, H, W, C)`` float32 standardised patches, ``y (N,)``; item = (augmented ``(C, H, W)`` tensor, label)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, cfg: AugmentConfig, seed: int = 0,
                 impl: str = "albumentations") -> None:
        self.x, self.y, self.cfg, self.seed, self.impl = x, y.astype(np.float32), cfg, seed, impl
        per_sample_fn(impl, cfg, seed)  # fail here, in the parent, on a missing library or a bad name
        self.fn = None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fn is None:  # one random stream per worker process
            wi = get_worker_info()
            self.fn = per_sample_fn(self.impl, self.cfg, self.seed + (wi.id if wi else 0))
        a = np.ascontiguousarray(self.fn(self.x[i]).transpose(2, 0, 1), dtype=np.float32)  # one copy, CHW
        return torch.from_numpy(a), torch.tensor(self.y[i])


def make_loader(x: np.ndarray, y: np.ndarray, cfg: AugmentConfig, batch_size: int, workers: int = 2,
                seed: int = 0, pin_memory: bool = False, impl: str = "albumentations") -> DataLoader:
    """The conventional loader: shuffled, ``workers`` processes, default collate, persistent workers."""
    return DataLoader(PerSampleDataset(x, y, cfg, seed, impl), batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


def endless(loader: DataLoader):
    """Batches forever (re-iterating the loader per epoch; persistent workers keep their processes).

    An epoch with no batch (fewer samples than a batch, ``drop_last``) is an error: it would loop forever."""
    while True:
        got = False
        for batch in loader:
            got = True
            yield batch
        if not got:
            raise ValueError("the DataLoader yields no batch: fewer samples than --batch-size (drop_last)")
