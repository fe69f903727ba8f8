"""Reading a Zindi-layout folder: CSVs, ``.npy`` patches, validation, and the preprocessed cache.

Layout (see shared DATA.md): ``Train.csv`` (ID,label) and/or ``Test.csv`` (ID) beside
``train_data/<ID>.npy`` / ``test_data/<ID>.npy`` (or the official zip's nested
``train_data/train_data/<ID>.npy``), each ``(64, 64, C)`` channels-last, any real numeric dtype.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from landslide.bands import ALL_BANDS, BANDS_FILE, BandLayout
from landslide.errors import BadFilesError, DataError
from landslide.io import atomic_write

log = logging.getLogger(__name__)

PATCH_HW = (64, 64)
SPLITS = {"train": ("Train.csv", "train_data"), "test": ("Test.csv", "test_data")}


@dataclass
class Table:
    """The rows of one split's CSV."""

    path: Path
    ids: list[str]
    labels: np.ndarray | None  # (N,) int64 in {0, 1}, None for an unlabelled split


def read_csv(path: str | Path, *, labelled: bool) -> Table:
    """Read ``Train.csv`` (``ID,label``) or ``Test.csv`` (``ID``). CRLF line ends and a UTF-8 BOM are fine."""
    path = Path(path)
    if not path.is_file():
        up = path.parent.parent / path.name  # --data given as the patch folder (train_data/, test_data/)
        raise DataError("CSV not found", file=path,
                        fix=f"--data {up.parent} (it holds {path.name})" if up.is_file() else
                        "point --data at a folder holding Train.csv/Test.csv (Zindi layout)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path,
                        fix="save the CSV as UTF-8") from None
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    if not rows:
        raise DataError("CSV is empty", file=path, fix="the first line must be the header 'ID,label' or 'ID'")
    header = [h.strip() for h in rows[0]]
    want = ["ID", "label"] if labelled else ["ID"]
    cols = {h: i for i, h in enumerate(header)}
    missing = [w for w in want if w not in cols]
    if missing:
        raise DataError(f"header {header} lacks column(s) {missing}", file=path,
                        fix=f"the header must contain {','.join(want)}")
    body = rows[1:]
    if not body:
        raise DataError("CSV has a header but no rows", file=path, fix="add at least one row of data")
    ids: list[str] = []
    labels: list[int] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(body, start=2):
        if len(row) < len(header):
            raise DataError(f"line {lineno} has {len(row)} field(s), the header has {len(header)}",
                            file=path, fix="give every row the same columns as the header")
        id_ = row[cols["ID"]].strip()
        if not id_ or "/" in id_ or "\\" in id_ or id_ in (".", ".."):
            raise DataError(f"line {lineno}: invalid ID {id_!r}", file=path,
                            fix="IDs must be non-empty file stems such as ID_ABC123")
        if id_ in seen:
            raise DataError(f"duplicate ID (lines {seen[id_]} and {lineno})", file=path, id=id_,
                            fix="each ID must appear once")
        seen[id_] = lineno
        ids.append(id_)
        if labelled:
            raw = row[cols["label"]].strip()
            if raw not in ("0", "1", "0.0", "1.0"):
                raise DataError(f"line {lineno}: label {raw!r} is not 0 or 1", file=path, id=id_,
                                fix="labels must be 0 (no landslide) or 1 (landslide)")
            labels.append(int(float(raw)))
    return Table(path, ids, np.asarray(labels, dtype=np.int64) if labelled else None)


def patch_dir(data_dir: Path, split: str) -> Path:
    """The folder of a split's ``.npy`` files: flat or the official zip's nested layout."""
    base = data_dir / SPLITS[split][1]
    nested = base / SPLITS[split][1]
    if nested.is_dir() and not any(base.glob("*.npy")):
        return nested
    return base


def bands_file(data_dir: str | Path) -> Path | None:
    """The data folder's ``bands.txt`` when it has one (else the default 12-band layout is meant)."""
    path = Path(data_dir) / BANDS_FILE
    return path if path.exists() else None  # the same test BandLayout.from_dir makes


