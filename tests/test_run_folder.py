"""The run folder's life cycle through the real CLI: a start that fails writes nothing; a start that
trained nothing can be run again; ``--resume`` alone continues a run from its saved config."""
from __future__ import annotations

import json

import pytest
from test_reliability import _assert_user_error

from landslide.errors import ConfigError

from conftest import run_script, write_zindi


def test_a_bad_arch_is_refused_before_anything_is_written(tmp_path):
    d = write_zindi(tmp_path / "d", n_train=6, n_test=2)
    r = run_script("train.py", "--data", str(d), "--out", str(tmp_path / "r"), "--preset", "tiny",
                   "--archs", "resnet_bogus")
    _assert_user_error(r, "unknown timm backbone 'resnet_bogus'", "timm.list_models()")
    r = run_script("train.py", "--data", str(d), "--out", str(tmp_path / "r"), "--preset", "tiny",
                   "--pretrained", str(tmp_path / "missing.pth"))
    _assert_user_error(r, "pretrained checkpoint not found", "missing.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    r = run_script("train.py", "--data", str(d), "--out", str(tmp_path / "r"), "--preset", "tiny",
                   "--pretrained", str(tmp_path / "notes.pth"))
    _assert_user_error(r, f"file {tmp_path / 'notes.pth'}: cannot load it as test_efficientnet weights",
                       "state_dict file (.pth/.bin/.safetensors) of test_efficientnet itself")
    r = run_script("train.py", "--data", str(d), "--out", str(tmp_path / "r"), "--preset", "tiny",
                   "--only-folds", "1,5")  # the tiny preset has folds 0 and 1
    _assert_user_error(r, "fold(s) [5] are out of range", "from 0 to 1 (--folds 2)")
    assert not (tmp_path / "r").exists()  # so the corrected command just works


def test_a_fold_asked_for_twice_is_refused():
    from landslide.config import make_config
    from landslide.train import check_config
    from landslide.train_config import PRESETS, TrainConfig

    with pytest.raises(ConfigError, match=r"fold\(s\) \[0\] are out of range or repeated"):
        check_config(make_config(TrainConfig, {**PRESETS["tiny"], "only_folds": [0, 0]}))
    check_config(make_config(TrainConfig, {**PRESETS["tiny"], "only_folds": [1, 0]}))


@pytest.mark.parametrize("key,value,flag", [("epochs", 0, "--epochs"), ("patience", 0, "--patience"),
                                             ("eval_batch_size", 0, "--eval-batch-size"), ("lr", -1.0, "--lr"),
                                             ("dropout", 2.0, "--dropout"), ("archs", [], "--archs"),
                                             ("folds", 1, "--folds"), ("max_steps", -1, "--max-steps"),
                                             ("batch_size", 1, "--batch-size"), ("min_lr", 1.0, "--min-lr"),
                                             ("min_lr", -1e-6, "--min-lr"), ("weight_decay", -0.1, "--weight-decay"),
                                             ("focal_alpha", 1.5, "--focal-alpha"), ("focal_gamma", -1.0, "--focal-gamma"),
                                             ("pos_fraction", 1.0, "--pos-fraction"), ("pos_fraction", 0.0, "--pos-fraction"),
                                             ("mixup_alpha", -0.2, "--mixup-alpha"), ("cutmix_alpha", -1.0, "--cutmix-alpha"),
                                             ("mix_prob", 1.5, "--mix-prob"), ("seed", -1, "--seed")])
def test_numbers_that_would_crash_or_train_nothing_are_refused(key, value, flag):
    from landslide.config import make_config
    from landslide.train import check_config
    from landslide.train_config import PRESETS, TrainConfig

    with pytest.raises(ConfigError, match=f"^{flag} .*: out of range") as e:
        check_config(make_config(TrainConfig, {**PRESETS["tiny"], key: value}))
    assert e.value.fix.startswith(f"pass {flag} ")
    # The edges that are allowed.
    check_config(make_config(TrainConfig, {**PRESETS["tiny"], "epochs": 1, "patience": 1, "dropout": 0.0, "max_steps": 0,
                                           "batch_size": 2, "min_lr": PRESETS["tiny"]["lr"], "weight_decay": 0.0,
                                           "focal_alpha": -1.0, "focal_gamma": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
                                           "mix_prob": 1.0, "seed": 0}))


