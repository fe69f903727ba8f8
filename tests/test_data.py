"""Loaders, their errors (one message naming file, ID and fix), and the preprocessed cache."""
import numpy as np
import pytest
import torch

from landslide.bands import BandLayout
from landslide.data import load_patch, load_patches, load_split, patch_dir, read_csv
from landslide.errors import BadFilesError, DataError

from conftest import write_zindi


def test_crlf_and_bom_are_accepted(tmp_path):
    d = write_zindi(tmp_path / "d", crlf=True, bom=True)
    t = read_csv(d / "Train.csv", labelled=True)
    assert t.ids[0] == "ID_TR0000" and len(t.ids) == 24
    assert set(t.labels.tolist()) == {0, 1}


@pytest.mark.parametrize("content,msg", [
    (b"", "empty"),
    (b"ID,label\r\n", "no rows"),
    (b"ID,target\nID_A,1\n", "lacks column"),
    (b"ID,label\nID_A,1\nID_A,0\n", "duplicate ID"),
    (b"ID,label\nID_A,2\n", "not 0 or 1"),
    (b"ID,label\nID_A,yes\n", "not 0 or 1"),
    (b"ID,label\nID_A\n", "field"),
    (b"ID,label\n../etc,1\n", "invalid ID"),
    (b"ID,label\n\xff\xfe,1\n", "UTF-8"),
])
def test_bad_csvs(tmp_path, content, msg):
    p = tmp_path / "Train.csv"
    p.write_bytes(content)
    with pytest.raises(DataError, match=msg) as e:
        read_csv(p, labelled=True)
    assert "Train.csv" in str(e.value) and "Fix:" in str(e.value)


def test_float_labels_read_as_their_class(tmp_path):
    p = tmp_path / "Train.csv"
    p.write_bytes(b"ID,label\nID_A,1.0\nID_B,0.0\nID_C,1\nID_D,0\n")
    assert read_csv(p, labelled=True).labels.tolist() == [1, 0, 1, 0]


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match="CSV not found") as e:
        read_csv(tmp_path / "Train.csv", labelled=True)
    assert "point --data at a folder holding Train.csv/Test.csv" in e.value.fix
    # --data given one level too deep (the patch folder): the fix names the folder that holds the CSV.
    (tmp_path / "Test.csv").write_text("ID\nID_A\n")
    (tmp_path / "test_data").mkdir()
    with pytest.raises(DataError, match="CSV not found") as e:
        read_csv(tmp_path / "test_data" / "Test.csv", labelled=False)
    assert e.value.fix == f"--data {tmp_path} (it holds Test.csv)"


def _save(tmp_path, arr, name="ID_X.npy"):
    p = tmp_path / name
    np.save(p, arr)
    return p


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int64", "float16", "float32", "float64"])
def test_any_real_dtype_loads_as_float32(tmp_path, dtype):
    values = (np.arange(64 * 64 * 12) % 200).reshape(64, 64, 12)  # exact in every listed dtype
    p = _save(tmp_path, values.astype(dtype))
    out = load_patch(p, "ID_X", 12)
    assert out.dtype == np.float32 and out.shape == (64, 64, 12)
    np.testing.assert_array_equal(out, values.astype(np.float32))


@pytest.mark.parametrize("arr,msg", [
    (np.zeros((64, 64), np.float32), "shape"),
    (np.zeros((12, 64, 64), np.float32), "shape"),
    (np.zeros((64, 64, 3), np.float32), r"3 channels but the default layout has 12 bands \(no bands.txt beside"),
    (np.full((64, 64, 12), np.nan, np.float32), "NaN/Inf"),
    (np.full((64, 64, 12), np.inf), "NaN/Inf"),
    (np.full((64, 64, 12), 1e300), "NaN/Inf"),  # overflows float32
    (np.zeros((64, 64, 12), np.complex64), "not a real number type"),
    (np.array(["a"] * 12), "not a real number type"),
    (np.ones((64, 64, 12), bool), r"dtype bool holds True/False \(a mask\?\), not band values"),
])
def test_bad_patches(tmp_path, arr, msg):
    p = _save(tmp_path, arr)
    with pytest.raises(DataError, match=msg) as e:
        load_patch(p, "ID_X", 12)
    assert "ID_X" in str(e.value) and str(p) in str(e.value) and "Fix:" in str(e.value)


