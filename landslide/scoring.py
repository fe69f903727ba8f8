"""Reading and scoring a split's patches: the header prescan, the read-ahead reader, the scoring loop.

Every file's .npy header is checked before any compute (missing, truncated, wrong shape or dtype); the
values (NaN/Inf) are checked as the reader brings each batch in, two batches ahead of the runner, so file
I/O overlaps compute. Bad files are all named at once, whichever check found them.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from landslide.bands import BandLayout
from landslide.data import (
    IO_WORKERS,
    PATCH_HW,
    REAL_KINDS,
    bad_files_fix,
    bands_file,
    load_patch,
    patch_dir,
    read_npy_header,
    read_patches,
)
from landslide.errors import BadFilesError, DataError
from landslide.runtime import Runner

log = logging.getLogger(__name__)


def iter_batches(data: Path, split: str, ids: list[str], layout: BandLayout, batch_size: int,
                 ahead: int = 2) -> Iterator[tuple[np.ndarray | None, list[str], list[DataError]]]:
    """Yield ``(x (b, 64, 64, C) float32 | None, ids, bad files)`` per batch, read ``ahead`` batches early."""
    folder, bands = patch_dir(data, split), bands_file(data)

    def read(chunk: list[str]):  # the file pool overlaps the I/O of one batch
        return read_patches(files, folder, chunk, layout.n_channels, bands=bands)

    chunks = iter([ids[s:s + batch_size] for s in range(0, len(ids), batch_size)])
    with ThreadPoolExecutor(max_workers=IO_WORKERS) as files, \
            ThreadPoolExecutor(max_workers=1) as reader:
        # range first: zip stops on it without pulling (and dropping) one more chunk.
        pending = deque(reader.submit(read, c) for _, c in zip(range(ahead), chunks))
        while pending:
            batch = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(reader.submit(read, nxt))
            yield batch


def run_batches(runner: Runner, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities ``(N,)`` for patches already in memory, ``(N, 64, 64, C)`` (used by bench/infer.py)."""
    out = np.empty(len(x), dtype=np.float32)
    for s in tqdm(range(0, len(x), batch_size), desc="infer", leave=False, disable=None):
        out[s:s + batch_size] = runner.predict(x[s:s + batch_size])
    return out


def _header_ok(path: Path, n_channels: int) -> bool:
    """Cheap check from the .npy header (~128 bytes): real dtype, (64, 64, C) shape, file not truncated."""
    try:
        with open(path, "rb") as f:
            shape, _, dtype = read_npy_header(f)  # thread-safe: prescan runs on a pool
            start = f.tell()
    except (OSError, ValueError):
        return False
    return (dtype.kind in REAL_KINDS and tuple(shape) == (*PATCH_HW, n_channels)
            and path.stat().st_size >= start + int(np.prod(shape)) * dtype.itemsize)


def prescan(data: Path, split: str, ids: list[str], n_channels: int) -> list[DataError]:
    """Every file whose header is wrong, with :func:`load_patch`'s message, before any compute.

    Only what the values themselves show (NaN/Inf) is left to the streaming reader.
    """
    folder, bands = patch_dir(data, split), bands_file(data)

    def one(id_: str) -> DataError | None:
        path = folder / f"{id_}.npy"
        if _header_ok(path, n_channels):
            return None
        try:
            load_patch(path, id_, n_channels, bands=bands)  # the full check names the problem
        except DataError as e:
            return e
        return None

    with ThreadPoolExecutor(max_workers=IO_WORKERS) as pool:
        return [e for e in pool.map(one, ids) if e is not None]


@dataclass
class Scored:
    ids: list[str]
    probs: np.ndarray           # (N,) float32
    skipped: list[DataError]
    compute_s: float
    total_s: float
    first_call_s: float = 0.0   # the first runner call alone: it holds any torch.compile / engine warm-up
    first_n: int = 0            # patches in that call

    def steady_rate(self) -> float | None:
        """Patches/s of the calls after the first (None with one call): the rate a longer set would see."""
        rest = self.compute_s - self.first_call_s
        return (len(self.ids) - self.first_n) / rest if len(self.ids) > self.first_n and rest > 0 else None


def score(runner: Runner, data: Path, split: str, ids: list[str], batch_size: int, skip_bad: bool,
          allow_empty: bool = False) -> Scored:
    """Run ``runner`` over the patches of ``ids``; every bad file is named at once (unless ``skip_bad``).

    ``allow_empty``: no patch to score is a result, not an error (a shard may hold no ID, or only bad ones).
    """
    layout = BandLayout.from_dir(data)
    order = {id_: k for k, id_ in enumerate(ids)}
    bad = prescan(data, split, ids, layout.n_channels)
    if bad and not skip_bad:
        # No compute now (the loop below skips it), but the other files are still read: a NaN shows only
        # in the values, and the user should get every bad file in one message, not one pass per kind.
        log.warning("%d file(s) failed the header check; reading the other %d for NaN/Inf before failing",
                    len(bad), len(ids) - len(bad))
    skip = {e.id for e in bad}
    ids = [i for i in ids if i not in skip]
    out_ids: list[str] = []
    probs: list[np.ndarray] = []
    compute = first = 0.0
    first_n = 0
    t0 = time.perf_counter()
    n_batches = (len(ids) + batch_size - 1) // batch_size
    for x, ok, errs in tqdm(iter_batches(data, split, ids, layout, batch_size), total=n_batches, desc="infer",
                            leave=False, disable=None):
        bad += errs
        if x is None or (bad and not skip_bad):
            continue  # once a file is bad no submission will be written; keep reading to name them all
        t = time.perf_counter()
        probs.append(runner.predict(x))
        dt = time.perf_counter() - t
        if not out_ids:
            first, first_n = dt, len(ok)
        compute += dt
        out_ids += ok
    bad.sort(key=lambda e: order.get(e.id, -1))  # CSV order, whichever pass found each file
    if bad and not skip_bad:
        raise BadFilesError(bad, fix=bad_files_fix(data, split, "score again, or pass --skip-bad to score the "
                                                                "rest (no submission was written)"))
    if not out_ids and not allow_empty:
        raise DataError("no readable patches", file=patch_dir(data, split), fix="check the folder and the CSV IDs")
    p = np.concatenate(probs).astype(np.float32) if probs else np.zeros(0, np.float32)
    return Scored(out_ids, p, bad, compute, time.perf_counter() - t0, first, first_n)
