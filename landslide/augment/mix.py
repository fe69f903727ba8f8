"""Mixup / CutMix on the device, timm-style: one ``lam`` per batch, partner = a random permutation.

``lam`` is drawn on the host from a seeded NumPy generator (a scalar, so no device sync); labels and
cloud scores are mixed with the same ``lam`` (CutMix: the exact kept-area fraction).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixConfig:
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    prob: float = 0.5         # chance a batch is mixed at all
    switch_prob: float = 0.5  # when both are on: chance of CutMix rather than Mixup


class Mixer:
    def __init__(self, cfg: MixConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the draws from ``seed`` (training reseeds every epoch so a resumed run replays them)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, cloud: torch.Tensor,
                 g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)``, ``y (B,)`` float, ``cloud (B,)`` -> mixed copies."""
        cfg = self.cfg
        on_mixup, on_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
        if not (on_mixup or on_cutmix) or self.rng.random() >= cfg.prob:
            return x, y, cloud
        use_cutmix = on_cutmix and (not on_mixup or self.rng.random() < cfg.switch_prob)
        perm = torch.randperm(x.shape[0], generator=g, device=x.device)
        if use_cutmix:
            lam = float(self.rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha))
            x, lam = cutmix(x, perm, lam, self.rng)
        else:
            lam = float(self.rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
            x = x * lam + x[perm] * (1 - lam)
        return x, y * lam + y[perm] * (1 - lam), cloud * lam + cloud[perm] * (1 - lam)


def cutmix(x: torch.Tensor, perm: torch.Tensor, lam: float, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """Paste a box of area ``~(1 - lam)`` from ``x[perm]``; returns the batch and the exact kept fraction."""
    h, w = x.shape[-2:]
    cut = np.sqrt(1 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1][perm]  # gathers the box only, not the whole partner batch
    return out, 1 - float((y1 - y0) * (x1 - x0)) / (h * w)
