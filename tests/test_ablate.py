"""bench.ablate: variants reach training, and its figures are the run folders' own, recomputed here."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from bench import ablate, common
from landslide.calibrate import f1_at
from landslide.config import make_config
from landslide.errors import ConfigError


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ece_by_hand():
    y = np.array([0, 1, 0, 1])
    assert ablate.ece(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.0)  # one bin, p = its rate
    # bin 0.9-1.0 holds two rows at 0.95, one positive: |0.95 - 0.5| = 0.45; bin 0.0-0.1 two rows at 0.05,
    # one positive: 0.45; each bin half the rows
    assert ablate.ece(y, np.array([0.05, 0.95, 0.95, 0.05])) == pytest.approx(0.45)
    assert ablate.ece(np.array([1]), np.array([1.0])) == pytest.approx(0.0)  # p = 1 falls in the last bin


def test_ablate_trains_each_variant_and_reports_its_run_folder(synth_data, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "results"
    bce = "focal_gamma=0+focal_alpha=-1"
    cfg = make_config(ablate.AblateConfig, {"data": str(synth_data), "preset": "tiny", "variants": ["seed", bce],
                                            "seeds": [1, 2], "work_dir": str(work), "out_dir": str(out),
                                            "device": "cpu", "cache_dir": str(tmp_path / "cache")})
    records = ablate.main(cfg)
    printed = capsys.readouterr().out

    assert [(r["name"], r["config"]["seed"]) for r in records] == [("seed", 1), ("seed", 2), (bce, 1), (bce, 2)]
    truth = {r["ID"]: int(r["label"]) for r in _csv(synth_data / "test_labels.csv")}
    for rec in records:
        run = work / "runs" / rec["config"]["run"]
        saved = json.loads((run / "config.json").read_text())["config"]
        # the variant's overrides and the seed reached training; the preset did too
        assert (saved["seed"], saved["preset"], saved["max_steps"]) == (rec["config"]["seed"], "tiny", 3)
        want = (-1.0, 0.0) if rec["name"] == bce else (0.25, 2.0)
        assert (saved["focal_alpha"], saved["focal_gamma"]) == want
        m, cal = rec["metrics"], json.loads((run / "calibration.json").read_text())
        assert (m["oof_f1"], m["threshold"]) == (pytest.approx(cal["oof_f1"]), cal["threshold"])
        assert m["oof_f1_crossfit"] == cal["oof_f1_crossfit"]
        # recomputed here from oof.csv: the ensemble's log loss is calibration.json's, so the columns and weights
        # were read as training wrote them
        assert m["oof_log_loss"] == pytest.approx(cal["oof_log_loss"], abs=1e-5)
        # the test F1 is the submission's against the generator's labels; no threshold beats the best one
        sub = {r["ID"]: int(r["Target"]) for r in _csv(run / "submission.csv")}
        ids = sorted(sub)
        y = np.array([truth[i] for i in ids])
        assert m["test_f1"] == pytest.approx(f1_at(y, np.array([sub[i] for i in ids], dtype=float), 0.5))
        assert m["test_f1_best"] >= m["test_f1"] - 1e-12 and 0 <= m["oof_ece"] <= 1

    lines = [json.loads(s) for s in printed.splitlines() if s.startswith("{")]
    assert lines == records  # each run's record, printed as it is saved
    env = records[0]["env"]
    saved = [r for r in common.read_jsonl(common.results_path(env, out)) if r["bench"] == "ablate"]
    assert len(saved) == 4 and saved[-1]["metrics"] == pytest.approx(records[-1]["metrics"])
    table = (out / f"{env['device_slug']}-ablate-{synth_data.name}.md").read_text()
    assert "OOF F1 cross-fit" in table and "test F1 best thr" in table and "| mean of 2 " in printed
    # each mean row is the mean of that variant's two runs
    head = [c.strip() for c in table.splitlines()[4].strip("|").split("|")]
    means = {c[0]: dict(zip(head, c)) for c in ([v.strip() for v in line.strip("|").split("|")]
                                                for line in table.splitlines() if "| mean of 2 " in line)}
    assert set(means) == {"seed", bce}
    for name, row in means.items():
        runs = [r["metrics"] for r in records if r["name"] == name]
        assert float(row["OOF F1 cross-fit"]) == pytest.approx(np.mean([m["oof_f1_crossfit"] for m in runs]), abs=6e-5)
        assert float(row["test F1"]) == pytest.approx(np.mean([m["test_f1"] for m in runs]), abs=6e-5)


def test_ablate_on_a_synthetic_set_keeps_it_and_its_cache_in_the_work_folder(tmp_path, monkeypatch):
    """Without --data the set is generated into the work folder and its cache goes there too (train.py's
    default cache, keyed by the data path, would keep an entry nothing reads again). A list field in a
    variant takes ':' between items: two architectures train and are calibrated together."""
    home = tmp_path / "home-cache"
    monkeypatch.setenv("LANDSLIDE_CACHE", str(home))
    work, out = tmp_path / "work", tmp_path / "results"
    two = "archs=test_efficientnet:test_efficientnet@80"
    cfg = make_config(ablate.AblateConfig, {"preset": "tiny", "variants": [two], "n_train": 40, "n_test": 10,
                                            "work_dir": str(work), "out_dir": str(out), "device": "cpu"})
    (rec,) = ablate.main(cfg)
    cal = json.loads((work / "runs" / rec["config"]["run"] / "calibration.json").read_text())
    assert set(cal["weights"]) == {"test_efficientnet", "test_efficientnet@80"}
    assert (work / "synth" / "test_labels.csv").is_file() and "test_f1" in rec["metrics"]
    assert list((work / "cache").glob("*.pt")) and not home.exists()
    assert (rec["config"]["n_train"], rec["config"]["n_test"]) == (40, 10)
    assert (out / f"{rec['env']['device_slug']}-ablate-synth-n40.md").is_file()


def test_ablate_without_test_labels_reports_the_oof_figures_only(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data, ignore=shutil.ignore_patterns("test_labels.csv", ".cache"))
    cfg = make_config(ablate.AblateConfig, {"data": str(data), "preset": "tiny", "variants": ["no-mix"],
                                            "work_dir": str(tmp_path / "work"), "out_dir": str(tmp_path / "results"),
                                            "device": "cpu", "cache_dir": str(tmp_path / "cache")})
    (rec,) = ablate.main(cfg)
    assert not any(k.startswith("test_") for k in rec["metrics"]) and "oof_f1_crossfit" in rec["metrics"]
    table = (tmp_path / "results" / f"{rec['env']['device_slug']}-ablate-data.md").read_text()
    assert "OOF F1 cross-fit" in table and "test F1" not in table and "| mean of" not in table


def test_quick_plan_and_explicit_sizes():
    pl = ablate.plan(make_config(ablate.AblateConfig, {"quick": True}))
    assert list(pl.variants) == ["seed", "bce"] and (pl.n_train, pl.n_test) == (480, 120)
    assert pl.common_set == {"folds": "3", "epochs": "2", "max_steps": "8"}
    pl = ablate.plan(make_config(ablate.AblateConfig, {"quick": True, "n_train": 1000, "variants": ["no-mix"],
                                                       "set": ["epochs=3"]}))
    assert list(pl.variants) == ["no-mix"] and pl.n_train == 1000 and pl.common_set["epochs"] == "3"
    assert list(ablate.plan(make_config(ablate.AblateConfig, {})).variants) == list(ablate.VARIANTS)


@pytest.mark.parametrize("values, match", [
    ({"variants": ["sead"]}, "unknown variant 'sead'"),
    ({"variants": ["focal_gama=1"]}, "variant 'focal_gama=1': not KEY=VALUE"),
    ({"variants": ["focal_gamma=abc"]}, "focal_gamma"),
    ({"variants": ["seed", "seed"]}, "listed twice"),
    ({"set": ["epochs"]}, "--set 'epochs': not KEY=VALUE"),
    ({"variants": ["fusion=sum"]}, "fusion"),
    ({"variants": ["seed=7"]}, "sets seed for every run itself.*--seeds"),
    ({"set": ["only_folds=0"]}, "sets only_folds for every run itself.*needs every fold"),
    ({"set": ["out=x"]}, "--work-dir"),
])
def test_ablate_refuses_a_bad_variant_before_anything_trains(tmp_path, values, match):
    work = tmp_path / "work"
    cfg = make_config(ablate.AblateConfig, {"preset": "tiny", "work_dir": str(work), "out_dir": str(tmp_path), **values})
    with pytest.raises((ConfigError, ValueError), match=match):
        ablate.main(cfg)
    assert not work.exists()  # nothing generated, nothing trained
