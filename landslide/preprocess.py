"""Preprocessing as torch code, so training, the cache and the exported graphs share one implementation.

- SAR speckle: a 3x3 median filter (replicate border, as OpenCV's medianBlur) on the SAR bands only.
  A min/max exchange network over 9 shifted slices, so it batches on any device and exports to ONNX.
- Normalisation: per-band mean/std fitted on the training rows of a fold, stored with its model.
- Cloud score: ``sigmoid(mean standardised optical brightness)`` per patch, in (0, 1). Clouds are
  bright in every optical band, so a cloudy patch scores near 1; the attention gate reads it to lean
  on SAR when the optical bands are hidden. 0.5 when the data has no optical bands.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Bump when preprocessing changes: it is part of the cache key and of every artefact's contract.
PREPROCESS_VERSION = 1


# Devillard's median-of-9 exchange network (19 compare-swaps): min/max only, so it is fast on any
# device and exports to ONNX as Min/Max (torch.median(dim) has no ONNX export; topk is 3x slower).
_MED9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
         (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median of ``(B, C, H, W)``, replicate-padded; same shape and dtype."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    v = [p[..., i:i + h, j:j + w] for i in range(3) for j in range(3)]
    for a, b in _MED9:
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[4]


def median_filter_sar(x: torch.Tensor, sar_idx: list[int], chunk: int = 512, inplace: bool = False) -> torch.Tensor:
    """Median-filter the SAR channels of ``(N, C, H, W)`` in chunks (bounded memory); returns a new tensor,
    or ``x`` itself filtered with ``inplace`` (each chunk's input is gathered before its result is written)."""
    out = x if inplace else x.clone()
    if not sar_idx:
        return out
    idx = torch.as_tensor(sar_idx)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk, idx] = median3x3(x[s:s + chunk, idx])
    return out


def fit_stats(x: torch.Tensor, rows: np.ndarray | None = None, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std of ``x[rows]`` (all of ``(N, C, H, W)`` by default) in float64, a chunk of
    rows gathered at a time, so the training fold is never copied whole."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    n = 0
    rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows)
    for i in range(0, len(rows), chunk):
        b = x[torch.from_numpy(rows[i:i + chunk])].to(torch.float64)
        s += b.sum((0, 2, 3))
        ss += (b * b).sum((0, 2, 3))
        n += b.shape[0] * b.shape[2] * b.shape[3]
    mean = s / n
    std = (ss / n - mean * mean).clamp_min(0).sqrt()
    # A constant band (std 0) would divide by zero; 1.0 leaves it centred and harmless.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.float(), std.float()


class Normalize(nn.Module):
    """Raw (median-filtered) patches -> (standardised patches, cloud score).

    Input ``(B, C, H, W)`` float32 in the data's own units; output ``((B, C, H, W), (B,))``.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, optical_idx: list[int]) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float().clone())
        self.register_buffer("inv_std", (1.0 / std).reshape(1, -1, 1, 1).float().clone())
        self.register_buffer("optical_idx", torch.as_tensor(optical_idx, dtype=torch.long))
        self.has_optical = len(optical_idx) > 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (x - self.mean) * self.inv_std
        return z, cloud_score(z, self.optical_idx if self.has_optical else None)


def cloud_score(z: torch.Tensor, optical_idx: torch.Tensor | None) -> torch.Tensor:
    """Cloud score ``(B,)`` from standardised patches ``(B, C, H, W)``."""
    if optical_idx is None:
        return torch.full((z.shape[0],), 0.5, dtype=z.dtype, device=z.device)
    return torch.sigmoid(z.index_select(1, optical_idx).mean((1, 2, 3)))
