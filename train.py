#!/usr/bin/env python3
"""Train the landslide ensemble: stratified K-fold, calibrated on out-of-fold predictions.

    python train.py --data DIR --preset full --out runs/full      # the seed recipe (GPU)
    python train.py --data DIR --preset demo --out runs/demo      # minutes on a CPU
    python train.py --out runs/demo --resume                      # continue it: its saved config, plus
                                                                  # any flag typed (device, precision, ...)
"""
import os
import shlex
import sys
from pathlib import Path

from landslide.config import parse_config
from landslide.train_config import PRESETS, TrainConfig
from landslide.utils import run_script


def main(argv=None):
    from landslide.run_folder import saved_config
    from landslide.train import main as train_main

    cfg = parse_config(TrainConfig, argv, __doc__, presets=PRESETS)
    if cfg.resume and (saved := saved_config(cfg.out)) is not None:
        # The run's own config in the defaults' place: what is typed still wins, and a typed change to
        # what the run trains is refused by prepare_run_dir, naming the field. --only-folds is the
        # invocation's own, not the run's: --resume alone trains every fold not finished yet.
        saved.pop("only_folds", None)
        cfg = parse_config(TrainConfig, argv, __doc__, presets=PRESETS, base=saved)
    try:
        return train_main(cfg)
    except KeyboardInterrupt:
        if (Path(cfg.out) / "config.json").is_file() and os.environ.get("RANK", "0") == "0":
            # Every finished epoch is on disk (atomic state files): say how to pick it up.
            # With this invocation's --only-folds: --resume alone would train every unfinished fold.
            folds = f" --only-folds {','.join(map(str, cfg.only_folds))}" if cfg.only_folds else ""
            print(f"continue with: python train.py --out {shlex.quote(cfg.out)} --resume{folds}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(run_script(main))
