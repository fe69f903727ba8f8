"""Recipe ablation: train variants of one preset on the same data and seeds; compare what they score.

    python -m bench.ablate --quick                                          # < 3 min on a 2-core CPU (synthetic)
    python -m bench.ablate --data /work/shared/data/bijie64 --seeds 42,43   # the loss question on real imagery
    python -m bench.ablate --data DIR --variants seed,focal_gamma=1,lr=1e-3+epochs=12

The speed benches answer "how fast"; this one answers "which recipe", for the choices a review can
only argue about. The default variants are the loss questions: the seed's focal loss weights
negatives 3:1 (α 0.25) on batches the sampler has already balanced 50/50, and focal loss on Mixup's
soft labels has its optimum away from the label. A variant is a name in ``VARIANTS`` or its own
``KEY=VALUE[+KEY=VALUE]`` overrides of ``TrainConfig`` (on top of ``--preset`` and ``--set``).

For one seed every variant trains the same folds (``folds.csv`` is a function of the labels, ``--folds``
and the seed), through ``landslide.train`` itself; a second seed changes the folds too, so the spread
between seeds includes the split's. Per run it reports, from the run folder's own files:
the OOF F1 at the calibrated threshold (fitted on those rows: an upper bound), the **cross-fitted** OOF
F1 (each fold at the threshold and weights fitted on the others: the unbiased figure; mind the seed-to-seed
spread), F1 at 0.5, log loss, Brier score, expected calibration error (10 equal-width bins) and the mean
probability of each class. Where the data folder has ``test_labels.csv`` (the synthetic sets do), it
also scores ``Test.csv`` with ``landslide.infer`` and reports the test F1 at the calibrated threshold
beside the best any threshold reaches on the test set, whose gap is the calibration's cost.
One JSON record per run goes to ``bench/results/<device>.jsonl`` and the table to
``<device>-ablate-<data>.md`` (a synthetic set: ``synth-n<N>``), rewritten after every run. ``train s``
includes the OOF pass, and for the first run on a data folder the build of its preprocessed-tensor cache.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import common
from landslide.calibrate import best_threshold, f1_at, log_loss
from landslide.config import field, make_config, parse_config
from landslide.errors import ConfigError
from landslide.train_config import PRESETS, TrainConfig

log = logging.getLogger("bench.ablate")

VARIANTS: dict[str, tuple[dict, str]] = {
    "seed": ({}, "the preset as it is (focal α 0.25 γ 2, Mixup 0.2 / CutMix 1.0 on half the batches)"),
    "focal-no-alpha": ({"focal_alpha": -1.0}, "focal γ 2 without the class weight (the sampler already balances)"),
    "bce": ({"focal_alpha": -1.0, "focal_gamma": 0.0}, "plain binary cross-entropy"),
    "no-mix": ({"mix_prob": 0.0}, "the preset without Mixup/CutMix (hard labels only)"),
}

COLUMNS = ["variant", "seed", "OOF F1 cross-fit", "OOF F1 in-sample", "F1 @0.5", "threshold", "log loss", "Brier",
           "ECE", "mean p pos/neg", "test F1", "test F1 best thr", "train s"]


# Fields bench.ablate sets per run itself: a variant that set them would be silently overwritten.
RESERVED = {"seed": "--seeds", "data": "--data", "out": "--work-dir", "device": "--device", "preset": "--preset",
            "cache_dir": "--cache-dir", "resume": "nothing (every run starts clean)",
            "only_folds": "nothing (calibration, so every figure here, needs every fold)"}


@dataclass
class AblateConfig:
    data: str = field("", "Zindi-layout folder to train on; empty = a synthetic set (with test labels) generated "
                          "into --work-dir")
    preset: str = field("demo", "train.py preset every variant starts from", choices=tuple(PRESETS))
    variants: list[str] = field([], "; ".join(f"{k}: {d}" for k, (_, d) in VARIANTS.items())
                                + "; or KEY=VALUE[+KEY=VALUE] TrainConfig overrides (a list value's items joined by "
                                  "':', e.g. archs=a:b@224); empty = the four named (--quick: seed,bce)")
    seeds: list[int] = field([42], "training seeds (each also draws the folds); every variant runs once per seed")
    set: list[str] = field([], "KEY=VALUE TrainConfig overrides for every variant (e.g. epochs=4,folds=3)")
    quick: bool = field(False, "short run (< 3 min on a 2-core CPU): a 480/120-patch synthetic set, 3 folds x 2 "
                               "epochs x 8 steps, the seed and bce variants")
    n_train: int = field(0, "synthetic train patches without --data (0 = 480 quick, 2000 full: the demo's set)")
    n_test: int = field(0, "synthetic test patches without --data (0 = 120 quick, 600 full)")
    work_dir: str = field("", "where the run folders (and a synthetic set) go, kept; default: a temporary folder, "
                              "removed at the end")
    cache_dir: str = field("", "preprocessed-tensor cache (default: train.py's; for a synthetic set, inside the work "
                               "folder, so it goes with it)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    out_dir: str = field("", "where results go (default bench/results)")


@dataclass
class Plan:
    """What a config resolves to, checked before anything is generated or trained."""

    variants: dict[str, dict]
    common_set: dict[str, str]
    n_train: int
    n_test: int


def parse_overrides(items: list[str], what: str) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict, each key a ``TrainConfig`` field (the values are checked by building
    the config). In a list field ``:`` separates items, since a comma already separates variants."""
    hints = typing.get_type_hints(TrainConfig)
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in hints:
            raise ConfigError(f"{what} {item!r}: not KEY=VALUE with KEY a train.py field",
                              fix="use train.py's field names, e.g. focal_gamma=0 (python train.py --help)")
        if key in RESERVED:
            raise ConfigError(f"{what} {item!r}: bench.ablate sets {key} for every run itself", fix=f"use {RESERVED[key]}")
        out[key] = value.replace(":", ",") if typing.get_origin(hints[key]) is list else value
    return out