def test_a_channels_first_patch_is_told_how_to_turn_it(tmp_path):
    p = _save(tmp_path, np.zeros((12, 64, 64), np.float32))
    with pytest.raises(DataError, match=r"shape \(12, 64, 64\) is not \(64, 64, C\)") as e:
        load_patch(p, "ID_X", 12)
    assert e.value.fix.endswith("this one is channels first: save np.moveaxis(patch, 0, -1) instead")
    p = _save(tmp_path, np.zeros((64, 32, 12), np.float32))
    with pytest.raises(DataError) as e:
        load_patch(p, "ID_X", 12)
    assert "channels first" not in e.value.fix


def test_a_folder_where_the_patch_should_be_is_not_called_missing(tmp_path):
    (tmp_path / "ID_X.npy").mkdir()
    with pytest.raises(DataError, match="is a folder, not a .npy file") as e:
        load_patch(tmp_path / "ID_X.npy", "ID_X", 12)
    assert e.value.id == "ID_X" and "put the patch's .npy file there" in e.value.fix
    with pytest.raises(DataError, match="patch file is missing"):
        load_patch(tmp_path / "ID_Y.npy", "ID_Y", 12)


def test_truncated_and_corrupt_files(tmp_path):
    p = _save(tmp_path, np.zeros((64, 64, 12), np.float32))
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match="cannot read .npy"):
        load_patch(p, "ID_X", 12)
    p.write_bytes(b"not a numpy file at all")
    with pytest.raises(DataError, match="cannot read .npy"):
        load_patch(p, "ID_X", 12)


def test_object_array_is_refused_without_unpickling(tmp_path):
    p = tmp_path / "ID_X.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects") as e:
        load_patch(p, "ID_X", 12)
    assert "ID_X" in str(e.value) and "np.save" in e.value.fix and "re-download" not in e.value.fix


def test_every_bad_file_is_named_at_once(zindi):
    folder = patch_dir(zindi, "test")
    (folder / "ID_TE0001.npy").unlink()
    np.save(folder / "ID_TE0003.npy", np.zeros((64, 64, 5)))
    ids = [f"ID_TE{i:04d}" for i in range(8)]
    with pytest.raises(BadFilesError) as e:
        load_patches(zindi, "test", ids, BandLayout())
    msg = str(e.value)
    assert "2 bad patch file(s)" in msg and "ID_TE0001" in msg and "ID_TE0003" in msg
    assert msg.endswith(f"Fix: fix these files or remove their rows from {zindi / 'Test.csv'}, then run again")
    x, ok, skipped = load_patches(zindi, "test", ids, BandLayout(), skip_bad=True)
    assert x.shape == (6, 64, 64, 12) and len(ok) == 6 and {s.id for s in skipped} == {"ID_TE0001", "ID_TE0003"}


def test_nested_layout_is_found(tmp_path):
    d = write_zindi(tmp_path / "d", nested=True)
    s = load_split(d, "train", cache_dir=tmp_path / "c")
    assert s.x.shape == (24, 12, 64, 64)


def test_flat_patches_win_over_a_nested_folder_beside_them(tmp_path):
    """Patches in train_data/ itself are the data; a nested train_data/train_data/ is used only when the
    outer folder holds none (the official zip's layout)."""
    d = write_zindi(tmp_path / "d")
    (d / "train_data" / "train_data").mkdir()
    assert patch_dir(d, "train") == d / "train_data"
    n = write_zindi(tmp_path / "n", nested=True)
    assert patch_dir(n, "train") == n / "train_data" / "train_data"


def test_bands_file_subset(tmp_path):
    d = write_zindi(tmp_path / "d", channels=3, bands=["red", "green", "blue"], dtype="uint8")
    s = load_split(d, "train", cache_dir=tmp_path / "c")
    assert s.layout.names == ("red", "green", "blue") and s.x.shape[1] == 3


