#!/usr/bin/env python3
"""Train the landslide ensemble: stratified K-fold, calibrated on out-of-fold predictions.

    python train.py --data DIR --preset full --out runs/full      # the seed recipe (GPU)
    python train.py --data DIR --preset demo --out runs/demo      # minutes on a CPU
"""
import sys

from landslide.config import parse_config
from landslide.train_config import PRESETS, TrainConfig
from landslide.utils import run_script


def main(argv=None):
    from landslide.train import main as train_main

    cfg = parse_config(TrainConfig, argv, __doc__, presets=PRESETS)
    return train_main(cfg)


if __name__ == "__main__":
    sys.exit(run_script(main))
