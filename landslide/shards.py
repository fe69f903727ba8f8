"""Sharded scoring: which IDs shard ``i/n`` scores, where its file goes, and joining the shards again.

Shard ``i`` of ``n`` is the contiguous slice ``ids[i*N//n:(i+1)*N//n]`` of the CSV's IDs, written to
``<out stem>.shard<i>of<n>.csv`` (probabilities: ``<out stem>_probs.shard<i>of<n>.csv``), so shards run on
several hosts never overwrite each other or the full submission. :func:`merge_shards` checks the set and
writes the submission atomically. A shard's calls are made when it is scored; ``<out stem>.shard<i>of<n>.csv.json``
records the threshold they were made at, the model that scored it (the run's hash) and the file's hash, and a
merge refuses a set called at two thresholds or scored by two models.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from landslide.contract import file_sha256
from landslide.data import Table
from landslide.errors import ConfigError, DataError
from landslide.io import atomic_write

log = logging.getLogger(__name__)


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in shard.split("/"))
        if not 0 <= i < n:
            raise ValueError
        return i, n
    except ValueError:
        raise ConfigError(f"--shard {shard!r}", fix="write i/n with 0 <= i < n, e.g. --shard 0/4") from None


def shard_ids(ids: list[str], shard: str) -> list[str]:
    if not shard:
        return ids
    i, n = parse_shard(shard)
    return ids[i * len(ids) // n:(i + 1) * len(ids) // n]


def probs_path(out: Path) -> Path:
    """Where ``--probs`` writes the probabilities of submission ``out``: ``<out stem>_probs.csv``."""
    return out.with_name(out.stem + "_probs.csv")


def shard_path(out: Path, i: int, n: int) -> Path:
    """Shard ``i`` of ``n`` of ``out``: ``<stem>.shard<i>of<n><suffix>`` (found again by this name to merge)."""
    return out.with_name(f"{out.stem}.shard{i}of{n}{out.suffix}")


def threshold_path(shard: Path) -> Path:
    """Where a shard records the threshold its calls were made at: ``<shard file>.json`` (not a shard name)."""
    return shard.with_name(shard.name + ".json")


def forget_threshold(shard: Path) -> None:
    """Drop ``shard``'s record before its file is rewritten: killed between the two writes, the shard is
    then unrecorded (refused by a merge beside recorded ones), never recorded at its old threshold."""
    threshold_path(shard).unlink(missing_ok=True)


def write_threshold(shard: Path, threshold: float, source: str, model: str, runner: str) -> None:
    """Record ``shard``'s threshold (``source``: calibrated | --threshold), the model that scored it
    (``model``: ``Runner.source_hash``, one value for every backend of a run; ``runner``: its description)
    and the hash of the file it was written with, so a merge can refuse a mixed set and a stale record."""
    with atomic_write(threshold_path(shard)) as f:
        json.dump({"threshold": threshold, "source": source, "model": model, "runner": runner,
                   "sha256": file_sha256(shard)}, f)


def _read_threshold(shard: Path, rerun: str) -> dict | None:
    """``shard``'s record, None without one; a record that is unreadable, not a probability, or written
    for another version of the file is refused (``rerun`` scores it again)."""
    t = threshold_path(shard)
    if not t.is_file():
        return None
    try:
        rec = json.loads(t.read_text())
        value = rec["threshold"]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1  # NaN fails too
        if not ok:
            raise ValueError(value)
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError("cannot read the shard's threshold record", file=t, fix=f"score that shard again: {rerun}") from None
    if rec.get("sha256") != file_sha256(shard):
        raise DataError(f"the threshold record does not match {shard.name} (rewritten since it was recorded)", file=t,
                        fix=f"score that shard again: {rerun}")
    return {"threshold": float(value), "source": str(rec.get("source", "?")), "model": rec.get("model"),
            "runner": str(rec.get("runner", "?"))}


def check_thresholds(parts: dict[int, Path], rerun: str) -> float | None:
    """The one threshold every shard of a set was called at: None when no shard records one (a set scored
    before shards recorded it, all at the calibrated threshold); refuses a set called at two, one in
    which some shards record it and some do not (their threshold is unknown), and one scored by two
    models (shards scored on several hosts from different runs or exports)."""
    n = len(parts)
    seen = {i: rec for i, p in sorted(parts.items()) if (rec := _read_threshold(p, rerun.format(i=i, n=n)))}
    if not seen:
        return None
    if unrecorded := [i for i in sorted(parts) if i not in seen]:
        raise DataError(f"shard(s) {unrecorded} record no threshold (scored by an older version, or interrupted), "
                        f"the others do: the set's calls may mix thresholds", file=parts[unrecorded[0]],
                        fix=f"score them again: {rerun.format(i=unrecorded[0], n=n)} (with the --threshold of the "
                            "rest, if they had one)")
    models = {r["model"] for r in seen.values() if r["model"] is not None}  # None: recorded before models were
    if len(models) > 1:
        listing = "; ".join(f"shard {i}: model {r['model'] or '?'} ({r['runner']})" for i, r in seen.items())
        raise DataError(f"the shards were scored by different models ({listing})", file=parts[min(seen)].parent,
                        fix="score the odd ones again with the run (or artefact) the rest were scored with: "
                            f"{rerun.format(i='K', n=n)}")
    values = {r["threshold"] for r in seen.values()}
    if len(values) > 1:
        listing = "; ".join(f"shard {i}: {r['threshold']:.4f} ({r['source']})" for i, r in seen.items())
        raise DataError(f"the shards were called at different thresholds ({listing})", file=parts[min(seen)].parent,
                        fix="score the odd ones again with the same --threshold as the rest (or none, for the "
                            f"calibrated one): {rerun.format(i='K', n=n)} [--threshold T]")
    runners = {r["runner"] for r in seen.values()}
    if len(runners) > 1:  # one model, several backends (hosts with and without a GPU): calls agree to rounding
        log.info("merge: one model, scored by %s", "; ".join(sorted(runners)))
    return values.pop()


def write_csv(path: Path, header: list[str], rows: Iterable) -> None:
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def shard_sets(out: Path) -> dict[int, dict[int, Path]]:
    """The shard files of ``out`` on disk: ``{n: {i: path}}``."""
    pat = re.compile(re.escape(out.stem) + r"\.shard(\d+)of(\d+)" + re.escape(out.suffix))
    found: dict[int, dict[int, Path]] = {}
    # Listed and matched by the regex, not globbed: a name may hold glob characters ("sub [v2].csv").
    for p in out.parent.iterdir() if out.parent.is_dir() else ():
        if (m := pat.fullmatch(p.name)) and int(m[1]) < int(m[2]):
            found.setdefault(int(m[2]), {})[int(m[1])] = p
    return found


def read_shards(out: Path, n: int, parts: dict[int, Path], rerun: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header, {ID: row}) over shards 0..n-1 of ``out`` in shard order; refuses a gap, a header that
    differs, or an ID twice. ``rerun`` is the command that scores shard ``{i}`` of ``{n}``."""
    missing = [i for i in range(n) if i not in parts]
    if missing:
        more = f" (so are shard(s) {', '.join(map(str, missing[1:]))})" if missing[1:] else ""
        raise DataError(f"shard {missing[0]} of {n} is missing{more}", file=shard_path(out, missing[0], n),
                        fix=f"score it first: {rerun.format(i=missing[0], n=n)}, then merge again")
    header: list[str] | None = None
    rows: dict[str, list[str]] = {}
    where: dict[str, Path] = {}
    for i in range(n):
        with open(parts[i], newline="", encoding="utf-8") as f:
            table = [r for r in csv.reader(f) if r]
        if not table:
            raise DataError("shard file is empty", file=parts[i], fix=f"score it again: {rerun.format(i=i, n=n)}")
        if header is None:
            header = table[0]
        elif table[0] != header:
            raise DataError(f"header {table[0]} differs from {parts[0].name}'s {header}", file=parts[i],
                            fix=f"score it again with the same options: {rerun.format(i=i, n=n)}")
        for row in table[1:]:
            if row[0] in rows:
                raise DataError(f"ID also in {where[row[0]]}", file=parts[i], id=row[0],
                                fix="delete the shard files that do not belong to this set and score them again")
            rows[row[0]], where[row[0]] = row, parts[i]
    assert header is not None  # n >= 1 and every shard has a header
    return header, rows