def test_channel_count_disagreeing_with_bands_file(tmp_path):
    d = write_zindi(tmp_path / "d", channels=12, bands=["red", "green", "blue"])
    with pytest.raises(BadFilesError, match="12 channels but bands.txt declares 3"):
        load_split(d, "train", cache_dir=tmp_path / "c")


def test_channel_message_names_where_the_band_count_comes_from(tmp_path):
    # Without bands.txt the count is the default layout's, and the fix is to add one, not to "match" it.
    d = write_zindi(tmp_path / "d", n_train=2, n_test=2)
    np.save(patch_dir(d, "test") / "ID_TE0001.npy", np.zeros((64, 64, 3), np.float32))
    with pytest.raises(BadFilesError) as e:
        load_patches(d, "test", ["ID_TE0000", "ID_TE0001"], BandLayout.from_dir(d))
    line = str(e.value).splitlines()[1]
    assert "ID_TE0001" in line and "3 channels but the default layout has 12 bands (no bands.txt beside the CSV)" in line
    assert "add a bands.txt beside the CSV listing the file's 3 bands in channel order" in line
    assert "bands.txt declares" not in str(e.value)
    (d / "bands.txt").write_text("red\ngreen\n")
    np.save(patch_dir(d, "test") / "ID_TE0000.npy", np.zeros((64, 64, 2), np.float32))
    with pytest.raises(BadFilesError) as e:
        load_patches(d, "test", ["ID_TE0000", "ID_TE0001"], BandLayout.from_dir(d))
    assert "3 channels but bands.txt declares 2" in str(e.value) and str(d / "bands.txt") in str(e.value)
    assert "default layout" not in str(e.value)


def test_bad_files_message_is_one_line_per_file_then_the_fix():
    errors = [DataError("cannot read .npy (ValueError: two\nlines)", file="a.npy", id="ID_A", fix="re-extract it"),
              DataError("patch file is missing", file="b.npy", id="ID_B", fix="restore it")]
    lines = str(BadFilesError(errors, fix="fix them, then run again")).splitlines()
    assert lines[0] == "2 bad patch file(s), one line per file:"
    assert lines[1].startswith("  - file a.npy, ID ID_A: ") and lines[1].endswith("Fix: re-extract it")
    assert lines[2] == "  - file b.npy, ID ID_B: patch file is missing. Fix: restore it"
    assert lines[3] == "Fix: fix them, then run again" and len(lines) == 4


def test_a_fix_every_bad_file_shares_is_said_once():
    errors = [DataError("patch file is missing", file=f"{c}.npy", id=f"ID_{c}", fix="restore it") for c in "ABC"]
    lines = str(BadFilesError(errors, fix="fix them, then run again")).splitlines()
    assert lines[1:4] == [f"  - file {c}.npy, ID ID_{c}: patch file is missing" for c in "ABC"]
    assert lines[4:] == ["Each file: restore it", "Fix: fix them, then run again"]
    assert [e.fix for e in errors] == ["restore it"] * 3  # the errors themselves keep their fix
    one = str(BadFilesError(errors[:1], fix="fix it")).splitlines()  # a single file: its fix stays on its line
    assert one[1] == "  - file A.npy, ID ID_A: patch file is missing. Fix: restore it" and len(one) == 3


def test_training_reports_every_bad_file_with_a_training_fix(tmp_path):
    d = write_zindi(tmp_path / "d", n_train=6, n_test=2)
    folder = patch_dir(d, "train")
    np.save(folder / "ID_TR0001.npy", np.zeros((64, 32, 12)))
    x = np.load(folder / "ID_TR0004.npy")
    x[1, 2, 3] = np.nan
    np.save(folder / "ID_TR0004.npy", x)
    (folder / "ID_TR0005.npy").unlink()
    with pytest.raises(BadFilesError) as e:
        load_split(d, "train", cache_dir=tmp_path / "c")
    msg = str(e.value)
    assert msg.startswith("3 bad patch file(s)")
    assert [line.split(", ID ")[1].split(":")[0] for line in msg.splitlines()[1:4]] == ["ID_TR0001", "ID_TR0004",
                                                                                        "ID_TR0005"]
    assert msg.splitlines()[-1] == f"Fix: fix these files or remove their rows from {d / 'Train.csv'}, then train again"
    assert "scor" not in msg and "--skip-bad" not in msg  # nothing that only inference has


