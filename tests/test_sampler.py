"""Device-side class-balanced sampler: ratio, coverage, reproducibility, errors."""
from __future__ import annotations

import math

import pytest
import torch

from landslide.errors import ConfigError, DataError
from landslide.sampler import BalancedSampler


def _labels(n_pos: int, n_neg: int, device: str = "cpu") -> torch.Tensor:
    y = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))].to(device)


@pytest.mark.parametrize("bs,frac", [(16, 0.5), (10, 0.3), (7, 0.25)])
def test_every_batch_has_the_ratio(bs, frac):
    y = _labels(23, 170)
    s = BalancedSampler(y, bs, frac, generator=torch.Generator().manual_seed(1))
    idx = s.epoch()
    assert idx.shape == (s.steps_per_epoch, bs) and idx.dtype == torch.int64
    pos_per_batch = y[idx].sum(1)
    assert (pos_per_batch == round(bs * frac)).all()
    assert (idx >= 0).all() and (idx < len(y)).all()


@pytest.mark.parametrize("n_pos,bs", [(23, 16), (5, 8), (40, 6)])
def test_every_positive_seen_within_expected_batches(n_pos, bs):
    y = _labels(n_pos, 300)
    s = BalancedSampler(y, bs, 0.5, generator=torch.Generator().manual_seed(2))
    need = math.ceil(n_pos / s.n_pos)
    idx = s.epoch(max(need, s.steps_per_epoch))
    seen = set(idx[:need].flatten().tolist())
    assert set(torch.nonzero(y > 0.5).flatten().tolist()) <= seen
    # ... and no positive repeats before all have been seen: the batches filled by the first pass
    # over the positives hold each at most once (the last covering batch may start the next pass).
    full = n_pos // s.n_pos
    first = idx[:full][y[idx[:full]] > 0.5].tolist()
    assert len(first) == full * s.n_pos and len(set(first)) == len(first)


def test_negatives_cycle_without_repeats_within_a_pass():
    y = _labels(10, 50)
    s = BalancedSampler(y, 10, 0.5, generator=torch.Generator().manual_seed(3))
    idx = s.epoch(10)  # 50 negative draws: exactly one permutation of the 50 negatives
    neg = idx[y[idx] < 0.5]
    assert sorted(neg.tolist()) == sorted(torch.nonzero(y < 0.5).flatten().tolist())


def test_reproducible_under_a_seed():
    y = _labels(12, 80)
    g = torch.Generator()
    s = BalancedSampler(y, 8, 0.5, generator=g)
    g.manual_seed(5)
    a = s.epoch()
    g.manual_seed(5)
    b = s.epoch()
    g.manual_seed(6)
    c = s.epoch()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_refuses_a_single_class_and_bad_fraction():
    with pytest.raises(DataError, match="both classes"):
        BalancedSampler(torch.zeros(20), 8)
    with pytest.raises(ConfigError, match="pos-fraction"):
        BalancedSampler(_labels(3, 10), 8, 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_indices_drawn_on_the_device_without_host_sync():
    y = _labels(30, 500, "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    s = BalancedSampler(y, 64, 0.5, generator=g)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device->host sync inside epoch() raises
    try:
        idx = s.epoch(8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert idx.device.type == "cuda" and idx.shape == (8, 64)
    assert (y[idx].sum(1) == 32).all()