@pytest.mark.parametrize("key,flag", [("out", "--out"), ("cache_dir", "--cache-dir")])
def test_a_file_where_a_folder_goes_is_refused(key, flag, tmp_path):
    from landslide.config import make_config
    from landslide.train import check_config
    from landslide.train_config import PRESETS, TrainConfig

    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ConfigError, match=f"{flag} .*afile is a file; it takes a folder"):
        check_config(make_config(TrainConfig, {**PRESETS["tiny"], key: str(tmp_path / "afile")}))
    assert (tmp_path / "afile").read_text() == "mine"
    check_config(make_config(TrainConfig, {**PRESETS["tiny"], key: str(tmp_path / "new")}))


def test_an_arch_listed_twice_is_refused_before_anything_is_written(tmp_path):
    """Two entries with one name would share a checkpoint file and one ensemble weight: refused, naming it."""
    from landslide.config import make_config
    from landslide.train import check_config
    from landslide.train_config import PRESETS, TrainConfig

    tiny = PRESETS["tiny"]
    for archs in (["test_efficientnet", "test_efficientnet"], ["test_efficientnet@64", "test_efficientnet@64"]):
        with pytest.raises(ConfigError, match=f"{archs[0]} listed more than once"):
            check_config(make_config(TrainConfig, {**tiny, "archs": archs}))
    check_config(make_config(TrainConfig, {**tiny, "archs": ["test_efficientnet", "test_efficientnet@64"]}))
    d = write_zindi(tmp_path / "d", n_train=6, n_test=2)
    r = run_script("train.py", "--data", str(d), "--out", str(tmp_path / "r"), "--preset", "tiny",
                   "--archs", "test_efficientnet,test_efficientnet")
    _assert_user_error(r, "test_efficientnet listed more than once", "list each architecture once")
    assert not (tmp_path / "r").exists()


def test_a_start_that_trained_nothing_can_be_started_again(trained_run, tmp_path):
    from landslide.config import make_config
    from landslide.run_folder import prepare_run_dir
    from landslide.train_config import TrainConfig

    run, _ = trained_run
    start = tmp_path / "run"
    start.mkdir()
    for name in ("config.json", "contract.json", "folds.csv"):  # what a start writes before epoch 1
        (start / name).write_bytes((run / name).read_bytes())
    cfg = make_config(TrainConfig, {"out": str(start)})
    assert prepare_run_dir(cfg) == start
    (start / "fold0").mkdir()
    (start / "fold0" / "test_efficientnet.state.pt").write_bytes(b"an epoch's state")
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(cfg)


def test_resume_takes_the_runs_saved_config(trained_run, tmp_path):
    """`--out RUN --resume` alone: the saved config fills in every flag, in a copied folder too."""
    import shutil

    run, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    r = run_script("train.py", "--out", str(copy), "--resume")
    assert r.returncode == 0, r.stderr
    assert "finished earlier, reusing its checkpoint" in r.stderr
    assert json.loads((copy / "calibration.json").read_text()) == json.loads((run / "calibration.json").read_text())
    saved = json.loads((copy / "config.json").read_text())["config"]
    assert saved["out"] == str(copy) and saved["data"] == json.loads((run / "config.json").read_text())["config"]["data"]


