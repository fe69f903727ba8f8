"""Score a test set with a trained run (or exported engine): ``submission.csv`` as ``ID,Target``."""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from landslide.bands import BandLayout
from landslide.config import field
from landslide.contract import check_data
from landslide.data import SPLITS, load_patches, read_csv
from landslide.errors import ConfigError
from landslide.io import atomic_write
from landslide.runtime import Runner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch")


@dataclass
class InferConfig:
    run: str = field("", "run folder written by train.py")
    data: str = field("", "Zindi-layout folder with Test.csv and test_data/")
    out: str = field("", "submission path (default: RUN/submission.csv)")
    split: str = field("test", "which CSV to score", choices=("test", "train"))
    backend: str = field("auto", "inference backend", choices=BACKENDS)
    batch_size: int = field(64, "patches per runner call")
    probs: bool = field(False, "also write probabilities (<out stem>_probs.csv)")
    shard: str = field("", "score slice i of n of the IDs, as i/n (0-based)")
    skip_bad: bool = field(False, "score the readable patches and list the bad ones, instead of failing")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    precision: str = field("fp32", "torch backend: fp32 | bf16 | fp16", choices=("fp32", "bf16", "fp16"))
    compile: str = field("off", "torch backend: torch.compile on|off", choices=("auto", "on", "off"))


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


def make_runner(cfg: InferConfig) -> Runner:
    if cfg.backend in ("auto", "torch"):
        from landslide.runtime.torch import TorchRunner

        return TorchRunner(cfg.run, cfg.device, cfg.precision, cfg.compile)
    raise ConfigError(f"backend {cfg.backend!r} unknown", fix=f"use one of {BACKENDS}")


def run_batches(runner: Runner, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = np.empty(len(x), dtype=np.float32)
    for s in tqdm(range(0, len(x), batch_size), desc="infer", leave=False, disable=None):
        out[s:s + batch_size] = runner.predict(x[s:s + batch_size])
    return out


def write_submission(path: Path, ids: list[str], probs: np.ndarray, threshold: float, with_probs: bool) -> None:
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(["ID", "Target"])
        w.writerows(zip(ids, (probs >= threshold).astype(int).tolist()))
    if with_probs:
        with atomic_write(path.with_name(path.stem + "_probs.csv")) as f:
            w = csv.writer(f)
            w.writerow(["ID", "prob"])
            w.writerows((i, f"{p:.6f}") for i, p in zip(ids, probs))


def main(cfg: InferConfig) -> dict:
    if not cfg.run or not cfg.data:
        raise ConfigError("infer needs a run folder and --data", fix="python infer.py RUN_DIR --data DIR")
    data = Path(cfg.data)
    layout = BandLayout.from_dir(data)
    table = read_csv(data / SPLITS[cfg.split][0], labelled=False)
    ids = shard_ids(table.ids, cfg.shard)
    runner = make_runner(cfg)
    check_data(runner.contract, layout, artefact=cfg.run, data_dir=data)
    log.info("infer: runner=%s patches=%d%s", runner.describe(), len(ids), f" shard={cfg.shard}" if cfg.shard else "")
    # Every file is validated before any compute: a bad file costs one message, not a half-scored set.
    x, ok_ids, skipped = load_patches(data, cfg.split, ids, layout, skip_bad=cfg.skip_bad)
    for e in skipped:
        log.warning("skipped: %s", e.format())
    t0 = time.perf_counter()
    probs = run_batches(runner, x, cfg.batch_size)
    dt = time.perf_counter() - t0
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "submission.csv"
    write_submission(out, ok_ids, probs, runner.threshold, cfg.probs)
    log.info("wrote %s: %d patches, %d positive at threshold %.4f, %.1f patches/s (%.2f s)", out, len(ok_ids),
             int((probs >= runner.threshold).sum()), runner.threshold, len(ok_ids) / dt, dt)
    if skipped:
        log.warning("%d bad patch file(s) skipped (listed above)", len(skipped))
    return {"out": str(out), "n": len(ok_ids), "skipped": [e.id for e in skipped], "seconds": dt}
