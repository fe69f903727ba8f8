"""Same seed + same data = identical folds, sampler draws and (on the CPU) weights."""
import numpy as np
import torch

from landslide import train
from landslide.config import make_config
from landslide.sampler import BalancedSampler
from landslide.train_config import PRESETS, TrainConfig


def test_folds_are_stratified_and_seeded():
    y = np.array([0] * 80 + [1] * 20)
    a = train.stratified_folds(y, 5, seed=3)
    assert np.array_equal(a, train.stratified_folds(y, 5, seed=3))
    assert not np.array_equal(a, train.stratified_folds(y, 5, seed=4))
    for k in range(5):
        assert (a == k).sum() == 20 and y[a == k].sum() == 4


def test_sampler_draws_are_seeded():
    y = torch.tensor([0] * 30 + [1] * 6)
    d1 = BalancedSampler(y, 8, generator=torch.Generator().manual_seed(1)).epoch()
    d2 = BalancedSampler(y, 8, generator=torch.Generator().manual_seed(1)).epoch()
    assert torch.equal(d1, d2)


def _train(data, out, cache):
    cfg = make_config(TrainConfig, {**PRESETS["tiny"], "data": str(data), "out": str(out), "cache_dir": str(cache),
                                    "deterministic": True, "only_folds": [0], "device": "cpu"})
    train.main(cfg)
    return torch.load(out / "fold0" / "test_efficientnet.pt", weights_only=False)["state_dict"]


def test_training_is_bit_reproducible_on_cpu(synth_data, tmp_path):
    a = _train(synth_data, tmp_path / "a", tmp_path / "c")
    b = _train(synth_data, tmp_path / "b", tmp_path / "c")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "folds.csv").read_text() == (tmp_path / "b" / "folds.csv").read_text()
