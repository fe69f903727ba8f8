#!/usr/bin/env python3
"""Export a trained run: per-fold + fused ONNX graphs (FP32, FP16), verified; optionally an engine.

    python export.py RUN_DIR [--data DIR] [--out DIR]                      # ONNX -> RUN_DIR/export/
    python export.py RUN_DIR --engine tensorrt --min-batch 1 --opt-batch 64 --max-batch 256   # GPU
    python export.py RUN_DIR --engine aoti                                 # AOTInductor .pt2 (CPU or GPU)
"""
import sys

from landslide.config import parse_config
from landslide.export import ExportConfig
from landslide.utils import run_script


def main(argv=None):
    from landslide.export import main as export_main

    return export_main(parse_config(ExportConfig, argv, __doc__, positional=("run",)))


if __name__ == "__main__":
    sys.exit(run_script(main))
