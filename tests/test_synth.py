"""The synthetic-set writer (``python -m landslide.synth OUT``) never replaces a data set it was pointed at by mistake."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from landslide import synth
from landslide.utils import run_script


def _ids(path):
    with open(path, newline="") as f:
        return [r["ID"] for r in csv.DictReader(f)]


def test_a_folder_holding_a_set_is_refused_unless_forced_and_no_patch_file_is_overwritten(tmp_path, capsys):
    data = tmp_path / "mine"
    (data / "train_data").mkdir(parents=True)
    (data / "Train.csv").write_bytes(b"ID,label\r\nID_REAL01,1\r\n")
    real = np.full((64, 64, 12), 7.0)
    np.save(data / "train_data" / "ID_REAL01.npy", real)

    assert run_script(synth.main, [str(data), "--n-train", "3", "--n-test", "2"]) == 2
    err = capsys.readouterr().err
    assert "already holds a data set (Train.csv)" in err and "--force" in err and str(data) in err
    assert (data / "Train.csv").read_bytes() == b"ID,label\r\nID_REAL01,1\r\n"
    assert not (data / "test_data").exists()  # refused before anything was written

    # The generator draws IDs from its seed; one taken by a file already there is skipped, not overwritten.
    first = synth._ids(np.random.default_rng(0), 1, set())[0]
    np.save(data / "train_data" / f"{first}.npy", real)
    assert run_script(synth.main, [str(data), "--n-train", "3", "--n-test", "2", "--force"]) == 0
    ids = _ids(data / "Train.csv")
    assert len(ids) == 3 and first not in ids and len(_ids(data / "Test.csv")) == 2
    for id_ in ("ID_REAL01", first):
        np.testing.assert_array_equal(np.load(data / "train_data" / f"{id_}.npy"), real)


@pytest.mark.parametrize("flags", [["--n-train", "0"], ["--n-train", "-5"], ["--n-test", "0"]])
def test_an_empty_or_negative_split_is_refused(tmp_path, capsys, flags):
    assert run_script(synth.main, [str(tmp_path / "d"), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} {flags[1]}" in err and "1 or more" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_a_file_as_the_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert run_script(synth.main, [str(tmp_path / "f"), "--n-train", "2", "--n-test", "1"]) == 2
    assert "is a file" in capsys.readouterr().err
