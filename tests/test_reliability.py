"""Reliability: user errors are one clear message (exit 2, no traceback, earlier outputs intact);
a training killed with SIGKILL resumes from its last finished epoch and ends where an uninterrupted
run ends; property-based tests on the CSV reader and the patch loader."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from landslide.data import load_patch, read_csv
from landslide.errors import LandslideError

from conftest import ROOT, run_script, write_zindi

HYPOTHESIS_EXAMPLES = 200


# ---------------------------------------------------------------- bad input through the real CLI
def _assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert any(line.startswith("error: ") for line in err)
    for n in needles:
        assert n in r.stderr, (n, r.stderr[-2000:])


@pytest.mark.parametrize("breakage,needles", [
    ("missing", ["ID_TR0002", "patch file is missing", "Fix:"]),
    ("truncated", ["ID_TR0002", "cannot read .npy", "Fix:"]),
    ("shape", ["ID_TR0002", "shape (64, 32, 12)", "Fix:"]),
    ("nan", ["ID_TR0002", "NaN/Inf", "Fix:", "then train again"]),
    ("dtype", ["ID_TR0002", "not a real number type", "Fix:"]),
    ("dup", ["duplicate ID", "Train.csv", "Fix:"]),
    ("label", ["label '3' is not 0 or 1", "Fix:"]),
    ("empty", ["CSV is empty", "Fix:"]),
    ("bands", ["unknown band name", "bands.txt", "Fix:"]),
    ("channels", ["12 channels but bands.txt declares 4", "Fix:"]),
    ("default_channels", ["3 channels but the default layout has 12 bands (no bands.txt beside the CSV)",
                          "add a bands.txt beside the CSV listing the file's 3 bands in channel order"]),
])
def test_train_cli_bad_input(tmp_path, breakage, needles):
    d = write_zindi(tmp_path / "d", n_train=6, n_test=2)
    f = d / "train_data" / "ID_TR0002.npy"
    csv_path = d / "Train.csv"
    if breakage == "missing":
        f.unlink()
    elif breakage == "truncated":
        f.write_bytes(f.read_bytes()[:500])
    elif breakage == "shape":
        np.save(f, np.zeros((64, 32, 12)))
    elif breakage == "nan":
        a = np.load(f)
        a[3, 3, 3] = np.nan
        np.save(f, a)
    elif breakage == "dtype":
        np.save(f, np.full((64, 64, 12), "x"))
    elif breakage == "dup":
        csv_path.write_text(csv_path.read_text() + "ID_TR0001,0\n")
    elif breakage == "label":
        csv_path.write_text("ID,label\nID_TR0000,3\n")
    elif breakage == "empty":
        csv_path.write_text("")
    elif breakage == "bands":
        (d / "bands.txt").write_text("red\nswir1\n")
    elif breakage == "channels":
        (d / "bands.txt").write_text("red\ngreen\nblue\nnir\n")
    elif breakage == "default_channels":
        np.save(f, np.zeros((64, 64, 3)))
    out = tmp_path / "run"
    r = run_script("train.py", "--data", str(d), "--out", str(out), "--preset", "tiny", "--cache-dir", str(tmp_path / "c"))
    _assert_user_error(r, *needles)
    assert not any(line.startswith(".") for line in r.stderr.splitlines())  # no "\n. Fix:" after a file list
    if "bad patch file(s)" in r.stderr:  # training has no --skip-bad: its fix must not offer one
        assert "--skip-bad" not in r.stderr and "scor" not in r.stderr.split("error: ")[1]


def test_infer_fails_before_compute_naming_every_bad_file_and_keeps_old_submission(trained_run, tmp_path):
    run, data = trained_run
    bad = write_zindi(tmp_path / "bad", n_train=4, n_test=6)
    (bad / "test_data" / "ID_TE0001.npy").unlink()
    np.save(bad / "test_data" / "ID_TE0004.npy", np.zeros((64, 64, 3)))
    out = tmp_path / "sub.csv"
    out.write_text("ID,Target\nprevious,1\n")
    r = run_script("infer.py", str(run), "--data", str(bad), "--out", str(out))
    _assert_user_error(r, "2 bad patch file(s)", "ID_TE0001", "ID_TE0004", "--skip-bad")
    assert out.read_text() == "ID,Target\nprevious,1\n"  # untouched
    r = run_script("infer.py", str(run), "--data", str(bad), "--out", str(out), "--skip-bad")
    assert r.returncode == 0, r.stderr
    ids = [row[0] for row in csv.reader(open(out))][1:]
    assert len(ids) == 4 and "ID_TE0001" not in ids and "skipped" in r.stderr and "ID_TE0004" in r.stderr
    # ...and says the file is short of rows, and that it replaced the one there.
    assert "sub.csv holds 4 of the 6 IDs, so it is not a complete submission" in r.stderr
    assert "replacing the one there" in r.stderr


def test_infer_lists_header_and_value_errors_in_one_message(trained_run, tmp_path):
    # A wrong shape is found by the header check, a NaN only in the values: both in the first run's error.
    run, _ = trained_run
    bad = write_zindi(tmp_path / "bad", n_train=2, n_test=6)
    np.save(bad / "test_data" / "ID_TE0004.npy", np.zeros((64, 64, 3)))
    x = np.load(bad / "test_data" / "ID_TE0001.npy")
    x[5, 5, 5] = np.nan
    np.save(bad / "test_data" / "ID_TE0001.npy", x)
    r = run_script("infer.py", str(run), "--data", str(bad))
    _assert_user_error(r, "2 bad patch file(s), one line per file:")
    err = r.stderr[r.stderr.index("error: "):].splitlines()
    assert "ID ID_TE0001: 1 NaN/Inf value(s)" in err[1] and "ID ID_TE0004: 3 channels but the default layout" in err[2]
    assert err[3] == (f"Fix: fix these files or remove their rows from {bad / 'Test.csv'}, then score again, "
                      "or pass --skip-bad to score the rest (no submission was written)") and len(err) == 4
    assert not (run / "submission.csv").exists()


def test_infer_names_bad_values_found_in_different_batches(trained_run, tmp_path):
    """Values are read batch by batch: a NaN in the first batch must not stop the reading of the rest."""
    run, _ = trained_run
    bad = write_zindi(tmp_path / "bad", n_train=2, n_test=6)
    for id_ in ("ID_TE0000", "ID_TE0005"):  # batches 1 and 3 at --batch-size 2
        x = np.load(bad / "test_data" / f"{id_}.npy")
        x[1, 2, 3] = np.inf
        np.save(bad / "test_data" / f"{id_}.npy", x)
    r = run_script("infer.py", str(run), "--data", str(bad), "--batch-size", "2")
    _assert_user_error(r, "2 bad patch file(s)", "ID ID_TE0000: 1 NaN/Inf", "ID ID_TE0005: 1 NaN/Inf")


def test_infer_refuses_data_with_other_bands(trained_run, tmp_path):
    run, _ = trained_run
    rgb = write_zindi(tmp_path / "rgb", n_train=2, n_test=2, channels=3, bands=["red", "green", "blue"])
    r = run_script("infer.py", str(run), "--data", str(rgb))
    _assert_user_error(r, "trained on bands", "bands.txt", "Fix:")


def test_infer_refuses_a_corrupt_checkpoint(trained_run, tmp_path):
    import shutil

    run, data = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ck = copy / "fold1" / "test_efficientnet.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    r = run_script("infer.py", str(copy), "--data", str(data))
    _assert_user_error(r, "cannot read checkpoint", "test_efficientnet.pt",
                       f"delete it and train that fold again: python train.py --out {copy} --resume --only-folds 1")
    # Following the fix: the fold's state says "done", but with its checkpoint gone it is trained again
    # (not "reused" with OOF rows alone), and the run scores.
    ck.unlink()
    r = run_script("train.py", "--out", str(copy), "--resume", "--only-folds", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "checkpoint" in r.stderr and "is missing: training the fold again" in r.stderr
    assert ck.is_file()
    r = run_script("infer.py", str(copy), "--data", str(data), "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 0, r.stderr[-2000:]


def test_resume_refuses_a_corrupt_fold_state_and_its_fix_trains_the_fold_again(trained_run, tmp_path):
    import shutil

    run, data = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state, ck = copy / "fold1" / "test_efficientnet.state.pt", copy / "fold1" / "test_efficientnet.pt"
    state.write_bytes(state.read_bytes()[:64])
    fix = f"delete it, and {ck.name} beside it, then train that fold again from epoch 1: python train.py --out {copy} " \
          "--resume --only-folds 1"
    for folds in ([], ["--only-folds", "0"]):  # fold 1 trained here / read by the driver as "finished elsewhere?"
        r = run_script("train.py", "--out", str(copy), "--resume", *folds)
        _assert_user_error(r, f"file {state}: cannot read fold 1's training state", fix)
    state.unlink()
    ck.unlink()
    r = run_script("train.py", "--out", str(copy), "--resume", "--only-folds", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert ck.is_file() and (copy / "calibration.json").is_file()


def test_train_refuses_to_overwrite_a_run(trained_run, tmp_path):
    run, data = trained_run
    before = (run / "calibration.json").read_text()
    r = run_script("train.py", "--data", str(data), "--out", str(run), "--preset", "tiny")
    _assert_user_error(r, "already holds a run", "--resume")
    assert (run / "calibration.json").read_text() == before


def test_explicit_gpu_request_on_cpu_host_fails_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("host has a GPU")
    d = write_zindi(tmp_path / "d", n_train=6, n_test=2)
    r = run_script("train.py", "--data", str(d), "--out", str(tmp_path / "r"), "--device", "cuda")
    _assert_user_error(r, "no CUDA GPU")
    r = run_script("train.py", "--data", str(d), "--out", str(tmp_path / "r"), "--precision", "fp16")
    _assert_user_error(r, "fp16 needs a CUDA GPU")


# ---------------------------------------------------------------- interruption and resume
RESUME_ARGS = ["--preset", "tiny", "--epochs", "4", "--max-steps", "4", "--patience", "10", "--only-folds", "0",
               "--deterministic", "--device", "cpu"]  # bit-equality is promised on the CPU


def _train_cmd(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
            *RESUME_ARGS, *extra]


def _metrics(run: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return [{k: v for k, v in r.items() if k not in ("epoch_s", "samples_per_s")} for r in rows]


def test_sigkill_then_resume_matches_uninterrupted(synth_data, tmp_path):
    cache = tmp_path / "cache"
    ref = tmp_path / "ref"
    r = subprocess.run(_train_cmd(synth_data, ref, cache), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr

    run = tmp_path / "killed"
    state = run / "fold0" / "test_efficientnet.state.pt"
    p = subprocess.Popen(_train_cmd(synth_data, run, cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if state.exists():
            time.sleep(0.3)  # into the second epoch
            break
        time.sleep(0.05)
    assert p.poll() is None, "training finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # Whatever is visible is whole: every checkpoint/state loads, every CSV parses.
    for f in [*run.rglob("*.pt"), *run.rglob("*.staged")]:  # a staged best checkpoint is whole too
        torch.load(f, weights_only=False)
    for f in run.rglob("*.csv"):
        list(csv.reader(open(f)))
    assert not (run / "calibration.json").exists()

    r = subprocess.run(_train_cmd(synth_data, run, cache, "--resume"), cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming after epoch" in r.stderr
    assert not list(run.rglob(".*.tmp"))
    assert _metrics(run) == _metrics(ref)
    a = torch.load(run / "fold0" / "test_efficientnet.pt", weights_only=False)["state_dict"]
    b = torch.load(ref / "fold0" / "test_efficientnet.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(synth_data, tmp_path):
    run = tmp_path / "run"
    state = run / "fold0" / "test_efficientnet.state.pt"
    cmd = _train_cmd(synth_data, run, tmp_path / "cache")
    cmd[cmd.index("--epochs") + 1] = "200"  # still training when the signal comes
    # A shell without job control starts background jobs (`make test &`) with SIGINT ignored, and Python keeps
    # an inherited SIG_IGN: the child gets the default back, as a terminal's Ctrl-C would find it.
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not state.exists():
        time.sleep(0.1)
    assert p.poll() is None, "training ended before the signal"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    assert f"continue with: python train.py --out {run} --resume --only-folds 0" in err  # RESUME_ARGS: fold 0 only
    assert state.is_file() and not list(run.rglob(".*.tmp"))


def test_resume_of_a_folder_without_a_run_is_refused_before_any_data_is_read(synth_data, tmp_path):
    typo = tmp_path / "runs" / "fulll"
    r = run_script("train.py", "--data", str(synth_data), "--out", str(typo), "--preset", "tiny", "--resume")
    _assert_user_error(r, f"--resume: {typo} holds no run to continue (no config.json)", "drop --resume")
    assert not typo.exists()  # nothing started there


def test_resume_with_different_config_is_refused(trained_run):
    run, data = trained_run
    r = run_script("train.py", "--data", str(data), "--out", str(run), "--preset", "tiny", "--lr", "0.5", "--resume")
    _assert_user_error(r, "--resume may change how a run runs, not what it trains: --lr 0.5 (the run has --lr 0.001)",
                       "drop --lr (or the --preset/--config that sets it: --resume needs only --out")


# ---------------------------------------------------------------- property-based
_settings = settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_settings
@given(st.binary(max_size=300))
def test_csv_reader_never_crashes_on_arbitrary_bytes(tmp_path, blob):
    p = tmp_path / "Train.csv"
    p.write_bytes(blob)
    try:
        t = read_csv(p, labelled=True)
    except LandslideError:
        return
    assert len(t.ids) == len(set(t.ids)) == len(t.labels) and set(t.labels.tolist()) <= {0, 1}


@_settings
@given(st.lists(st.tuples(st.text(alphabet="ABCDEFGHIJ0123456789_", min_size=1, max_size=8),
                          st.sampled_from(["0", "1"])), min_size=1, max_size=20, unique_by=lambda r: r[0]),
       st.booleans(), st.booleans())
def test_csv_reader_round_trips_valid_tables(tmp_path, rows, crlf, bom):
    nl = "\r\n" if crlf else "\n"
    text = nl.join(["ID,label", *[f"{i},{lab}" for i, lab in rows]]) + nl
    p = tmp_path / "Train.csv"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    t = read_csv(p, labelled=True)
    assert t.ids == [i for i, _ in rows] and t.labels.tolist() == [int(lab) for _, lab in rows]


_dtypes = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                    hnp.complex_number_dtypes(), hnp.boolean_dtypes())


@_settings
@given(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=70)))
def test_loader_loads_or_raises_own_error(tmp_path, arr):
    p = tmp_path / "ID_P.npy"
    np.save(p, arr)
    try:
        out = load_patch(p, "ID_P", 12)
    except LandslideError as e:
        assert "ID_P" in str(e)
        return
    assert out.shape == (64, 64, 12) and out.dtype == np.float32 and np.isfinite(out).all()


@_settings
@given(st.integers(0, 3000), st.integers(0, 255))
def test_loader_on_corrupted_bytes(tmp_path, cut, fill):
    p = tmp_path / "ID_C.npy"
    np.save(p, np.ones((64, 64, 12), np.float32))
    raw = bytearray(p.read_bytes())
    raw[min(cut, len(raw) - 1)] = fill
    p.write_bytes(bytes(raw[: max(cut, 10)] if fill % 2 else raw))
    try:
        out = load_patch(p, "ID_C", 12)
    except LandslideError:
        return
    # What loads is finite (a byte making a NaN/Inf is refused); a byte changed in the data, past the
    # header (where '<' -> '>' would reread every value), changes one float32 value at most.
    assert out.shape == (64, 64, 12) and np.isfinite(out).all()
    if min(cut, len(raw) - 1) >= len(raw) - 64 * 64 * 12 * 4:
        assert (out != 1.0).sum() <= 1


def test_errors_survive_pickling_with_their_message_and_fields():
    # Under torchrun rank 0's error is broadcast (pickled) to the other ranks, which re-raise it.
    import pickle

    from landslide.errors import BadFilesError, ConfigError, DataError

    bad = BadFilesError([DataError("NaN values", file="a.npy", id="ID_1", fix="re-export it")], fix="fix them")
    cfg = ConfigError("--shard x", fix="write i/n")
    for e in (bad, cfg):
        r = pickle.loads(pickle.dumps(e))
        assert type(r) is type(e) and str(r) == str(e) and r.fix == e.fix and r.problem == e.problem
    assert pickle.loads(pickle.dumps(bad)).errors[0].id == "ID_1"


def test_outputs_get_the_mode_a_plain_open_would(tmp_path):
    import os
    import stat

    from landslide.io import atomic_write

    umask = os.umask(0)
    os.umask(umask)
    with atomic_write(tmp_path / "out.csv") as f:
        f.write("ID,Target\n")
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o666 & ~umask


def test_atomic_write_keeps_the_old_file_until_done_and_after_a_failure(tmp_path):
    """Readers see the old content while a write runs; a write that raises leaves the old file and no
    temp file behind."""
    from landslide.io import atomic_write

    p = tmp_path / "submission.csv"
    p.write_text("old")
    ino = p.stat().st_ino
    with atomic_write(p) as f:
        f.write("new")
        f.flush()
        assert p.read_text() == "old"
    assert p.read_text() == "new"
    assert p.stat().st_ino != ino  # a rename onto the path, not the old file rewritten in place
    with pytest.raises(RuntimeError, match="cut off"):
        with atomic_write(p) as f:
            f.write("partial")
            raise RuntimeError("cut off")
    assert p.read_text() == "new" and sorted(x.name for x in tmp_path.iterdir()) == ["submission.csv"]


def test_a_mistyped_path_is_named_with_check_the_path(tmp_path):
    """A --data or run folder that does not exist says so (not "train first", not "pass --data")."""
    r = run_script("train.py", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--preset", "tiny")
    _assert_user_error(r, "data folder not found", str(tmp_path / "nope"), "check the path")
    assert not (tmp_path / "r").exists()
    r = run_script("export.py", str(tmp_path / "runs" / "typo"))
    _assert_user_error(r, "run folder not found", str(tmp_path / "runs" / "typo"), "check the path")
    r = run_script("infer.py", str(tmp_path / "runs" / "typo"), "--data", str(tmp_path / "nope"))
    _assert_user_error(r, "data folder not found", str(tmp_path / "nope"), "check the path")  # as train says it


def test_infer_refuses_an_out_that_is_a_folder_before_scoring(trained_run, tmp_path, monkeypatch):
    import landslide.infer as infer
    from landslide.config import make_config
    from landslide.errors import ConfigError

    run, data = trained_run
    monkeypatch.setattr(infer, "make_runner", lambda *a, **k: pytest.fail("a runner built before the output path was checked"))
    (tmp_path / "outdir").mkdir()
    (tmp_path / "sub_probs.csv").mkdir()  # what --probs would write beside --out sub.csv
    (tmp_path / "afile").write_text("x")
    outdir = tmp_path / "outdir"
    for out, extra, said, fix in (
            (outdir, {}, "--out names a folder", f"name the file: --out {outdir / 'submission.csv'}"),
            (outdir, {"shard": "1/2"}, "--out names a folder", f"name the file: --out {outdir / 'submission.csv'}"),
            (tmp_path / "sub.csv", {"probs": True}, "a folder stands where infer writes sub_probs.csv",
             "move or rename that folder"),
            (tmp_path / "afile" / "sub.csv", {}, "is a file", "pick --out in a folder"),
            (outdir, {"merge_shards": True}, "--out names a folder", f"name the file: --out {outdir / 'submission.csv'}")):
        cfg = make_config(infer.InferConfig, {"run": str(run), "data": str(data), "out": str(out), "device": "cpu",
                                              **extra})
        with pytest.raises(ConfigError, match=said) as e:
            infer.main(cfg)
        assert f"Fix: {fix}" in str(e.value)
