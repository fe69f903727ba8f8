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


@pytest.mark.parametrize("bs,frac,want", [(4, 0.95, 3), (4, 0.05, 1), (2, 0.9, 1)])
def test_extreme_fractions_still_hold_both_classes(bs, frac, want):
    """round(B * fraction) would give a batch of one class; the sampler keeps at least one of each."""
    y = _labels(23, 170)
    idx = BalancedSampler(y, bs, frac, generator=torch.Generator().manual_seed(1)).epoch()
    assert (y[idx].sum(1) == want).all()


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


@pytest.mark.parametrize("labels", [torch.ones(20), torch.zeros(20)], ids=["no-negatives", "no-positives"])
def test_a_fold_of_one_class_is_a_data_error(labels):
    with pytest.raises(DataError, match="needs both classes"):
        BalancedSampler(labels, 8)


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


def test_epochs_are_random_across_seeds_and_passes():
    """Membership, not just order, is random: the sorted batches differ between seeds; a second pass over
    the positives is a new permutation; positives are not parked in the first columns; an epoch covers
    the fold once (ceil(N / B) steps)."""
    y = _labels(12, 80)
    g = torch.Generator()
    s = BalancedSampler(y, 8, 0.5, generator=g)
    assert s.steps_per_epoch == math.ceil(92 / 8)
    g.manual_seed(0)
    a = s.epoch()
    g.manual_seed(1)
    b = s.epoch()
    assert not torch.equal(a.sort(1).values, b.sort(1).values)
    pos = a[(y[a] == 1)].view(len(a), -1).sort(1).values  # (steps, 4) each batch's positives
    first, second = pos[:3], pos[3:6]  # 12 positives, 4 a batch: two back-to-back permutations
    assert torch.equal(first.flatten().sort().values, second.flatten().sort().values)  # each pass: all of them
    assert not torch.equal(first, second)  # but grouped into batches anew
    assert not (y[a][:, :4] == 1).all()
