"""A tiny trained + exported run shared by test_export.py, test_export_engines.py and test_runtime.py through
conftest's ``exported``/``reference`` fixtures: built once per session under pytest's base temp, then reused.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

# One arch with an upsampled optical input (@80) exercises the interpolate path of every exporter.
ARCHS = ["test_efficientnet@80"]


def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, data folder): synthetic data, 2 folds x 1 epoch of the tiny preset."""
    from landslide import train
    from landslide.config import make_config
    from landslide.synth import SynthConfig, write_dataset
    from landslide.train_config import PRESETS, TrainConfig

    base = tmp_path_factory.getbasetemp() / "export_run"
    data, run = base / "data", base / "run"
    if not (run / "calibration.json").is_file():
        write_dataset(SynthConfig(str(data), n_train=40, n_test=24, seed=0))
        train.main(make_config(TrainConfig, {**PRESETS["tiny"], "archs": ARCHS, "epochs": 1, "max_steps": 2,
                                             "data": str(data), "out": str(run), "cache_dir": str(base / "cache"),
                                             # the same run on a GPU host: CUDA training has its own tests
                                             "device": "cpu"}))
    return run, data


def exported_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny run with ``export/`` written by ``export.main`` (verified on the data's test patches)."""
    from landslide.config import make_config
    from landslide.export import ExportConfig, main

    run, data = tiny_run(tmp_path_factory)
    if not (run / "export" / "fused_fp16.onnx.json").is_file():
        main(make_config(ExportConfig, {"run": str(run), "data": str(data), "n_verify": 24}))
    return run, data


def reference_outputs(run: Path, data: Path, n: int = 24) -> tuple:
    """(fused torch ensemble, its info, ``n`` reference patches, the ensemble's probabilities on them)."""
    from landslide.ensemble import build_ensemble
    from landslide.export import onnx as ox
    from landslide.export import reference_inputs

    fused, info = build_ensemble(run)
    x = reference_inputs(info, str(data), n)
    return fused, info, x, ox.torch_run(fused, x)


def copy_artefact(src: Path, dst_dir: Path) -> Path:
    """``src`` and its sidecar copied into ``dst_dir`` (to tamper with the copy, not the shared run)."""
    import shutil

    from landslide.export.sidecar import sidecar_path

    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst_dir / src.name)
    shutil.copy(sidecar_path(src), sidecar_path(dst_dir / src.name))
    return dst_dir / src.name
