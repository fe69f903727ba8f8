"""Compiled artefacts: the AOTInductor package (built, served, found, refused when stale or tampered) and the
TensorRT engine (GPU hosts with TensorRT only; without it, export refuses up front)."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from landslide.contract import file_sha256
from landslide.errors import ConfigError, ContractError
from landslide.export import ExportConfig
from landslide.export.sidecar import read_sidecar, sidecar_path

from export_helpers import copy_artefact


@pytest.mark.slow
def test_aoti_build_and_run(exported, reference, tmp_path):
    from landslide.export.aoti import build_package
    from landslide.export.sidecar import run_hash
    from landslide.runtime.aoti import AotiRunner

    run, _ = exported
    fused, info, x, ref = reference
    fused = copy.deepcopy(fused)  # build_package moves it to the package's device; the fixture stays on the CPU
    host = "cuda" if torch.cuda.is_available() else "cpu"
    if host == "cuda":
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None:  # export.py refuses this up front (tested on the CPU path); build_package is below it
            pytest.skip("AOTInductor for CUDA needs the CUDA toolkit (CUDA_HOME) and none was found")
    # Verified over x in batches of 16 (the profile's max) and a last one of 7, padded to the min of 8.
    path = build_package(fused, info, run_hash(info), tmp_path / "engines", (8, 8, 16), x[:23], ref[:23])
    assert path.suffix == ".pt2" and read_sidecar(path, kind="aoti")["device"] == host
    runner = AotiRunner(path)
    got = np.concatenate([runner.predict(x[s:s + 16]) for s in range(0, len(x), 16)])
    assert np.abs(got - ref).max() <= (1e-5 if host == "cpu" else 1e-4)  # the runner keeps cuDNN's TF32
    one = runner.predict(x[:1])  # under the profile's minimum: padded, one probability back
    assert one.shape == (1,) and abs(one[0] - got[0]) <= (1e-6 if host == "cpu" else 1e-4)  # TF32: per-shape kernels
    with pytest.raises(ContractError, match="profile"):
        runner.predict(x[:1].repeat(17, 0))
    # A run folder finds the package built from it in the engine folder.
    from landslide.config import make_config
    from landslide.infer import InferConfig, make_runner

    found = make_runner(make_config(InferConfig, {"run": str(run), "backend": "aoti",
                                                  "engine_dir": str(tmp_path / "engines")}))
    assert found.name == "aoti" and found.path == path
    # Scored directly, the package's submission goes to the run it was built from, not the shared cache.
    from landslide.infer import main as infer_main

    wrote = infer_main(make_config(InferConfig, {"run": str(path), "data": str(exported[1]), "batch_size": 16}))
    assert wrote["out"] == str(run.resolve() / "submission.csv") and not list(path.parent.glob("submission*"))
    # --no-onnx: the package alone (found again and re-verified here), no ONNX graph traced or written.
    from landslide.export import main as export_main

    made = export_main(make_config(ExportConfig, {
        "run": str(run), "engine": "aoti", "onnx": False, "out": str(tmp_path / "x"), "n_verify": 16,
        "engine_dir": str(tmp_path / "engines"), "min_batch": 8, "opt_batch": 8, "max_batch": 16}))
    assert made == {"engine": str(path)} and not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--no-onnx leaves nothing"):
        export_main(make_config(ExportConfig, {"run": str(run), "onnx": False}))
    # Built again with the same key: reused, not recompiled (same bytes).
    sha = file_sha256(path)
    assert build_package(fused, info, run_hash(info), tmp_path / "engines", (8, 8, 16), x, ref) == path
    assert file_sha256(path) == sha
    side = json.loads(sidecar_path(path).read_text())
    side["versions"]["torch"] = "0.0.1"
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ContractError, match="torch 0.0.1") as e:
        AotiRunner(path)
    assert str(e.value).endswith(f"Fix: rebuild it: python export.py {run.resolve()} --engine aoti --engine-dir "
                                 f"{path.parent} --min-batch 8 --opt-batch 8 --max-batch 16 --rebuild")
    # A tampered package: the fix names the real run, engine folder and profile, and forces the rebuild.
    tampered = copy_artefact(path, tmp_path / "tampered")
    tampered.write_bytes(tampered.read_bytes()[:-1] + bytes([tampered.read_bytes()[-1] ^ 0xFF]))
    with pytest.raises(ContractError, match="sha256") as e:
        AotiRunner(tampered)
    assert str(e.value).endswith(f"python export.py {run.resolve()} --engine aoti --engine-dir {tampered.parent} "
                                 "--min-batch 8 --opt-batch 8 --max-batch 16 --rebuild")
    # A package built for the other device (by this torch) is not picked for this host, and the error says why.
    side["versions"]["torch"] = torch.__version__
    side["device"] = "cpu" if host == "cuda" else "cuda"
    sidecar_path(path).write_text(json.dumps(side))
    why = f"no aoti engine built from this run.*compiled for {side['device']}, serving on {host}"
    with pytest.raises(ConfigError, match=why):
        make_runner(make_config(InferConfig, {"run": str(run), "backend": "aoti",
                                              "engine_dir": str(tmp_path / "engines")}))


# Skipped before its fixtures run: they train and export a run, time a GPU check can't spare for nothing.
@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (GPU hosts only: pip install tensorrt)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
def test_tensorrt_engine(exported, reference, tmp_path):
    from landslide.export.tensorrt import build_engine
    from landslide.runtime.tensorrt import TensorRTRunner

    run, _ = exported
    _, info, x, ref = reference
    path = build_engine(run / "export", tmp_path / "engines", (1, 8, 16), x, ref)
    got = np.concatenate([TensorRTRunner(path).predict(x[s:s + 16]) for s in range(0, len(x), 16)])
    assert np.abs(got - ref).max() <= 1e-2
    side = json.loads(sidecar_path(path).read_text())
    side["gpu"] = "Some Other GPU"
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ContractError, match="Some Other GPU"):
        TensorRTRunner(path)


def test_tensorrt_export_without_tensorrt_fails_fast(exported):
    import subprocess
    import sys

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    run, _ = exported
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "export.py", str(run), "--engine", "tensorrt", "--out", str(run / "x")],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "pip install tensorrt" in p.stderr
    assert not (run / "x").exists()  # nothing exported before the check
