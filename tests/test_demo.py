"""The quick-start job (`make demo` = `python -m landslide.demo`), on a small synthetic set."""
import csv
import json

import numpy as np
import pytest

from landslide import demo
from landslide.calibrate import f1_at

pytestmark = pytest.mark.slow


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_trains_scores_and_reports_what_it_wrote(tmp_path, monkeypatch, capsys):
    home_cache = tmp_path / "home-cache"
    monkeypatch.setenv("LANDSLIDE_CACHE", str(home_cache))
    data, out = tmp_path / "synth", tmp_path / "runs" / "demo"
    summary = demo.main(["--data", str(data), "--out", str(out), "--n-train", "80", "--n-test", "20"])
    printed = capsys.readouterr().out

    assert summary == json.loads((out / "demo_summary.json").read_text())
    assert set(summary["per_fold_f1"]) == {"0", "1", "2", "3", "4"}  # the demo preset's 5 folds
    cal = json.loads((out / "calibration.json").read_text())
    assert (summary["oof_f1"], summary["threshold"]) == (round(cal["oof_f1"], 4), round(cal["threshold"], 4))
    assert summary["oof_f1_crossfit"] == round(cal["oof_f1_crossfit"], 4)
    # The test F1 is the submission's against the generator's labels, recomputed here.
    sub = {r["ID"]: int(r["Target"]) for r in _csv(out / "submission.csv")}
    truth = {r["ID"]: int(r["label"]) for r in _csv(data / "test_labels.csv")}
    assert set(sub) == set(truth) and len(sub) == 20
    ids = sorted(sub)
    want = f1_at(np.array([truth[i] for i in ids]), np.array([sub[i] for i in ids], dtype=float), 0.5)
    assert summary["test_f1"] == round(want, 4)
    probs = {r["ID"]: float(r["prob"]) for r in _csv(out / "submission_probs.csv")}
    assert all((probs[i] >= cal["threshold"]) == bool(sub[i]) for i in ids)
    assert 0 <= summary["logreg_means_oof_f1"] <= 1 and 0 <= summary["logreg_means_test_f1"] <= 1

    # What it prints names the figures, the submission and the data folder the README's commands take.
    assert f"cross-fitted OOF F1 {summary['oof_f1_crossfit']:.4f}" in printed
    assert f"overall OOF F1 {summary['oof_f1']:.4f}" in printed and f"held-out test F1 {summary['test_f1']:.4f}" in printed
    assert f"--data {data}" in printed and str(out / "submission.csv") in printed
    # Its cache lives in its data folder (removed with it), none in the user's cache.
    assert sorted(p.name.split("-")[0] for p in (data / ".cache").glob("*.pt")) == ["test", "train"]
    assert not home_cache.exists()

    # A rerun keeps the data set and starts the run folder clean.
    (out / "stray.txt").write_text("x")
    before = {p: p.stat().st_mtime_ns for p in [data / "Train.csv", *(data / ".cache").glob("*.pt")]}
    demo.main(["--data", str(data), "--out", str(out), "--n-train", "80", "--n-test", "20"])
    assert {p: p.stat().st_mtime_ns for p in before} == before  # data and cache reused, not rewritten
    assert not (out / "stray.txt").exists() and (out / "submission.csv").is_file()
