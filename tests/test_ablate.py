"""bench.ablate: variants reach training, and its figures are the run folders' own, recomputed here."""
from __future__ import annotations

import csv
import json

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
        run = work / "runs" / f"{ablate._slug(rec['name'])}-s{rec['config']['seed']}"
        saved = json.loads((run / "config.json").read_text())["config"]
        # the variant's overrides and the seed reached training; the preset did too
        assert (saved["seed"], saved["preset"], saved["max_steps"]) == (rec["config"]["seed"], "tiny", 3)
        want = (-1.0, 0.0) if rec["name"] == bce else (0.25, 2.0)
        assert (saved["focal_alpha"], saved["focal_gamma"]) == want
        m, cal = rec["metrics"], json.loads((run / "calibration.json").read_text())
        assert (m["oof_f1"], m["threshold"]) == (pytest.approx(cal["oof_f1"]), cal["threshold"])
        assert m["oof_f1_crossfit"] == pytest.approx(cal["oof_f1_crossfit"])  # train's figure, recomputed
        assert m["oof_log_loss"] == pytest.approx(cal["oof_log_loss"])
        # the test F1 is the submission's against the generator's labels; no threshold beats the best one
        sub = {r["ID"]: int(r["Target"]) for r in _csv(run / "submission.csv")}
        ids = sorted(sub)
        y = np.array([truth[i] for i in ids])
        assert m["test_f1"] == pytest.approx(f1_at(y, np.array([sub[i] for i in ids], dtype=float), 0.5))
        assert m["test_f1_best"] >= m["test_f1"] - 1e-12 and 0 <= m["oof_ece"] <= 1

    lines = [json.loads(s) for s in printed.splitlines() if s.startswith("{")]
    assert [(d["name"], d["seed"]) for d in lines] == [(r["name"], r["config"]["seed"]) for r in records]
    env = records[0]["env"]
    saved = [r for r in common.read_jsonl(common.results_path(env, out)) if r["bench"] == "ablate"]
    assert len(saved) == 4 and saved[-1]["metrics"] == pytest.approx(records[-1]["metrics"])
    table = (out / f"{env['device_slug']}-ablate-{synth_data.name}.md").read_text()
    assert table.count("| mean of 2 ") == 2 and "OOF F1 cross-fit" in table and "test F1 best thr" in table
    assert "| mean of 2 " in printed


@pytest.mark.parametrize("values, match", [
    ({"variants": ["sead"]}, "unknown variant 'sead'"),
    ({"variants": ["focal_gama=1"]}, "variant 'focal_gama=1': not KEY=VALUE"),
    ({"variants": ["focal_gamma=abc"]}, "focal_gamma"),
    ({"variants": ["seed", "seed"]}, "listed twice"),
    ({"set": ["epochs"]}, "--set 'epochs': not KEY=VALUE"),
    ({"variants": ["fusion=sum"]}, "fusion"),
])
def test_ablate_refuses_a_bad_variant_before_anything_trains(tmp_path, values, match):
    work = tmp_path / "work"
    cfg = make_config(ablate.AblateConfig, {"preset": "tiny", "work_dir": str(work), "out_dir": str(tmp_path), **values})
    with pytest.raises((ConfigError, ValueError), match=match):
        ablate.main(cfg)
    assert not work.exists()  # nothing generated, nothing trained