def _channel_fix(n_channels: int, bands: Path | None, found: int) -> tuple[str, str]:
    """(what the channel count is held against, the fix): ``bands.txt``, or the default layout without one."""
    if bands is not None:
        return (f"{BANDS_FILE} declares {n_channels}",
                f"each patch must be a (64, 64, {n_channels}) array, channels last, matching {bands}")
    return (f"the default layout has {n_channels} bands (no {BANDS_FILE} beside the CSV)",
            f"add a {BANDS_FILE} beside the CSV listing the file's {found} bands in channel order, one name per "
            f"line, or save all {n_channels} bands; the names, in the default order: {', '.join(ALL_BANDS)}")


# numpy parses a .npy header with ast.literal_eval, and CPython 3.11's AST construction is not safe in
# several threads at once: under the reader pools it failed now and then with "SystemError: AST
# constructor recursion depth mismatch" (CPython gh-106905). Only the parse of the header (~100 bytes,
# already read) holds this lock; the file reads stay parallel.
_HEADER_PARSE = threading.Lock()
_HEADER_READERS = {(1, 0): (np.lib.format.read_array_header_1_0, "<H"),
                   (2, 0): (np.lib.format.read_array_header_2_0, "<I")}


def read_npy_header(f: io.BufferedIOBase) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` file open at its start; ``f`` is left at the
    data. Raises ValueError for what is not a .npy file of format 1.0 or 2.0 (3.0 only adds UTF-8
    field names, which no patch of real numbers has)."""
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
        raise ValueError(f".npy format version {version} is not supported (1.0 and 2.0 are)")
    read, length = _HEADER_READERS[version]
    size = f.read(struct.calcsize(length))
    header = f.read(struct.unpack(length, size)[0]) if len(size) == struct.calcsize(length) else b""
    with _HEADER_PARSE:
        shape, fortran, dtype = read(io.BytesIO(size + header))
    return tuple(shape), fortran, dtype


class ObjectArrayError(ValueError):
    """A ``.npy`` of Python objects (pickled): never unpickled, so never loaded."""


def read_npy(path: Path) -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` for a plain ``.npy``, safe in many threads at once
    (see ``_HEADER_PARSE``). Raises ValueError for a bad, truncated or object-dtype file."""
    with open(path, "rb") as f:
        shape, fortran, dtype = read_npy_header(f)
        if dtype.hasobject:
            raise ObjectArrayError("Object arrays cannot be loaded when allow_pickle=False")
        count = int(np.prod(shape, dtype=np.int64))
        arr = np.fromfile(f, dtype=dtype, count=count)  # what np.load does for a real file
    if arr.size != count:
        raise ValueError(f"expected {count} elements of {dtype} for shape {shape}, could only read {arr.size} elements")
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


# numpy dtype kinds a patch may have: signed and unsigned integers, floats (bool, complex, strings are refused).
REAL_KINDS = "iuf"


def load_patch(path: Path, id_: str, n_channels: int, *, bands: Path | None = None) -> np.ndarray:
    """Load and validate one patch; returns ``(64, 64, C)`` float32. Raises :class:`DataError`.

    ``bands`` is the data folder's ``bands.txt`` (None: there is none, the default layout is meant);
    it only shapes the message when the channel count is wrong. Each fix holds for training and
    scoring alike; the caller's :class:`BadFilesError` says what to do next in its own context.
    """
    if path.is_dir():  # is_file() is False for it too, but "missing" would send the user looking for nothing
        raise DataError("is a folder, not a .npy file", file=path, id=id_,
                        fix="move the folder out of the way and put the patch's .npy file there, or remove its row "
                            "from the CSV")
    if not path.is_file():
        raise DataError("patch file is missing", file=path, id=id_,
                        fix="restore the file, or remove its row from the CSV")
    try:
        arr = read_npy(path)
    except ObjectArrayError:
        raise DataError("the .npy holds Python objects (a pickle), which are never loaded", file=path, id=id_,
                        fix="save the patch as a numeric array: np.save(path, np.asarray(patch, dtype=np.float32))") from None
    except Exception as e:  # ValueError/OSError/EOFError on bad files
        raise DataError(f"cannot read .npy ({type(e).__name__}: {e})", file=path, id=id_,
                        fix="the file is truncated or not a .npy array; re-extract or re-download it") from None
    if isinstance(arr, np.ndarray) and arr.dtype.kind == "b":  # True/False: a mask saved in the patch's place
        raise DataError("dtype bool holds True/False (a mask?), not band values", file=path, id=id_,
                        fix="save the patch's band values there, as an integer or float array")
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in REAL_KINDS:
        raise DataError(f"dtype {getattr(arr, 'dtype', type(arr))} is not a real number type", file=path,
                        id=id_, fix="store patches as integer or float arrays")
    if arr.ndim != 3 or arr.shape[:2] != PATCH_HW:
        fix = f"each patch must be a (64, 64, {n_channels}) array, channels last"
        if arr.ndim == 3 and arr.shape[1:] == PATCH_HW:  # (C, 64, 64): saved channels first (PyTorch's order)
            fix += "; this one is channels first: save np.moveaxis(patch, 0, -1) instead"
        raise DataError(f"shape {arr.shape} is not (64, 64, C)", file=path, id=id_, fix=fix)
    if arr.shape[2] != n_channels:
        against, fix = _channel_fix(n_channels, bands, arr.shape[2])
        raise DataError(f"{arr.shape[2]} channels but {against}", file=path, id=id_, fix=fix)
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, reported below
        out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise DataError(f"{bad} NaN/Inf value(s) (or values beyond float32 range)", file=path, id=id_,
                        fix="replace them (e.g. with the band median) and save the file again")
    return out


def try_load_patch(folder: Path, id_: str, n_channels: int, *, bands: Path | None = None) -> np.ndarray | DataError:
    """:func:`load_patch` of ``folder/<id_>.npy`` that returns the error instead of raising (for batch checks)."""
    try:
        return load_patch(folder / f"{id_}.npy", id_, n_channels, bands=bands)
    except DataError as e:
        return e


# File reads release the GIL, so a thread pool of this size overlaps the file I/O.
IO_WORKERS = min(8, (os.cpu_count() or 2) * 2)


def read_patches(pool: ThreadPoolExecutor, folder: Path, ids: list[str], n_channels: int, *,
                 bands: Path | None = None) -> tuple[np.ndarray | None, list[str], list[DataError]]:
    """Read ``ids`` on ``pool``: (the good patches stacked ``(n, 64, 64, C)`` or None, their IDs, bad files)."""
    results = list(pool.map(lambda i: try_load_patch(folder, i, n_channels, bands=bands), ids))
    keep = [i for i, r in enumerate(results) if not isinstance(r, DataError)]
    x = np.stack([results[i] for i in keep]) if keep else None
    return x, [ids[i] for i in keep], [r for r in results if isinstance(r, DataError)]


def bad_files_fix(data_dir: Path, split: str, then: str) -> str:
    """The overall fix of a :class:`BadFilesError`: mend the files or drop their rows, then ``then``."""
    return f"fix these files or remove their rows from {Path(data_dir) / SPLITS[split][0]}, then {then}"


def load_patches(data_dir: Path, split: str, ids: list[str], layout: BandLayout, *, skip_bad: bool = False,
                 then: str = "run again") -> tuple[np.ndarray, list[str], list[DataError]]:
    """Load every patch of ``ids`` as read, ``(N, 64, 64, C)`` float32 (channels last).

    All files are checked before anything is returned, and every bad file is named at once (``then``
    ends the fix: what to run once they are mended). With ``skip_bad`` the bad ones are dropped and
    returned as errors instead.
    """
    folder = patch_dir(data_dir, split)
    with ThreadPoolExecutor(max_workers=IO_WORKERS) as pool:
        x, good, errors = read_patches(pool, folder, ids, layout.n_channels, bands=bands_file(data_dir))
    if errors and not skip_bad:
        raise BadFilesError(errors, fix=bad_files_fix(data_dir, split, then))
    if x is None:
        raise DataError("no readable patches", file=folder, fix="check the folder and the CSV IDs")
    return x, good, errors


@dataclass
class Split:
    """One split, preprocessed: median-filtered raw values, ready for per-fold normalisation."""

    ids: list[str]
    x: torch.Tensor            # (N, C, 64, 64) float32, SAR bands median-filtered
    labels: np.ndarray | None  # (N,) int64
    layout: BandLayout


def _fingerprint(data_dir: Path, split: str, table: Table, layout: BandLayout) -> str:
    """Hash of what the cache depends on: CSV bytes, each file's path/size/mtime, bands, preprocessing."""
    from landslide.preprocess import PREPROCESS_VERSION

    h = hashlib.sha256()
    h.update(json.dumps({"v": PREPROCESS_VERSION, "split": split, "bands": layout.to_list()}).encode())
    h.update(table.path.read_bytes())
    folder = patch_dir(data_dir, split)
    for id_ in table.ids:
        try:
            st = (folder / f"{id_}.npy").stat()
            h.update(f"{id_}:{st.st_size}:{st.st_mtime_ns};".encode())
        except FileNotFoundError:
            h.update(f"{id_}:missing;".encode())
    return h.hexdigest()[:16]