def test_resume_of_a_run_whose_config_has_a_dropped_key_warns_once(trained_run, tmp_path):
    """A key this version no longer has is named once (the script and the run folder both read the file)."""
    import shutil

    run, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    doc = json.loads((copy / "config.json").read_text())
    doc["config"]["retired_knob"] = 3
    (copy / "config.json").write_text(json.dumps(doc))
    r = run_script("train.py", "--out", str(copy), "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("['retired_knob'] are not fields") == 1, r.stderr


def test_resume_of_a_run_whose_config_predates_a_field(trained_run, tmp_path):
    """A run started by an older version has no key for a field added since: it ran with that field's
    default, so resuming (with the saved config as base) must not count the field as a change."""
    import shutil

    from landslide.config import parse_config
    from landslide.run_folder import prepare_run_dir, saved_config
    from landslide.train_config import PRESETS, TrainConfig

    run, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    doc = json.loads((copy / "config.json").read_text())
    for newer in ("lr_scale", "cuda_graphs", "pos_fraction"):
        del doc["config"][newer]
    (copy / "config.json").write_text(json.dumps(doc))
    argv = ["--out", str(copy), "--resume"]
    cfg = parse_config(TrainConfig, argv, "", presets=PRESETS, base=saved_config(str(copy)))
    assert prepare_run_dir(cfg) == copy
    # A typed value other than the default is still a change to what the run trains.
    cfg = parse_config(TrainConfig, [*argv, "--lr-scale", "linear"], "", presets=PRESETS, base=saved_config(str(copy)))
    with pytest.raises(ConfigError, match="--lr-scale linear \\(the run has --lr-scale sqrt\\)"):
        prepare_run_dir(cfg)
    cfg = parse_config(TrainConfig, [*argv, "--epochs", "9"], "", presets=PRESETS, base=saved_config(str(copy)))
    with pytest.raises(ConfigError, match="--epochs 9 .*the cosine schedule spans the run's epochs") as e:
        prepare_run_dir(cfg)
    assert "Fix: drop --epochs" in str(e.value)


def script_val_f1(monkeypatch, scores: list[float]) -> list:
    """Training's validation F1, epoch after epoch, as ``scores``; once they run out (the OOF summary
    lines) the real one. Returns the list of calls, one entry per call."""
    import landslide.train as train

    calls, real = [], train.best_threshold

    def fake(y, p):
        calls.append(1)
        return (0.5, scores[len(calls) - 1]) if len(calls) <= len(scores) else real(y, p)

    monkeypatch.setattr(train, "best_threshold", fake)
    return calls


def test_early_stop_keeps_the_best_epoch_and_a_resume_does_not_train_on(synth_data, tmp_path, monkeypatch, caplog):
    """Validation F1 0.5, 0.7, 0.6, 0.6 with --patience 2: training stops after epoch 4, the checkpoint is
    epoch 2's, and resuming the stopped run trains nothing more."""
    import csv
    import dataclasses

    import torch

    import landslide.train as train
    from landslide.config import make_config
    from landslide.contract import checkpoint_path
    from landslide.train_config import PRESETS, TrainConfig

    calls = script_val_f1(monkeypatch, [0.5, 0.7, 0.6, 0.6])
    run = tmp_path / "run"
    cfg = make_config(TrainConfig, {**PRESETS["tiny"], "data": str(synth_data), "out": str(run), "epochs": 6,
                                    "patience": 2, "max_steps": 1, "only_folds": [0],
                                    "cache_dir": str(tmp_path / "cache")})
    with caplog.at_level("INFO", logger="landslide.train"):
        train.main(cfg)
    assert "early stop (no improvement for 2 epochs)" in caplog.text
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    ck = torch.load(checkpoint_path(run, 0, "test_efficientnet"), weights_only=False)
    assert (ck["epoch"], ck["val_f1"]) == (2, 0.7)
    # The finished fold's state is its OOF rows and metrics: no second copy of the weights, no optimizer.
    state = checkpoint_path(run, 0, "test_efficientnet", ".state.pt")
    st = torch.load(state, weights_only=False)
    assert st["done"] and not {"model", "optimizer", "scheduler", "scaler"} & set(st), sorted(st)
    assert state.stat().st_size < checkpoint_path(run, 0, "test_efficientnet").stat().st_size / 10
    caplog.clear()
    with caplog.at_level("INFO", logger="landslide.train"):
        train.main(dataclasses.replace(cfg, resume=True))
    assert "finished earlier, reusing its checkpoint" in caplog.text
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 4
    assert len(calls) == 4 + 2  # epochs 1-4, then each run's OOF line: no epoch was scored after the stop


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_in", ["_save_state", "_promote"])
def test_a_kill_at_an_improving_epoch_leaves_checkpoint_and_state_agreeing(synth_data, tmp_path, monkeypatch, kill_in):
    """Epoch 2 improves (F1 0.5 -> 0.7) and the process dies there: before its state is written, or after
    it but before the checkpoint is promoted. On resume the checkpoint must be the one the state names
    best, whatever the replay scores. The first case is the regression: the replay is scripted to score
    otherwise (0.4), as a GPU's can, and a checkpoint written straight to its place before the state
    survived as the best weights while the state and metrics.csv named epoch 1. The second checks that the
    resume promotes what the state already counts as best."""
    import csv
    import dataclasses

    import torch

    import landslide.train as train
    from landslide.config import make_config
    from landslide.contract import checkpoint_path
    from landslide.train_config import PRESETS, TrainConfig

    # the killed run: 0.5, 0.7; the resumed one: a replay of epoch 2 (only when its state was never written)
    # then epochs that do not improve, so early stopping ends the fold on the checkpoint it holds
    script_val_f1(monkeypatch, [0.5, 0.7, 0.4, 0.45] if kill_in == "_save_state" else [0.5, 0.7, 0.45, 0.45])
    original = getattr(train.FoldTrainer, kill_in)

    def dies_at_epoch_2(self, *a, **kw):
        epoch = a[4] if kill_in == "_save_state" else a[0]
        if epoch == 1 and kw.get("oof") is None:
            raise _Killed
        return original(self, *a, **kw)

    monkeypatch.setattr(train.FoldTrainer, kill_in, dies_at_epoch_2)
    run = tmp_path / "run"
    cfg = make_config(TrainConfig, {**PRESETS["tiny"], "data": str(synth_data), "out": str(run), "epochs": 6,
                                    "patience": 2, "max_steps": 1, "only_folds": [0],
                                    "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(_Killed):
        train.main(cfg)
    staged = list((run / "fold0").glob("*.staged"))  # epoch 2's checkpoint, not yet the checkpoint
    monkeypatch.setattr(train.FoldTrainer, kill_in, original)
    train.main(dataclasses.replace(cfg, resume=True))

    ck = torch.load(checkpoint_path(run, 0, "test_efficientnet"), weights_only=False)
    st = torch.load(checkpoint_path(run, 0, "test_efficientnet", ".state.pt"), weights_only=False)
    best = (1, 0.5) if kill_in == "_save_state" else (2, 0.7)  # the replay's 0.4 did not improve on 0.5
    assert (ck["epoch"], ck["val_f1"]) == best and st["best_epoch"] + 1 == best[0]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert max(rows, key=lambda r: float(r["val_f1"]))["epoch"] == str(best[0])
    assert [p.name for p in staged] == ["test_efficientnet.epoch2.staged"]
    assert not list((run / "fold0").glob("*.staged"))  # settled by the resume


def test_a_run_trained_fold_by_fold_is_finished_by_resume(synth_data, tmp_path, caplog):
    """--only-folds belongs to the invocation: after `--only-folds 0`, `--resume` alone trains the folds
    still to train (and `--resume --only-folds 1` just that one), then calibrates over every fold."""
    import csv
    import importlib.util
    import shutil

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run, cache = tmp_path / "run", str(tmp_path / "cache")
    with caplog.at_level("INFO", logger="landslide.train"):
        assert script.main(["--data", str(synth_data), "--out", str(run), "--preset", "tiny", "--epochs", "1",
                            "--only-folds", "0", "--cache-dir", cache, "--device", "cpu"]) == {}
    assert f"fold(s) [1] still to train (calibration needs every fold's OOF predictions): python train.py --out {run} " \
           "--resume" in caplog.text
    assert not (run / "calibration.json").exists()
    assert {r["fold"] for r in csv.DictReader(open(run / "metrics.csv"))} == {"0"}
    other = tmp_path / "other"
    shutil.copytree(run, other)

    cal = script.main(["--out", str(run), "--resume"])
    picked = script.main(["--out", str(other), "--resume", "--only-folds", "1"])
    for r, c in ((run, cal), (other, picked)):
        assert json.loads((r / "calibration.json").read_text())["oof_f1"] == c["oof_f1"]
        assert {row["fold"] for row in csv.DictReader(open(r / "metrics.csv"))} == {"0", "1"}
    assert picked == cal  # the same folds, trained in the same order of invocations


def test_metrics_csv_is_written_after_every_epoch(synth_data, tmp_path, monkeypatch):
    """A long run can be watched: metrics.csv holds each epoch as soon as its state is on disk, with the
    folds an earlier invocation finished (--only-folds) from the first write on."""
    import csv

    import landslide.run_folder as run_folder
    import landslide.train as train
    from landslide.config import make_config
    from landslide.train_config import PRESETS, TrainConfig

    seen: list[list[tuple[str, str]]] = []
    real = run_folder.write_metrics

    def recording(path, rows):
        real(path, rows)
        seen.append([(r["fold"], r["epoch"]) for r in csv.DictReader(open(path))])

    monkeypatch.setattr(train, "write_metrics", recording)
    run = tmp_path / "run"
    base = {**PRESETS["tiny"], "data": str(synth_data), "out": str(run), "device": "cpu", "epochs": 3,
            "patience": 10, "max_steps": 1, "cache_dir": str(tmp_path / "cache")}
    train.main(make_config(TrainConfig, {**base, "only_folds": [0]}))
    assert seen[:3] == [[("0", "1")], [("0", "1"), ("0", "2")], [("0", "1"), ("0", "2"), ("0", "3")]]
    seen.clear()
    train.main(make_config(TrainConfig, {**base, "only_folds": [1], "resume": True}))
    assert seen[0] == [("0", "1"), ("0", "2"), ("0", "3"), ("1", "1")]  # fold 0's rows kept, fold 1's first epoch
    assert seen[-1] == seen[0] + [("1", "2"), ("1", "3")]


def test_metrics_csv_keeps_a_half_trained_folds_epochs_while_another_fold_trains(synth_data, tmp_path, monkeypatch):
    """Fold 1 stopped after 2 of 3 epochs (Ctrl-C); `--only-folds 0` then must not drop its rows from metrics.csv."""
    import csv

    import landslide.run_folder as run_folder
    import landslide.train as train
    from landslide.config import make_config
    from landslide.train_config import PRESETS, TrainConfig

    seen: list[list[tuple[str, str]]] = []
    real = run_folder.write_metrics

    def recording(path, rows):
        real(path, rows)
        seen.append([(r["fold"], r["epoch"]) for r in csv.DictReader(open(path))])
        if seen[-1][-1] == ("1", "2") and not stop_done:
            raise KeyboardInterrupt  # after epoch 2's state write, as a Ctrl-C there would be

    monkeypatch.setattr(train, "write_metrics", recording)
    run = tmp_path / "run"
    base = {**PRESETS["tiny"], "data": str(synth_data), "out": str(run), "device": "cpu", "epochs": 3,
            "patience": 10, "max_steps": 1, "cache_dir": str(tmp_path / "cache")}
    stop_done = False
    with pytest.raises(KeyboardInterrupt):
        train.main(make_config(TrainConfig, {**base, "only_folds": [1]}))
    stop_done = True
    seen.clear()
    train.main(make_config(TrainConfig, {**base, "only_folds": [0], "resume": True}))
    assert seen[0] == [("0", "1"), ("1", "1"), ("1", "2")]
    assert seen[-1] == [("0", "1"), ("0", "2"), ("0", "3"), ("1", "1"), ("1", "2")]
    seen.clear()
    train.main(make_config(TrainConfig, {**base, "resume": True}))  # fold 1 finishes; its epochs are not listed twice
    assert seen[-1] == [("0", "1"), ("0", "2"), ("0", "3"), ("1", "1"), ("1", "2"), ("1", "3")]
    assert (run / "calibration.json").is_file()


def _copies(trained_run, tmp_path, saved_data: str | None) -> tuple:
    """(data copy, run copy, its config.json), the run's saved --data set to ``saved_data`` (None: the copy)."""
    import shutil

    run, data = trained_run
    d, copy = tmp_path / "d", tmp_path / "copy"
    shutil.copytree(data, d)
    shutil.copytree(run, copy)
    cfgp = copy / "config.json"
    saved = json.loads(cfgp.read_text())
    saved["config"]["data"] = str(d) if saved_data is None else saved_data
    cfgp.write_text(json.dumps(saved))
    return d, copy, cfgp


def test_resume_refuses_a_training_csv_other_than_the_runs(trained_run, tmp_path):
    """Finished folds' checkpoints and OOF rows belong to the saved folds: an edited Train.csv is refused."""
    d, copy, _ = _copies(trained_run, tmp_path, None)
    before = (copy / "folds.csv").read_text()
    lines = (d / "Train.csv").read_text().splitlines()
    head, first = lines[0], lines[1].split(",")
    flipped = [head, f"{first[0]},{1 - int(first[1])}", *lines[2:]]  # one label changed, same row count
    (d / "Train.csv").write_text("\n".join(flipped) + "\n")
    r = run_script("train.py", "--out", str(copy), "--resume")
    assert r.returncode == 2, r.stderr
    assert "not the one this run started on" in r.stderr and f"--data {d} --out NEW_RUN" in r.stderr
    assert (copy / "folds.csv").read_text() == before  # nothing rewritten


def test_resume_takes_the_data_folder_moved_and_a_layout_flag(trained_run, tmp_path):
    """A run started with a relative --data, resumed from another folder: --data DIR (same rows) is taken."""
    d, copy, cfgp = _copies(trained_run, tmp_path, "data/relative_to_another_folder")
    r = run_script("train.py", "--out", str(copy), "--resume", "--data", str(d), "--channels-last", "off")
    assert r.returncode == 0, r.stderr
    assert json.loads(cfgp.read_text())["config"]["data"] == str(d)
