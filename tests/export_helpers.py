"""A tiny trained + exported run shared by test_export.py, test_export_engines.py and test_runtime.py through
conftest's ``exported``/``reference`` fixtures: built once per session under pytest's base temp, then reused.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402  (after the thread count, which numpy's BLAS reads when loaded)

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


def old_export(run: Path, tmp_path: Path, name: str) -> tuple[Path, dict[str, bytes]]:
    """A copy of one of the run's graphs and its sidecar in ``tmp_path/export``, as a previous export left
    them, and the folder's bytes by file name."""
    path = copy_artefact(run / "export" / name, tmp_path / "export")
    return path, {p.name: p.read_bytes() for p in path.parent.iterdir()}


def unchanged(path: Path, before: dict[str, bytes]) -> None:
    """The folder holds exactly the old files (no temp file or folder), byte for byte, and the graph loads."""
    from landslide.export.onnx import ort_run
    from landslide.export.sidecar import read_sidecar

    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before
    shape = read_sidecar(path)["input"]["shape"][1:]
    assert ort_run(path, np.zeros((1, *shape), np.float32)).shape == (1,)


def export_script(monkeypatch, *argv: str) -> int:
    """``python export.py ARGV``'s exit code, run in-process (no second torch import): export.py loaded as a
    module, its main under ``run_script``, whose logging set-up (which would replace pytest's handlers) is off."""
    import importlib.util

    from landslide import utils

    spec = importlib.util.spec_from_file_location("export_script", Path(__file__).resolve().parents[1] / "export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(utils, "setup_logging", lambda: None)
    return utils.run_script(script.main, list(argv))


def linear_graph(path: Path, per_weight_files: bool) -> np.ndarray:
    """A small y = x @ W + b graph saved the way the exporter saves one over 2 GB (a file per weight)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(256, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)  # W: 4 KB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path), save_as_external_data=per_weight_files, all_tensors_to_one_file=False,
                    size_threshold=0)
    return np.ones((2, 256), np.float32) @ w + b
