#!/usr/bin/env python3
"""Score a test set: every fold and architecture, 4-way flip TTA, calibrated weights and threshold.

    python infer.py RUN_DIR --data DIR [--backend auto|torch] [--batch-size N] [--probs] [--shard i/n]
"""
import sys

from landslide.config import parse_config
from landslide.infer import InferConfig
from landslide.utils import run_script


def main(argv=None):
    from landslide.infer import main as infer_main

    return infer_main(parse_config(InferConfig, argv, __doc__, positional=("run",)))


if __name__ == "__main__":
    sys.exit(run_script(main))
