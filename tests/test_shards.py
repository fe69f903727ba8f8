"""Sharded scoring's files and ``infer.py --merge-shards``: every shard there, one header, no ID twice or
missing, rows in Test.csv order, the submission written only when all of that holds. No model is needed:
the shard files are written here as ``infer.py --shard K/N`` writes them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from landslide.config import make_config, parse_config
from landslide.errors import ConfigError, DataError
from landslide.infer import InferConfig
from landslide.infer import main as infer_main
from landslide.shards import probs_path, shard_ids, shard_path

from conftest import write_zindi


@pytest.fixture
def setup(tmp_path):
    """(run folder, data folder, the Test.csv IDs): 9 test IDs, so 3 shards of 3."""
    data = write_zindi(tmp_path / "data", n_train=1, n_test=9)
    run = tmp_path / "run"
    run.mkdir()
    ids = [f"ID_TE{i:04d}" for i in range(9)]
    return run, data, ids


def _write_shards(run: Path, ids: list[str], n: int, *, probs: bool = False, skip: tuple[int, ...] = ()) -> None:
    for k in range(n):
        if k in skip:
            continue
        part = shard_ids(ids, f"{k}/{n}")
        rows = [[i, str(j % 2)] for j, i in enumerate(part)]
        _csv(shard_path(run / "submission.csv", k, n), ["ID", "Target"], rows[::-1])  # order inside is not kept
        if probs:
            _csv(shard_path(probs_path(run / "submission.csv"), k, n), ["ID", "prob"],
                 [[i, f"0.{j}00000"] for i, j in rows])


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _merge(run: Path, data: Path | None = None, **kw) -> dict:
    return infer_main(make_config(InferConfig, {"run": str(run), "merge_shards": True,
                                                **({"data": str(data)} if data else {}), **kw}))


def _ids(path: Path) -> list[str]:
    return [r[0] for r in csv.reader(open(path))][1:]


def test_merge_writes_test_csv_order_and_keeps_the_shards(setup):
    run, data, ids = setup
    _write_shards(run, ids, 3, probs=True)
    made = _merge(run, data)
    assert made == {"out": str(run / "submission.csv"), "n": 9, "shards": 3, "probs": str(run / "submission_probs.csv"),
                    "threshold": None}  # these shard files were written by hand: no threshold record
    assert _ids(run / "submission.csv") == ids and _ids(run / "submission_probs.csv") == ids
    rows = {r[0]: r[1] for r in csv.reader(open(run / "submission.csv"))}
    assert rows["ID"] == "Target" and rows["ID_TE0000"] == "0" and rows["ID_TE0001"] == "1"
    assert len(list(run.glob("*.shard*of3.csv"))) == 6  # the shards stay: merging again gives the same file
    # Without --data there is no CSV to order by: the shards' own order (infer.py writes each in CSV order).
    (run / "submission.csv").unlink()
    assert _merge(run)["n"] == 9
    assert _ids(run / "submission.csv") == [i for k in range(3) for i in shard_ids(ids, f"{k}/3")[::-1]]


@pytest.mark.parametrize("bad", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3"])
def test_a_bad_shard_is_refused(bad):
    from landslide.shards import parse_shard

    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(bad)


def test_calls_at_the_threshold_are_positive(tmp_path):
    import numpy as np

    from landslide.infer import write_submission

    out = tmp_path / "s.csv"
    write_submission(out, ["a", "b", "c"], np.array([0.3, 0.5, 0.7], np.float32), 0.5, None)
    assert [r["Target"] for r in csv.DictReader(open(out))] == ["0", "1", "1"]


def test_the_flag_and_its_conflicts():
    cfg = parse_config(InferConfig, ["runs/x", "--merge-shards"], "", positional=("run",))  # as infer.py parses
    assert cfg.merge_shards and cfg.run == "runs/x"
    with pytest.raises(ConfigError, match="drop --shard"):
        infer_main(make_config(InferConfig, {"run": "runs/x", "merge_shards": True, "shard": "0/2"}))
    with pytest.raises(ConfigError, match="run folder or artefact not found") as e:  # a typo: not "here"
        infer_main(make_config(InferConfig, {"run": "runs/no-such-run", "merge_shards": True}))
    assert "runs/no-such-run" in str(e.value)


def test_a_missing_shard_is_named_with_the_command_that_scores_it(setup):
    run, data, ids = setup
    _write_shards(run, ids, 3, skip=(1,))
    with pytest.raises(DataError) as e:
        _merge(run, data)
    msg = str(e.value)
    assert str(run / "submission.shard1of3.csv") in msg and "shard 1 of 3 is missing" in msg
    assert f"python infer.py {run} --data {data} --shard 1/3" in msg
    assert not (run / "submission.csv").exists()
    for f in run.glob("*.shard*"):
        f.unlink()
    with pytest.raises(DataError, match="no shard files to merge") as e:
        _merge(run, data)
    assert "submission.shard<K>of<N>.csv" in str(e.value) and "--shard K/N" in str(e.value)


def test_inconsistent_shards_are_refused(setup):
    run, data, ids = setup
    out = run / "submission.csv"
    _write_shards(run, ids, 3)
    _csv(shard_path(out, 1, 3), ["ID", "label"], [[i, "0"] for i in shard_ids(ids, "1/3")])
    with pytest.raises(DataError, match="header") as e:
        _merge(run, data)
    assert str(shard_path(out, 1, 3)) in str(e.value)

    _write_shards(run, ids, 3)
    _csv(shard_path(out, 2, 3), ["ID", "Target"], [[ids[0], "1"], *[[i, "0"] for i in shard_ids(ids, "2/3")]])
    with pytest.raises(DataError, match="ID also in") as e:
        _merge(run, data)
    assert ids[0] in str(e.value) and str(shard_path(out, 0, 3)) in str(e.value)

    _write_shards(run, ids, 3)
    _write_shards(run, ids, 2)  # a stale set from an earlier --shard K/2 run
    with pytest.raises(DataError, match="more than one shard count") as e:
        _merge(run, data)
    assert "submission.shard0of2.csv" in str(e.value) and "submission.shard0of3.csv" in str(e.value)
    assert not out.exists()


def test_ids_are_checked_against_test_csv(setup):
    run, data, ids = setup
    out = run / "submission.csv"
    _write_shards(run, ids, 3)
    _csv(shard_path(out, 1, 3), ["ID", "Target"], [[ids[3], "0"], [ids[5], "1"]])  # ids[4] was skipped as bad
    with pytest.raises(DataError) as e:
        _merge(run, data)
    msg = str(e.value)
    assert "1 ID(s) of the CSV are in no shard file" in msg and ids[4] in msg and str(shard_path(out, 1, 3)) in msg
    assert "--shard 1/3" in msg and "--skip-bad" in msg and not out.exists()
    assert _merge(run, data, skip_bad=True)["n"] == 8 and _ids(out) == [i for i in ids if i != ids[4]]

    _csv(shard_path(out, 1, 3), ["ID", "Target"], [[i, "0"] for i in [*shard_ids(ids, "1/3"), "ID_OTHER"]])
    with pytest.raises(DataError, match="not in the CSV") as e:
        _merge(run, data)
    assert "ID_OTHER" in str(e.value) and str(data / "Test.csv") in str(e.value)


def test_an_incomplete_probability_set_writes_nothing(setup):
    run, data, ids = setup
    _write_shards(run, ids, 3, probs=True)
    shard_path(probs_path(run / "submission.csv"), 2, 3).unlink()
    with pytest.raises(DataError, match="shard 2 of 3 is missing") as e:
        _merge(run, data)
    assert "submission_probs.shard2of3.csv" in str(e.value) and "--probs" in str(e.value)
    assert not (run / "submission.csv").exists() and not (run / "submission_probs.csv").exists()


def test_a_stale_probability_set_of_another_count_is_named_not_merged(setup, caplog):
    run, data, ids = setup
    _write_shards(run, ids, 3)
    _csv(shard_path(probs_path(run / "submission.csv"), 0, 2), ["ID", "prob"], [[ids[0], "0.5"]])
    with caplog.at_level("WARNING"):
        made = _merge(run, data)
    assert "probs" not in made and not (run / "submission_probs.csv").exists()
    assert "probability shard file(s) for 2 shards" in caplog.text


@pytest.mark.parametrize("name", ["final/sub.csv", "my runs/sub [v2].csv"])  # spaces and glob characters
def test_merge_into_an_explicit_out(setup, tmp_path, name):
    run, data, ids = setup
    out = tmp_path / name
    out.parent.mkdir()
    for k in range(2):
        _csv(shard_path(out, k, 2), ["ID", "Target"], [[i, "1"] for i in shard_ids(ids, f"{k}/2")])
    assert _merge(run, data, out=str(out))["out"] == str(out) and _ids(out) == ids
    assert not (run / "submission.csv").exists()


def _small_test_set(synth_data: Path, root: Path, n: int) -> tuple[Path, list[str]]:
    """A data folder whose Test.csv holds the first ``n`` test IDs of ``synth_data`` (their files copied)."""
    import shutil

    ids = [r[0] for r in csv.reader(open(synth_data / "Test.csv", encoding="utf-8-sig"))][1:n + 1]
    (root / "test_data").mkdir(parents=True)
    for f in synth_data.iterdir():
        if f.is_file() and f.name != "Test.csv":
            shutil.copy(f, root / f.name)
    for i in ids:
        shutil.copy(synth_data / "test_data" / f"{i}.npy", root / "test_data" / f"{i}.npy")
    (root / "Test.csv").write_text("ID\n" + "".join(f"{i}\n" for i in ids))
    return root, ids


def test_more_shards_than_ids_and_an_all_bad_shard_still_merge(trained_run, tmp_path):
    """N > number of IDs leaves some shards empty, and --skip-bad may drop a shard's every file: each still
    writes its (header-only) file, so --merge-shards finds the whole set."""
    run, synth = trained_run
    data, ids = _small_test_set(synth, tmp_path / "d", 3)
    out = tmp_path / "sub.csv"
    base = {"run": str(run), "data": str(data), "out": str(out), "backend": "torch", "probs": True}
    assert shard_ids(ids, "0/4") == []
    for k in range(4):
        infer_main(make_config(InferConfig, {**base, "shard": f"{k}/4"}))
    assert _ids(shard_path(out, 0, 4)) == [] and _ids(shard_path(probs_path(out), 0, 4)) == []
    assert _merge(run, data, out=str(out))["n"] == 3 and _ids(out) == ids

    (data / "test_data" / f"{ids[2]}.npy").write_bytes(b"truncated")
    made = infer_main(make_config(InferConfig, {**base, "shard": "3/4", "skip_bad": True}))
    assert made["n"] == 0 and made["skipped"] == [ids[2]] and _ids(shard_path(out, 3, 4)) == []
    assert _merge(run, data, out=str(out), skip_bad=True)["n"] == 2 and _ids(out) == ids[:2]


def test_commands_named_for_a_train_split_shard_keep_split_train(trained_run, tmp_path, caplog):
    """Shards of --split train are merged against Train.csv: the merge and rescore commands must say so."""
    import logging

    run, synth = trained_run
    out = tmp_path / "sub.csv"
    with caplog.at_level(logging.INFO, logger="landslide.infer"):
        infer_main(make_config(InferConfig, {"run": str(run), "data": str(synth), "out": str(out), "backend": "torch",
                                             "split": "train", "shard": "0/30"}))
    merge_cmd = next(r.getMessage() for r in caplog.records if "--merge-shards" in r.getMessage())
    assert "--split train" in merge_cmd
    with pytest.raises(DataError, match="shard 1 of 30 is missing") as e:
        _merge(run, synth, out=str(out), split="train")
    assert "--split train --shard 1/30" in str(e.value)


def test_threshold_override_calls_at_the_given_probability(trained_run, tmp_path, caplog):
    """--threshold T: Target = prob >= T, the calibrated threshold named beside it in the log; without it
    the calibrated one. Outside 0-1 (NaN too), or with --merge-shards (calls are made per shard), refused."""
    from landslide.predictor import Predictor

    run, data = trained_run
    calibrated = json.loads((run / "calibration.json").read_text())["threshold"]
    base = {"run": str(run), "data": str(data), "probs": True, "device": "cpu"}
    for t in (None, 0.0, 0.5):
        out = tmp_path / f"sub{t}.csv"
        with caplog.at_level("INFO", logger="landslide.infer"):
            res = infer_main(make_config(InferConfig, {**base, "out": str(out), "threshold": t}))
        want = calibrated if t is None else t
        assert res["threshold"] == want
        probs = {r["ID"]: float(r["prob"]) for r in csv.DictReader(open(tmp_path / f"sub{t}_probs.csv"))}
        calls = {r["ID"]: int(r["Target"]) for r in csv.DictReader(open(out))}
        # the probabilities file is rounded to 6 decimals: a patch within that of the cut could go either way
        assert all(calls[i] == int(p >= want) for i, p in probs.items() if abs(p - want) > 1e-6)
        assert t != 0.0 or set(calls.values()) == {1}  # at 0 every patch is called positive
        said = "(calibrated)" if t is None else f"(--threshold; the calibrated one is {calibrated:.4f})"
        assert f"at threshold {want:.4f} {said}" in caplog.text
    assert Predictor(run, device="cpu", threshold=0.25).threshold == 0.25
    assert Predictor(run, device="cpu").threshold == calibrated
    for bad, match in (({"threshold": 1.5}, "not a probability"), ({"threshold": float("nan")}, "not a probability"),
                       ({"threshold": -0.1}, "not a probability"),
                       ({"threshold": 0.5, "merge_shards": True}, "with --merge-shards: a merge joins calls made")):
        with pytest.raises(ConfigError, match=match):
            infer_main(make_config(InferConfig, {**base, "out": str(tmp_path / "x.csv"), **bad}))
    assert not list(tmp_path.glob("x*.csv"))


def test_shards_record_their_threshold_and_a_mixed_set_is_refused(trained_run, tmp_path, caplog):
    """A shard scored with --threshold T records T beside it (and without, the calibrated one); the merge
    of shards all called at T equals the unsharded submission at T, and a set called at two is refused."""
    from landslide.contract import file_sha256
    from landslide.ensemble import read_run
    from landslide.export.sidecar import run_hash
    from landslide.shards import threshold_path

    run, data = trained_run
    base = {"run": str(run), "data": str(data), "device": "cpu"}
    whole = tmp_path / "whole.csv"
    infer_main(make_config(InferConfig, {**base, "out": str(whole), "threshold": 0.3}))
    out = tmp_path / "sub.csv"
    for k in range(2):
        infer_main(make_config(InferConfig, {**base, "out": str(out), "shard": f"{k}/2", "threshold": 0.3}))
    rec = json.loads(threshold_path(tmp_path / "sub.shard1of2.csv").read_text())
    model = run_hash(read_run(run))  # the model that scored it: the run's checkpoints + calibration
    assert rec == {"threshold": 0.3, "source": "--threshold", "model": model, "runner": rec["runner"],
                   "sha256": file_sha256(tmp_path / "sub.shard1of2.csv")}
    assert rec["runner"].startswith("torch-fused")
    with caplog.at_level("INFO", logger="landslide.shards"):
        made = infer_main(make_config(InferConfig, {**base, "out": str(out), "merge_shards": True}))
    assert made["threshold"] == 0.3 and "called at threshold 0.3000" in caplog.text
    assert out.read_text() == whole.read_text()

    calibrated = json.loads((run / "calibration.json").read_text())["threshold"]
    infer_main(make_config(InferConfig, {**base, "out": str(out), "shard": "1/2"}))  # shard 1 again, calibrated
    with pytest.raises(DataError, match=f"different thresholds \\(shard 0: 0.3000 \\(--threshold\\); shard 1: "
                                        f"{calibrated:.4f} \\(calibrated\\)\\)") as e:
        infer_main(make_config(InferConfig, {**base, "out": str(out), "merge_shards": True}))
    assert "--shard K/2" in str(e.value) and out.read_text() == whole.read_text()  # nothing overwritten
    # A record that no longer matches its file (rewritten since, by hand or by an older version): refused.
    shard1 = tmp_path / "sub.shard1of2.csv"
    shard1.write_text(shard1.read_text().replace(",0\n", ",1\n"))
    with pytest.raises(DataError, match="threshold record does not match sub.shard1of2.csv") as e:
        infer_main(make_config(InferConfig, {**base, "out": str(out), "merge_shards": True}))
    assert "--shard 1/2" in str(e.value)
    # Some shards recorded and some not (killed between the two writes, or an older version): refused too.
    threshold_path(shard1).unlink()
    with pytest.raises(DataError, match=r"shard\(s\) \[1\] record no threshold"):
        infer_main(make_config(InferConfig, {**base, "out": str(out), "merge_shards": True}))
    threshold_path(tmp_path / "sub.shard0of2.csv").unlink()  # none recorded: a set from before the records
    assert infer_main(make_config(InferConfig, {**base, "out": str(out), "merge_shards": True}))["threshold"] is None
    for bad in ('{"threshold": true}', '{"threshold": NaN}', '{"threshold": "0.3"}', "[]"):
        threshold_path(shard1).write_text(bad)
        with pytest.raises(DataError, match="cannot read the shard's threshold record"):
            infer_main(make_config(InferConfig, {**base, "out": str(out), "merge_shards": True}))



def test_shards_scored_by_different_models_are_refused(trained_run, tmp_path, caplog):
    """Shards scored on several hosts must come from one model: a record naming another run's hash (here
    written by hand, as a shard scored from another run or a stale export would record it) is refused;
    one model scored by two backends merges, and the log says which."""
    from landslide.shards import threshold_path

    run, data = trained_run
    base = {"run": str(run), "data": str(data), "device": "cpu", "out": str(tmp_path / "sub.csv")}
    for k in range(2):
        infer_main(make_config(InferConfig, {**base, "shard": f"{k}/2"}))
    rec_path = threshold_path(tmp_path / "sub.shard1of2.csv")
    rec = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**rec, "runner": "onnxruntime-fused (fused.onnx, precision=fp32)"}))
    with caplog.at_level("INFO", logger="landslide.shards"):
        assert infer_main(make_config(InferConfig, {**base, "merge_shards": True}))["shards"] == 2
    assert "one model, scored by onnxruntime-fused" in caplog.text
    rec_path.write_text(json.dumps({**rec, "model": "0123456789abcdef"}))
    with pytest.raises(DataError, match="scored by different models") as e:
        infer_main(make_config(InferConfig, {**base, "merge_shards": True}))
    assert f"shard 0: model {rec['model']}" in str(e.value) and "shard 1: model 0123456789abcdef" in str(e.value)
    assert "--shard K/2" in str(e.value)
