"""Build an artefact beside its target and swap it in only once it is proven: a failed or interrupted
re-export leaves the previous, working artefact and its sidecar exactly as they were.

An artefact is up to three files: the graph/package/engine, ``<file>.data`` (a graph over 2 GB keeps
its weights there) and the ``<file>.json`` sidecar. They are built under their own names in a temp
folder in the target's folder (so a graph's reference to its weights file stays valid, and every
``os.replace`` is a rename on one filesystem), verified there, given their sidecar there, then renamed
into place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from landslide.export.sidecar import sidecar_path, weights_path
from landslide.io import fsync_dir


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """Yield where to build ``path`` (same name, in a temp folder beside it); the block writes the artefact
    there, verifies it and writes its sidecar. On a clean exit the files are swapped in; on any exception
    (a failed check, Ctrl-C) the temp folder goes and nothing at ``path`` has changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        built = tmp / path.name
        yield built
        promote(built, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def promote(built: Path, path: Path) -> None:
    """Rename ``built``, its weights file (if any) and its sidecar onto ``path``'s.

    The sidecar goes last and carries the sha256 of the graph (and of its weights file), so a crash in the
    short window between these renames leaves a pair the loader refuses by hash, naming the rebuild
    command, rather than one it would score with mismatched files. A stale weights file the new graph no
    longer names is removed only once the new sidecar is in place (until then the old graph may need it).
    """
    side = sidecar_path(built)
    if not side.is_file():  # a stage that skipped its sidecar is a bug here, not something to ship unsigned
        raise RuntimeError(f"{built.name} was staged without its sidecar; nothing was replaced")
    has_data = weights_path(built).is_file()
    moves = [(weights_path(built), weights_path(path))] if has_data else []
    moves += [(built, path), (side, sidecar_path(path))]
    for src, _ in moves:  # on disk before any rename, so a power cut cannot leave a renamed empty file
        with open(src, "rb") as f:
            os.fsync(f.fileno())
    for src, dst in moves:
        os.replace(src, dst)
    if not has_data:
        weights_path(path).unlink(missing_ok=True)
    fsync_dir(path.parent)
