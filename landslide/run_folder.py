"""The run folder: what a training run writes besides its weights, and the rules for starting and resuming one.

``train.py`` writes ``config.json`` (every field, the versions, the commit, where it ran), ``contract.json``
(the input contract every artefact carries), ``folds.csv`` and ``metrics.csv`` through here; the per-fold
weights and states are the fold trainer's (``landslide/train.py``). ``--resume`` starts from the saved config and may
change how the run runs but not what it trains (``prepare_run_dir``).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from landslide.config import as_flag
from landslide.contract import data_contract, versions
from landslide.data import Split
from landslide.errors import ConfigError
from landslide.io import atomic_write, read_json, write_json
from landslide.train_config import TrainConfig

log = logging.getLogger(__name__)


METRIC_FIELDS = ["fold", "arch", "epoch", "lr", "train_loss", "val_loss", "val_f1", "val_thr",
                 "epoch_s", "samples_per_s"]


def write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["fold"], r["arch"], r["epoch"])))


def write_oof(path: Path, ids: list[str], labels: np.ndarray, fold_of: np.ndarray, oof: np.ndarray,
              archs: list[str]) -> None:
    """One row per training patch: its label, the fold that held it out, and each architecture's OOF probability."""
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(["ID", "label", "fold", *[f"prob_{a}" for a in archs]])
        for i, id_ in enumerate(ids):
            w.writerow([id_, int(labels[i]), int(fold_of[i]), *[f"{v:.9g}" for v in oof[i]]])


def saved_config(out: str, warn: bool = True) -> dict | None:
    """The config the run folder ``out`` was started with (what ``--resume`` starts from), or None.

    ``warn`` names keys this version dropped; the second read (``prepare_run_dir``) passes False so the
    user sees that warning once."""
    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the run's config ({e})", file=path,
                          fix="restore it, or start a new run with --out a new folder") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ConfigError("not a run's config.json (no \"config\" object)", file=path,
                          fix="point --out at a run folder written by train.py, or start a new one")
    names = {f.name for f in fields(TrainConfig)}
    dropped = sorted(set(saved["config"]) - names)
    if dropped and warn:  # a run started by an older version; its other fields still apply
        log.warning("%s: key(s) %s are not fields of this version's TrainConfig; ignored", path, dropped)
    return {k: v for k, v in saved["config"].items() if k in names}


def prepare_run_dir(cfg: TrainConfig) -> Path:
    run = Path(cfg.out)
    cfg_path = run / "config.json"
    if cfg_path.exists() and not cfg.resume:
        if any(run.glob("fold*/*.pt")):
            raise ConfigError(f"run folder {run} already holds a run", file=cfg_path,
                              fix="pass --resume to continue it, or --out a new folder")
        # Only the files a start writes (config, contract, folds) and no trained epoch: a start that
        # failed (data, out of memory, Ctrl-C in the first epoch) holds nothing worth keeping.
        log.info("run folder %s holds no trained epoch: starting it afresh", run)
    if cfg.resume and cfg_path.exists():
        # A key the saved config lacks is a field added since that run started: it ran with the default.
        old = {**asdict(TrainConfig()), **saved_config(cfg.out, warn=False)}
        # How and where it runs may change on resume (a copied run folder too); what it trains may not.
        # --data may move (a relative path read from another folder, a copied data set): check_same_folds
        # refuses a Train.csv whose rows, labels or folds are not the run's.
        keep = ("resume", "out", "device", "precision", "compile", "compile_mode", "data_backend", "augment_kernel",
                "cache_dir", "eval_batch_size", "fold_on", "only_folds", "channels_last", "data",
                "preset")  # a preset's name: what it sets is compared field by field
        diff = {k: (old[k], v) for k, v in asdict(cfg).items() if k not in keep and old[k] != v}
        if diff:
            said = "; ".join(f"{as_flag(k, new)} (the run has {as_flag(k, was)})" for k, (was, new) in diff.items())
            flags = ", ".join("--" + k.replace("_", "-") for k in diff)
            if "epochs" in diff:  # the one most often wished for; the schedule is why it cannot be
                said += " (the cosine schedule spans the run's epochs: a longer run is another run)"
            raise ConfigError(f"--resume may change how a run runs, not what it trains: {said}", file=cfg_path,
                              fix=f"drop {flags} (or the --preset/--config that sets it: --resume needs only --out, the "
                                  "run's config.json supplies the rest), or train that change as a new run with --out a new "
                                  "folder")
    run.mkdir(parents=True, exist_ok=True)
    # A run killed mid-write leaves its temp file behind (the real file was never touched): tidy up.
    for tmp in run.rglob(".*.tmp"):
        tmp.unlink()
    return run


def check_same_folds(run: Path, cfg: TrainConfig, split: Split, fold_of: np.ndarray) -> None:
    """On resume, refuse a Train.csv other than the one the run started on: the finished folds' checkpoints
    and OOF rows belong to the saved folds, so other rows, labels or folds would mix two data sets."""
    saved = run / "folds.csv"
    if not cfg.resume or not saved.is_file():
        return
    with open(saved, newline="") as f:
        rows = [tuple(r) for r in csv.reader(f)][1:]
    now = [(i, str(y), str(k)) for i, y, k in zip(split.ids, split.labels.tolist(), fold_of.tolist())]
    if rows != now:
        diff = next((n for n, (a, b) in enumerate(zip(rows, now)) if a != b), min(len(rows), len(now)))
        what = (f"{len(now)} rows now, {len(rows)} when the run started" if len(rows) != len(now) else
                f"row {diff + 1} was {','.join(rows[diff])} (ID,label,fold) and is now {','.join(now[diff])}")
        raise ConfigError(f"--resume: the training CSV is not the one this run started on ({what})", file=saved,
                          fix=f"restore {cfg.data}/Train.csv as it was, or train a new run on it: python train.py "
                              f"--data {cfg.data} --out NEW_RUN")


def start_run(cfg: TrainConfig, split: Split, fold_of: np.ndarray, meta: dict) -> Path:
    """Create (or re-enter, on resume) the run folder and write its config, contract and folds.

    ``meta`` is where and how it runs (runtime, data backend, distributed layout), recorded beside the config."""
    from landslide.utils import git_commit

    run = prepare_run_dir(cfg)
    check_same_folds(run, cfg, split, fold_of)
    write_json(run / "config.json", {"config": asdict(cfg), "versions": versions(), "git_commit": git_commit(), **meta})
    write_json(run / "contract.json", {**data_contract(split.layout), "archs": cfg.archs, "folds": cfg.folds})
    with atomic_write(run / "folds.csv") as f:
        w = csv.writer(f)
        w.writerow(["ID", "label", "fold"])
        w.writerows(zip(split.ids, split.labels.tolist(), fold_of.tolist()))
    return run
