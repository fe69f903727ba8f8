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


def test_fold_sizes_differ_by_at_most_one_when_the_classes_do_not_divide():
    y = np.array([0] * 7 + [1] * 7)
    sizes = np.bincount(train.stratified_folds(y, 3, seed=0), minlength=3)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 14


def test_a_class_too_small_to_stratify_names_the_csv_and_a_fix_that_can_work():
    import pytest

    from landslide.errors import DataError

    with pytest.raises(DataError) as e:  # a single-class CSV: no --folds helps
        train.stratified_folds(np.zeros(30, dtype=np.int64), 5, seed=0, csv="d/Train.csv")
    assert str(e.value) == ("file d/Train.csv: label 1 (landslide) has 0 row(s), fewer than the 5 folds. "
                            "Fix: add rows labelled 1 to d/Train.csv")
    with pytest.raises(DataError) as e:
        train.stratified_folds(np.array([0] * 3 + [1] * 30), 5, seed=0, csv="d/Train.csv")
    assert e.value.fix == "use --folds 3 or fewer, or add rows labelled 0 to d/Train.csv"
    assert np.bincount(train.stratified_folds(np.array([0] * 3 + [1] * 30), 3, seed=0)).tolist() == [11, 11, 11]


def test_every_fold_arch_epoch_and_rank_has_its_own_random_stream():
    seeds = {train.epoch_seed(1, f, a, e) for f in range(5) for a in range(2) for e in range(30)}
    assert len(seeds) == 5 * 2 * 30 and train.epoch_seed(2, 0, 0, 0) != train.epoch_seed(1, 0, 0, 0)
    # DDP: each rank draws its own batches (the same ones would make N ranks train on one rank's data).
    es = train.epoch_seed(1, 0, 0, 0)
    assert len({train.rank_seed(es, r) for r in range(8)}) == 8 and train.rank_seed(es, 0) == es


def test_focal_flags_reach_the_train_step(synth_data, tmp_path, monkeypatch):
    """--focal-alpha/--focal-gamma are what the step trains with (bench.ablate's loss variants rely on it)."""
    seen = []

    class Recording(train.TrainStep):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append((self.alpha, self.gamma))

    monkeypatch.setattr(train, "TrainStep", Recording)
    train.main(make_config(TrainConfig, {**PRESETS["tiny"], "data": str(synth_data), "out": str(tmp_path / "r"),
                                         "device": "cpu", "cache_dir": str(tmp_path / "c"), "epochs": 1,
                                         "max_steps": 1, "focal_alpha": 0.6, "focal_gamma": 0.5}))
    assert seen and set(seen) == {(0.6, 0.5)}


def test_each_training_image_arrives_with_its_own_label(tmp_path, monkeypatch):
    """The labels the step trains on are those of the images it is fed. The data encode each label in the
    red band (1000 for a landslide, 0 otherwise), augmentation is a plain gather and mixing is off, so a
    standardised image's red channel tells its class."""
    import csv

    from conftest import write_zindi

    data = write_zindi(tmp_path / "d", n_train=30, n_test=2)
    for r in csv.DictReader(open(data / "Train.csv", encoding="utf-8-sig")):
        f = data / "train_data" / f"{r['ID']}.npy"
        x = np.load(f)
        x[..., 0] = 1000.0 * int(r["label"])
        np.save(f, x)

    class Gather:
        memory_format = torch.contiguous_format

        def __call__(self, x, g=None, index=None):
            return x if index is None else x[index]

    batches = []

    class Recording(train.TrainStep):
        def __call__(self, x, y, c):
            batches.append((x[:, 0].mean((1, 2)).clone(), y.clone()))
            return super().__call__(x, y, c)

    monkeypatch.setattr(train, "build_augment", lambda *a, **k: Gather())
    monkeypatch.setattr(train, "TrainStep", Recording)
    train.main(make_config(TrainConfig, {**PRESETS["tiny"], "data": str(data), "out": str(tmp_path / "r"),
                                         "device": "cpu", "cache_dir": str(tmp_path / "c"), "epochs": 1,
                                         "mix_prob": 0.0}))
    assert batches
    for red, y in batches:
        assert set(y.tolist()) == {0.0, 1.0} and torch.equal(red > 0, y > 0.5)


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