def variant_overrides(name: str) -> dict:
    if name in VARIANTS:
        return dict(VARIANTS[name][0])
    if "=" in name:
        return parse_overrides(name.split("+"), "variant")
    raise ConfigError(f"unknown variant {name!r}", fix=f"use one of {', '.join(VARIANTS)} or KEY=VALUE[+KEY=VALUE]")


def plan(cfg: AblateConfig) -> Plan:
    common.check_counts(cfg, non_negative=("n_train", "n_test"))
    names = cfg.variants or (["seed", "bce"] if cfg.quick else list(VARIANTS))
    if len(set(names)) < len(names):
        raise ConfigError(f"--variants {','.join(names)}: a variant is listed twice", fix="list each once")
    common_set = parse_overrides(cfg.set, "--set")
    if cfg.quick:
        common_set = {"folds": "3", "epochs": "2", "max_steps": "8", **common_set}
    variants = {v: variant_overrides(v) for v in names}
    for over in variants.values():  # every key and value checked (types, choices) before the first run trains
        make_config(TrainConfig, {**PRESETS[cfg.preset], **common_set, **over})
    return Plan(variants, common_set, cfg.n_train or (480 if cfg.quick else 2000),
                cfg.n_test or (120 if cfg.quick else 600))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the row-weighted mean |mean p - positive rate| over equal-width bins."""
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() / len(p) * abs(float(p[m].mean()) - float(y[m].mean()))
    return err


def prob_metrics(y: np.ndarray, p: np.ndarray, thr: float) -> dict[str, float]:
    return {"f1": f1_at(y, p, thr), "f1_at_0.5": f1_at(y, p, 0.5), "log_loss": log_loss(y, p),
            "brier": float(np.mean((p - y) ** 2)), "ece": ece(y, p),
            "mean_p_pos": float(p[y == 1].mean()) if (y == 1).any() else float("nan"),
            "mean_p_neg": float(p[y == 0].mean()) if (y == 0).any() else float("nan")}


def run_metrics(run: Path) -> dict[str, float]:
    """The OOF figures of a finished run folder, from its ``oof.csv`` and ``calibration.json``."""
    cal = json.loads((run / "calibration.json").read_text())
    with open(run / "oof.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    archs = list(cal["weights"])
    probs = np.array([[float(r[f"prob_{a}"]) for a in archs] for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    p = probs @ np.array([cal["weights"][a] for a in archs])
    m = {f"oof_{k}": v for k, v in prob_metrics(y, p, cal["threshold"]).items()}
    return {**m, "threshold": cal["threshold"], "oof_f1_crossfit": cal["oof_f1_crossfit"]}


def heldout_metrics(run: Path, data: Path, device: str, thr: float) -> dict[str, float]:
    """Score ``Test.csv`` through ``landslide.infer`` and compare with ``test_labels.csv``."""
    from landslide import infer as infer_mod
    from landslide.shards import probs_path
    from landslide.synth import read_test_labels

    t0 = time.perf_counter()
    res = infer_mod.main(make_config(infer_mod.InferConfig, {"run": str(run), "data": str(data), "probs": True,
                                                             "device": device}))
    with open(probs_path(Path(res["out"])), newline="") as f:
        prob = {r["ID"]: float(r["prob"]) for r in csv.DictReader(f)}
    truth = read_test_labels(data)
    ids = sorted(prob)
    y, p = np.array([truth[i] for i in ids]), np.array([prob[i] for i in ids])
    best_thr, best_f1 = best_threshold(y, p)
    m = {f"test_{k}": v for k, v in prob_metrics(y, p, thr).items()}
    return {**m, "test_f1_best": best_f1, "test_thr_best": best_thr, "infer_s": time.perf_counter() - t0}


def _row(name: str, seed: int | str, m: dict[str, float]) -> dict:
    row = {"variant": name.replace("|", "\\|"), "seed": seed, "OOF F1 cross-fit": f"{m['oof_f1_crossfit']:.4f}",
           "OOF F1 in-sample": f"{m['oof_f1']:.4f}", "F1 @0.5": f"{m['oof_f1_at_0.5']:.4f}",
           "threshold": f"{m['threshold']:.3f}", "log loss": f"{m['oof_log_loss']:.4f}",
           "Brier": f"{m['oof_brier']:.4f}", "ECE": f"{m['oof_ece']:.4f}",
           "mean p pos/neg": f"{m['oof_mean_p_pos']:.3f} / {m['oof_mean_p_neg']:.3f}", "train s": f"{m['train_s']:.0f}"}
    if "test_f1" in m:
        row |= {"test F1": f"{m['test_f1']:.4f}", "test F1 best thr": f"{m['test_f1_best']:.4f} @{m['test_thr_best']:.3f}"}
    return row


def _mean_row(name: str, ms: list[dict[str, float]]) -> dict:
    keys = [k for k in ms[0] if all(isinstance(m.get(k), float) for m in ms)]
    mean = {k: float(np.mean([m[k] for m in ms])) for k in keys}
    return _row(name, f"mean of {len(ms)}", mean)


def main(cfg: AblateConfig) -> list[dict]:
    from landslide import synth
    from landslide import train as train_mod
    from landslide.device import resolve_device

    pl = plan(cfg)
    tmp = None if cfg.work_dir else Path(tempfile.mkdtemp(prefix="landslide-ablate-"))
    work = Path(cfg.work_dir) if cfg.work_dir else tmp
    try:
        data = Path(cfg.data) if cfg.data else work / "synth"
        cache_dir = cfg.cache_dir
        if not cfg.data:
            if not (data / "Train.csv").is_file():
                synth.write_dataset(synth.SynthConfig(str(data), pl.n_train, pl.n_test, seed=0))
            # train.py's default cache is keyed by the data path: a temporary set's entry would never be read again
            cache_dir = cache_dir or str(work / "cache")
        labelled_test = (data / "test_labels.csv").is_file()
        tag = data.resolve().name if cfg.data else f"synth-n{pl.n_train}"
        env = common.environment(resolve_device(cfg.device))
        out = Path(cfg.out_dir or common.RESULTS_DIR)
        what = str(data) if cfg.data else f"synthetic set ({pl.n_train} train / {pl.n_test} labelled test patches)"
        head = (f"# bench.ablate — {what}, preset {cfg.preset}"
                f"{' + ' + ','.join(f'{k}={v}' for k, v in pl.common_set.items()) if pl.common_set else ''}\n\n"
                f"`{common.command_line('bench.ablate')}`; {env['device_name']}; the cross-fitted OOF F1 is the unbiased "
                f"one (the in-sample one is fitted on the rows it scores)\n\n")
        records, rows, per_variant = [], [], {}
        for i, (name, over) in enumerate(pl.variants.items()):
            for seed in cfg.seeds:
                run_name = f"{i:02d}-{_slug(name)}-s{seed}"  # the index keeps e.g. a@80 and a_80 apart
                run = work / "runs" / run_name
                values = {**PRESETS[cfg.preset], **pl.common_set, **over, "preset": cfg.preset, "data": str(data),
                          "out": str(run), "seed": seed, "device": cfg.device}
                if cache_dir:
                    values["cache_dir"] = cache_dir
                if run.exists():
                    shutil.rmtree(run)  # this bench owns its run folders; a rerun starts clean
                log.info("variant %s seed %d: %s", name, seed, VARIANTS[name][1] if name in VARIANTS else over)
                t0 = time.perf_counter()
                train_mod.main(make_config(TrainConfig, values))
                m = {**run_metrics(run), "train_s": time.perf_counter() - t0}
                if labelled_test:
                    m |= heldout_metrics(run, data, cfg.device, m["threshold"])
                per_variant.setdefault(name, []).append(m)
                conf = {"data": str(data), "preset": cfg.preset, "set": pl.common_set, "overrides": over, "seed": seed,
                        "quick": cfg.quick, "run": run_name,
                        **({} if cfg.data else {"n_train": pl.n_train, "n_test": pl.n_test})}
                rec = common.record("ablate", name, env, conf, metrics=m)
                records.append(rec)
                rows.append(_row(name, seed, m))
                # after every run (and printed), so a bench cut off keeps the runs that finished
                common.append_jsonl(common.results_path(env, out), [rec])
                common.write_text(out / f"{env['device_slug']}-ablate-{tag}.md", head + _table(rows, per_variant) + "\n")
        print(head + _table(rows, per_variant))
        return records
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _table(rows: list[dict], per_variant: dict[str, list[dict]]) -> str:
    means = [_mean_row(n, ms) for n, ms in per_variant.items() if len(ms) > 1]
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    return common.format_table(rows + means, cols)


if __name__ == "__main__":
    from landslide.utils import run_script

    sys.exit(run_script(lambda argv: main(parse_config(AblateConfig, argv, __doc__.split("\n")[0]))))