def merge_shards(out: Path, table: Table | None, rerun: str, *, allow_missing: bool = False) -> dict:
    """Join ``<out stem>.shard<K>of<N>.csv`` (K = 0..N-1) into ``out``, and their ``_probs`` files if any.

    Every shard must be there, with one header and no ID twice. With ``table`` (the scored CSV) the IDs
    must be its own, none missing (``allow_missing``: shards scored with --skip-bad leave their bad files
    out) and the rows go out in its order; without it, in shard order (the same: a shard is a slice).
    """
    sets = shard_sets(out)
    if not sets:
        raise DataError("no shard files to merge", file=out.with_name(f"{out.stem}.shard<K>of<N>{out.suffix}"),
                        fix=f"score every shard first: {rerun.format(i='K', n='N')}, for K = 0..N-1")
    if len(sets) > 1:
        listing = "; ".join(f"{n} shards: {', '.join(p.name for _, p in sorted(s.items()))}"
                            for n, s in sorted(sets.items()))
        raise DataError(f"shard files of more than one shard count ({listing})", file=out.parent,
                        fix=f"delete the files of the set that is stale (all {out.stem}.shard*of<N>{out.suffix} "
                            "of one N, and their .json records), then merge again")
    (n, parts), = sets.items()
    header, rows = read_shards(out, n, parts, rerun)
    threshold = check_thresholds(parts, rerun)
    order = list(rows)
    if table is not None:
        known = set(table.ids)
        foreign = [i for i in order if i not in known]
        if foreign:
            raise DataError(f"{len(foreign)} ID(s) of the shards are not in the CSV ({len(table.ids)} rows)",
                            file=table.path, id=foreign[0],
                            fix="merge shards scored on this data (pass the --data they were scored with)")
        missing = [i for i in table.ids if i not in rows]
        if missing and not allow_missing:
            k = next(k for k in range(n) if missing[0] in shard_ids(table.ids, f"{k}/{n}"))
            raise DataError(f"{len(missing)} ID(s) of the CSV are in no shard file (the first belongs to shard {k})",
                            file=parts[k], id=missing[0],
                            fix=f"score that shard again: {rerun.format(i=k, n=n)} (a shard scored with "
                                "--skip-bad leaves its bad files out: add --skip-bad to merge without them)")
        if missing:
            log.warning("merge: %d ID(s) of %s are in no shard (skipped as bad when scored), e.g. %s: %s is not a "
                        "complete submission", len(missing), table.path.name, missing[0], out.name)
        order = [i for i in table.ids if i in rows]
    made = {"out": str(out), "n": len(order), "shards": n, "threshold": threshold}
    pout = probs_path(out)
    psets = shard_sets(pout)
    pparts = psets.get(n)
    if set(psets) - {n}:  # left from another shard count: not part of this merge, but say so
        log.warning("merge: probability shard file(s) for %s shards beside %s are not merged (this set has %d)",
                    "/".join(map(str, sorted(set(psets) - {n}))), pout.name, n)
    if pparts:  # checked before anything is written: a merge writes both files or neither
        pheader, prows = read_shards(pout, n, pparts, rerun + " --probs")
        if set(prows) != set(rows):
            raise DataError(f"the probability shards hold other IDs than the submission shards ({len(prows)} vs "
                            f"{len(rows)})", file=pout.parent, fix=f"score the shards again, with --probs: {rerun}")
        write_csv(pout, pheader, (prows[i] for i in order))
        made["probs"] = str(pout)
    write_csv(out, header, (rows[i] for i in order))
    log.info("merged %d shard(s) into %s: %d rows%s%s", n, out, len(order),
             f" (and {pout.name})" if "probs" in made else "",
             "" if threshold is None else f", called at threshold {threshold:.4f}")
    return made
