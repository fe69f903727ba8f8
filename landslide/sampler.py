"""Class-balanced index batches drawn on the device: no DataLoader, no per-sample Python.

Each epoch draws, for ``S`` steps of batch ``B`` with ``P = round(B * pos_fraction)`` positives:
``S * P`` positive indices from back-to-back random permutations of the positives (so every positive
is seen once before any repeats, i.e. within ``ceil(n_pos / P)`` batches) and likewise for negatives,
then shuffles each batch row. Everything is one handful of tensor ops on the labels' device.
"""
from __future__ import annotations

import math

import torch

from landslide.errors import ConfigError, DataError


class BalancedSampler:
    def __init__(self, labels: torch.Tensor, batch_size: int, pos_fraction: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        """``labels``: ``(N,)`` 0/1 tensor on the device the indices should live on."""
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        self.device = labels.device
        self.pos = torch.nonzero(labels > 0.5).flatten()
        self.neg = torch.nonzero(labels <= 0.5).flatten()
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise DataError(f"balanced sampling needs both classes in the training fold "
                            f"({len(self.pos)} positives, {len(self.neg)} negatives)",
                            fix="add labelled rows of the missing class, or use fewer --folds")
        if not 0.0 < pos_fraction < 1.0:
            raise ConfigError(f"--pos-fraction {pos_fraction} is outside (0, 1)", fix="use e.g. --pos-fraction 0.5")
        if batch_size < 2:
            raise ConfigError(f"--batch-size {batch_size} cannot hold both classes", fix="use --batch-size 2 or more")
        self.batch_size = batch_size
        self.n_pos = min(batch_size - 1, max(1, round(batch_size * pos_fraction)))
        self.generator = generator
        self.steps_per_epoch = math.ceil((len(self.pos) + len(self.neg)) / batch_size)

    def _draw(self, pool: torch.Tensor, count: int) -> torch.Tensor:
        reps = math.ceil(count / len(pool))
        perms = [pool[torch.randperm(len(pool), generator=self.generator, device=self.device)] for _ in range(reps)]
        return torch.cat(perms)[:count]

    def epoch(self, steps: int | None = None) -> torch.Tensor:
        """Index batches for one epoch: ``(steps, batch_size)`` int64 on the device."""
        s = steps or self.steps_per_epoch
        p = self._draw(self.pos, s * self.n_pos).view(s, self.n_pos)
        n = self._draw(self.neg, s * (self.batch_size - self.n_pos)).view(s, -1)
        idx = torch.cat([p, n], 1)
        order = torch.rand(idx.shape, generator=self.generator, device=self.device).argsort(1)
        return idx.gather(1, order)