def _source_tag(data_dir: Path) -> str:
    """Which folder a cache file was built from: its entries are ``<split>-<tag>-<fingerprint>.pt``."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LANDSLIDE_CACHE", Path.home() / ".cache" / "landslide"))


def require_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a Path, refused with one message (train's and infer's alike) when it is no folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError("data folder not found", file=data_dir,
                        fix="check the path: --data names a folder holding Train.csv/Test.csv and train_data/ or test_data/")
    return data_dir


def load_split(data_dir: str | Path, split: str, *, cache_dir: str | Path | None = None) -> Split:
    """Read, validate and preprocess a split, through a cache keyed by a hash of its inputs; any bad
    file is an error (training and the baseline need every row; inference reads its files itself).

    The cache holds one file per data folder and split (``<cache>/<split>-<folder>-<hash>.pt``);
    changing the CSV, any patch file, ``bands.txt`` or the preprocessing code changes the hash, rebuilds
    it and removes the folder's stale file, so regenerating a data set in place does not grow the cache.
    """
    from landslide.preprocess import median_filter_sar

    data_dir = require_data_dir(data_dir)
    layout = BandLayout.from_dir(data_dir)
    table = read_csv(data_dir / SPLITS[split][0], labelled=(split == "train"))
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    source = f"{split}-{_source_tag(data_dir)}-"
    cache_file = cache / f"{source}{_fingerprint(data_dir, split, table, layout)}.pt"
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, map_location="cpu", weights_only=True)
            log.info("cache hit: %s (%d patches)", cache_file, len(blob["ids"]))
            return Split(blob["ids"], blob["x"], table.labels, layout)
        except Exception as e:  # a corrupt cache is rebuilt, and says so
            log.warning("cache %s unreadable (%s): rebuilding", cache_file, e)
    # load_split is what training reads its data with (and the baseline its test split).
    then = "train again" if split == "train" else "run again"
    x_np, ids, _ = load_patches(data_dir, split, table.ids, layout, then=then)
    # One NCHW copy of the set, filtered in place: the full Zindi train split is 1.4 GB a copy.
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
    del x_np
    x = median_filter_sar(x, layout.sar_idx, inplace=True)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache_file, "wb") as f:
        torch.save({"ids": ids, "x": x}, f)
    log.info("cache written: %s (%d patches)", cache_file, len(ids))
    for stale in cache.glob(f"{source}*.pt"):  # this folder's earlier contents: never read again
        if stale != cache_file:
            stale.unlink(missing_ok=True)
            log.info("cache: removed %s (built from this folder's earlier contents)", stale.name)
    return Split(ids, x, table.labels, layout)