def test_cache_is_reused_and_rebuilt_on_change(tmp_path, caplog):
    d = write_zindi(tmp_path / "d")
    cache = tmp_path / "c"
    caplog.set_level("INFO")
    a = load_split(d, "train", cache_dir=cache)
    assert len(list(cache.glob("train-*.pt"))) == 1
    caplog.clear()
    b = load_split(d, "train", cache_dir=cache)
    assert "cache hit" in caplog.text and torch.equal(a.x, b.x) and b.ids == a.ids
    # Another folder's set has a cache file of its own.
    other = write_zindi(tmp_path / "other")
    other_x = load_split(other, "train", cache_dir=cache).x
    assert len(list(cache.glob("train-*.pt"))) == 2
    # Changing a patch changes the key: new values, and the new file replaces this folder's stale one.
    before = set(cache.glob("train-*.pt"))
    f = patch_dir(d, "train") / "ID_TR0000.npy"
    np.save(f, np.full((64, 64, 12), 7.0))
    caplog.clear()
    c = load_split(d, "train", cache_dir=cache)
    assert "cache hit" not in caplog.text and float(c.x[0, 0].mean()) == 7.0
    after = set(cache.glob("train-*.pt"))
    assert len(after) == 2 and len(after & before) == 1  # the other folder's file is kept
    caplog.clear()
    assert torch.equal(load_split(other, "train", cache_dir=cache).x, other_x) and "cache hit" in caplog.text


def test_cached_tensor_is_median_filtered_on_sar_only(tmp_path):
    d = write_zindi(tmp_path / "d", n_train=3)
    s = load_split(d, "train", cache_dir=tmp_path / "c")
    raw = np.load(patch_dir(d, "train") / "ID_TR0000.npy").astype(np.float32).transpose(2, 0, 1)
    assert np.array_equal(s.x[0, :4].numpy(), raw[:4])          # optical untouched
    assert not np.array_equal(s.x[0, 4:].numpy(), raw[4:])      # SAR filtered
    assert np.isclose(s.x[0, 4, 10, 10].item(), np.median(raw[4, 9:12, 9:12]))


def test_npy_headers_are_parsed_one_thread_at_a_time(tmp_path, monkeypatch):
    """numpy parses headers with ast.literal_eval, which CPython 3.11 cannot run in two threads at once
    (gh-106905: 'AST constructor recursion depth mismatch', seen in CI from the reader pools). The
    pools' reads overlap; their header parses must not."""
    import ast
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from landslide.data import IO_WORKERS, read_patches

    folder = tmp_path / "p"
    folder.mkdir()
    ids = [f"ID_{i}" for i in range(24)]
    want = {i: np.random.default_rng(k).normal(size=(64, 64, 3)).astype(np.float32) for k, i in enumerate(ids)}
    for i, a in want.items():
        np.save(folder / f"{i}.npy", a)
    np.save(folder / "ID_F.npy", np.asfortranarray(want["ID_0"]))
    inside, most, lock, real = [0], [0], threading.Lock(), ast.literal_eval

    def watched(src):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.002)  # widen the window a second thread would enter through
        try:
            return real(src)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(ast, "literal_eval", watched)
    with ThreadPoolExecutor(max_workers=max(IO_WORKERS, 4)) as pool:
        x, got, bad = read_patches(pool, folder, [*ids, "ID_F"], 3)
    assert most[0] == 1 and not bad and got == [*ids, "ID_F"]
    assert all(np.array_equal(x[k], want[i]) for k, i in enumerate(ids)) and np.array_equal(x[-1], want["ID_0"])
