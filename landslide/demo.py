"""The quick-start job: synthetic data -> 5-fold training (demo preset) -> calibration -> submission.

``python -m landslide.demo`` (what ``make demo`` runs). Prints per-fold and overall out-of-fold F1,
the held-out test F1, and the same figures for a logistic regression on per-band means, the
baseline a CNN has to beat clearly on this data.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/synth", help="synthetic set, written when it has no Train.csv (default: %(default)s)")
    p.add_argument("--out", default="runs/demo", help="run folder, replaced on each run (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=2000, help="train patches to generate (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=600, help="test patches to generate (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> dict:
    from landslide import baseline, synth
    from landslide import infer as infer_mod
    from landslide import train as train_mod
    from landslide.calibrate import f1_at
    from landslide.config import make_config
    from landslide.io import write_json
    from landslide.train_config import PRESETS, TrainConfig
    from landslide.utils import setup_logging

    a = build_parser().parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    data, out = Path(a.data), Path(a.out)
    if not (data / "Train.csv").is_file():
        synth.write_dataset(synth.SynthConfig(str(data), a.n_train, a.n_test, seed=0))
    if out.exists():
        shutil.rmtree(out)  # the demo owns this folder; a rerun starts clean
    # The demo's preprocessed tensors live in its data folder, so `make clean-demo` removes them too
    # (in ~/.cache every fresh clone's regenerated set would add ~0.5 GB).
    cache = data / ".cache"
    cfg = make_config(TrainConfig, {**PRESETS["demo"], "preset": "demo", "data": str(data), "out": str(out),
                                    "cache_dir": str(cache)})
    cal = train_mod.main(cfg)
    res = infer_mod.main(make_config(infer_mod.InferConfig, {"run": str(out), "data": str(data), "probs": True}))
    truth = synth.read_test_labels(data)
    with open(res["out"], newline="") as f:
        sub = {r["ID"]: int(r["Target"]) for r in csv.DictReader(f)}
    ids = sorted(sub)
    y = np.array([truth[i] for i in ids])
    pred = np.array([sub[i] for i in ids], dtype=float)
    test_f1 = f1_at(y, pred, 0.5)
    base = baseline.means_logreg(data, folds_csv=out / "folds.csv", cache_dir=cache)
    wall = time.perf_counter() - t0
    summary = {"oof_f1": round(cal["oof_f1"], 4), "oof_f1_crossfit": round(cal["oof_f1_crossfit"], 4),
               "per_fold_f1": {k: round(v, 4) for k, v in cal["per_fold_f1"].items()},
               "test_f1": round(test_f1, 4), "threshold": round(cal["threshold"], 4), "weights": cal["weights"],
               "logreg_means_oof_f1": round(base["oof_f1"], 4), "logreg_means_test_f1": round(base["test_f1"], 4),
               "wall_s": round(wall, 1), "submission": res["out"]}
    write_json(out / "demo_summary.json", summary)
    print("\n=== landslide demo ===")
    print("per-fold OOF F1: " + "  ".join(f"fold {k}: {v:.4f}" for k, v in summary["per_fold_f1"].items()))
    print(f"overall OOF F1 {summary['oof_f1']:.4f} (threshold {summary['threshold']:.3f}, weights {cal['weights']}; "
          f"fitted on these rows, so an upper bound)")
    print(f"cross-fitted OOF F1 {summary['oof_f1_crossfit']:.4f} (each fold at the threshold and weights of the others)")
    print(f"held-out test F1 {summary['test_f1']:.4f}")
    print(f"baseline, logistic regression on per-band means: OOF F1 {summary['logreg_means_oof_f1']:.4f}, "
          f"test F1 {summary['logreg_means_test_f1']:.4f}")
    print(f"submission: {res['out']}   wall time {wall / 60:.1f} min")
    print(f"data: {data} (for the README's commands: --data {data}), run folder: {out}")
    return summary


if __name__ == "__main__":
    main()
