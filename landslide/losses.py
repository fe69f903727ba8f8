"""Focal loss (Lin et al. 2017) on logits, for soft targets too (Mixup/CutMix make labels fractional)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               reduction: str = "mean") -> torch.Tensor:
    """``alpha_t * (1 - p_t)^gamma * BCE(logits, target)``; ``logits``/``target`` ``(B,)``, target in [0, 1].

    ``alpha < 0`` disables the class weighting (``alpha = 0`` weights only the negatives). Computed in
    float32 whatever the autocast dtype.
    """
    logits, target = logits.float(), target.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"focal_loss: reduction {reduction!r}; use 'mean', 'sum' or 'none'")
