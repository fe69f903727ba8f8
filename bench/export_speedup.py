#!/usr/bin/env python3
"""Quick check: fused ONNX Runtime runner vs the looped torch baseline, on a data set's test split.

    python -m bench.export_speedup RUN_DIR --data DIR [--batch-size 64] [--repeats 3]

Patches are read once into memory (file time excluded); each runner gets one warm-up batch, then
``--repeats`` timed passes over the whole split; the best pass is reported (the host is shared, so
the best is the least disturbed). One JSON line per runner, then the speed-up over the looped baseline.
The thorough benchmark (latency percentiles, every backend) is ``bench/infer.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import onnxruntime
    import torch

    from landslide.bands import BandLayout
    from landslide.data import load_patches, read_csv
    from landslide.infer import run_batches
    from landslide.runtime.onnxruntime import OnnxRunner
    from landslide.runtime.torch import TorchRunner

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    data = Path(a.data)
    ids = read_csv(data / "Test.csv", labelled=False).ids
    x, _, _ = load_patches(data, "test", ids, BandLayout.from_dir(data))
    runners = {"torch-looped": lambda: TorchRunner(a.run, "cpu", looped=True),
               "torch-fused": lambda: TorchRunner(a.run, "cpu"),
               "onnxruntime-fused-fp32": lambda: OnnxRunner(Path(a.run) / "export" / "fused.onnx", "cpu"),
               "onnxruntime-fused-fp16": lambda: OnnxRunner(Path(a.run) / "export" / "fused_fp16.onnx", "cpu")}
    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__,
           "batch": a.batch_size, "n": len(x)}
    res = {}
    for name, make in runners.items():
        r = make()
        r.predict(x[:a.batch_size])  # warm-up (allocations, ORT graph optimisation)
        best = min(_timed(run_batches, r, x, a.batch_size) for _ in range(a.repeats))
        res[name] = len(x) / best
        print(json.dumps({"runner": name, "patches_per_s": round(res[name], 1), "seconds": round(best, 3), **env}))
    base = res["torch-looped"]
    print(f"\n{'runner':<26}{'patches/s':>12}{'vs looped':>11}")
    for name, v in res.items():
        print(f"{name:<26}{v:>12.1f}{v / base:>10.2f}x")


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
