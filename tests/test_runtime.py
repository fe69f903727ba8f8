"""Runners and infer: provider checks, backend resolution, sharding, bad files, the Predictor API."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from landslide.config import make_config
from landslide.errors import BadFilesError, ConfigError, DataError
from landslide.infer import InferConfig, make_runner
from landslide.infer import main as infer_main

ROOT = Path(__file__).resolve().parents[1]


def _probs(path: Path) -> dict[str, float]:
    with open(path) as f:
        return {r["ID"]: float(r["prob"]) for r in csv.DictReader(f)}


def _infer(run, data, out: Path, **kw) -> dict[str, float]:
    """infer on the CPU unless ``device`` is given: on a GPU host, auto's torch runner would run TF32 convolutions."""
    infer_main(make_config(InferConfig, {"run": str(run), "data": str(data), "out": str(out), "probs": True,
                                         "device": "cpu", **kw}))
    return _probs(out.with_name(out.stem + "_probs.csv"))


def test_ort_cuda_provider_refused_on_cpu_host(exported):
    import onnxruntime as ort

    from landslide.runtime.onnxruntime import OnnxRunner

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host's onnxruntime has the CUDA EP")
    run, _ = exported
    with pytest.raises(ConfigError, match="CUDAExecutionProvider") as e:
        OnnxRunner(run / "export" / "fused.onnx", "cuda")
    assert "pip install onnxruntime-gpu" in str(e.value)
    with pytest.raises(ConfigError, match="TensorrtExecutionProvider"):
        OnnxRunner(run / "export" / "fused.onnx", "tensorrt")


def test_ort_provider_follows_device(exported, monkeypatch):
    """On a GPU host with onnxruntime-gpu, --device cpu keeps ONNX Runtime on the CPU (auto) and refuses a
    GPU provider asked for beside it, instead of running on the GPU anyway; --device cuda without a CUDA EP
    is refused, instead of running on the CPU."""
    import onnxruntime as ort
    import torch

    from landslide.runtime.onnxruntime import OnnxRunner, auto_provider

    run, _ = exported
    graph = run / "export" / "fused.onnx"
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
        assert auto_provider("cpu") == "cpu"
        assert auto_provider("auto") == "cuda"
        # The other way round: --device cuda with an onnxruntime that has no CUDA EP is refused, not run on the CPU.
        m.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
        with pytest.raises(ConfigError, match="--device cuda asked for, but this onnxruntime build has no CUDA provider"):
            OnnxRunner(graph, device="cuda")
        assert OnnxRunner(graph, "cpu", device="cuda").provider == "cpu"  # the CPU EP named: honoured
    with pytest.raises(ConfigError, match="--provider cuda runs on a GPU, and --device cpu was asked for"):
        OnnxRunner(graph, "cuda", device="cpu")
    assert OnnxRunner(graph, device="cpu").provider == "cpu"


def test_ort_reports_providers_used(exported):
    from landslide.runtime.onnxruntime import OnnxRunner

    run, _ = exported
    r = OnnxRunner(run / "export" / "fused.onnx", "cpu")
    assert r.providers_used == ["CPUExecutionProvider"]
    assert "providers used=['CPUExecutionProvider']" in r.describe()


def test_pad_batch_repeats_the_last_patch_up_to_the_minimum():
    from landslide.runtime import pad_batch

    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    p = pad_batch(x, 5)
    assert p.shape == (5, 2) and (p[:3] == x).all() and (p[3:] == x[-1]).all()
    assert pad_batch(x, 3) is x and pad_batch(x, 1) is x


def test_tensorrt_ep_options_pin_one_profile_and_cache_engines(exported):
    """The options the TensorRT EP gets (it cannot start on this host): one explicit batch profile over
    the sidecar's input, engine and timing caches beside the graph; the CUDA EP only its device."""
    from landslide.export.sidecar import read_sidecar
    from landslide.runtime.onnxruntime import TRT_MAX_BATCH, provider_options

    run, _ = exported
    graph = run / "export" / "fused.onnx"
    side = read_sidecar(graph, kind="onnx-fused")
    c = side["contract"]["input_shape"][-1]
    o = provider_options("tensorrt", 1, graph, side, batch_size=32)
    assert o["device_id"] == 1
    assert o["trt_profile_min_shapes"] == f"patches:1x64x64x{c}"
    assert o["trt_profile_opt_shapes"] == f"patches:32x64x64x{c}"
    assert o["trt_profile_max_shapes"] == f"patches:{TRT_MAX_BATCH}x64x64x{c}"
    assert provider_options("tensorrt", 0, graph, side, batch_size=1000)["trt_profile_max_shapes"].startswith("patches:1000x")
    assert o["trt_engine_cache_enable"] and o["trt_timing_cache_enable"]
    assert Path(o["trt_engine_cache_path"]).parent == graph.parent == Path(o["trt_timing_cache_path"]).parent
    assert provider_options("cuda", 2, graph, side) == {"device_id": 2}


def test_backend_resolution(exported, tmp_path, monkeypatch):
    import onnxruntime as ort
    import torch

    from landslide import device
    from landslide.infer import resolve_artefact

    run, _ = exported
    cfg = lambda **kw: make_config(InferConfig, {"run": str(run), **kw})  # noqa: E731
    assert make_runner(cfg(device="cpu")).name == "onnxruntime-cpu"  # auto: the run's export/ graph
    # On a GPU host whose onnxruntime is the CPU build, auto keeps the ensemble on the GPU (torch).
    with monkeypatch.context() as m:
        m.setattr(device, "resolve_device", lambda requested="auto": torch.device("cuda"))
        ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        assert resolve_artefact(cfg())[0] == ("onnxruntime" if ort_cuda else "torch")
        assert resolve_artefact(cfg(provider="cpu"))[0] == "onnxruntime"  # asked for: honoured
    assert make_runner(cfg(backend="torch")).name == "torch-fused"
    fp16 = make_runner(cfg(backend="onnxruntime", precision="fp16"))
    assert fp16.sidecar["precision"] == "fp16"
    graph = str(run / "export" / "fused.onnx")
    assert make_runner(make_config(InferConfig, {"run": graph, "device": "cpu"})).name == "onnxruntime-cpu"
    with pytest.raises(ConfigError, match="--backend aoti cannot run a .onnx"):
        make_runner(make_config(InferConfig, {"run": graph, "backend": "aoti"}))
    with pytest.raises(ConfigError, match="TensorRT runs on a CUDA GPU, and --device cpu was asked for"):
        make_runner(cfg(backend="tensorrt", device="cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="TensorRT runs on a CUDA GPU, and this host has none"):
            make_runner(cfg(backend="tensorrt"))
    bare = tmp_path / "bare"  # a run without export/: auto is the torch reference
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("export"))
    assert make_runner(make_config(InferConfig, {"run": str(bare)})).name == "torch-fused"
    with pytest.raises(ConfigError, match="python export.py"):
        make_runner(make_config(InferConfig, {"run": str(bare), "backend": "onnxruntime"}))


def test_a_stale_export_is_never_scored_for_its_run(exported, tmp_path, caplog):
    """export/ graphs carry the hash of the run they were built from. A copied (moved) run keeps using them;
    once its calibration (or a checkpoint) changes, or an export is copied in from another run, auto scores
    the checkpoints with torch and says why, and --backend onnxruntime is refused."""
    from landslide.errors import ContractError

    run, _ = exported
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    cfg = lambda **kw: make_config(InferConfig, {"run": str(moved), "device": "cpu", **kw})  # noqa: E731
    fresh = make_runner(cfg())
    assert fresh.name == "onnxruntime-cpu"
    assert fresh.source_hash == make_runner(cfg(backend="torch")).source_hash  # one model, two backends
    cal = json.loads((moved / "calibration.json").read_text())
    (moved / "calibration.json").write_text(json.dumps({**cal, "threshold": 0.123}))
    import landslide.export.sidecar as sc

    real_hash, calls = sc.run_hash, []
    with caplog.at_level("WARNING", logger="landslide.infer"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sc, "run_hash", lambda info: calls.append(1) or real_hash(info))
        runner = make_runner(cfg())
        # The stale check hashed the checkpoints; a shard's record of the torch runner reuses that hash.
        assert runner.source_hash != fresh.source_hash and len(calls) == 1
    assert runner.name == "torch-fused" and runner.threshold == pytest.approx(0.123)
    assert "export/fused.onnx skipped" in caplog.text and f"python export.py {moved}" in caplog.text
    with pytest.raises(ContractError, match="fused.onnx is not this run's ensemble") as e:
        make_runner(cfg(backend="onnxruntime"))
    assert e.value.fix == f"export the run again: python export.py {moved}"


def test_the_default_engine_folder_is_the_repositorys_from_any_current_folder(exported, tmp_path, monkeypatch):
    """export and infer meet in ROOT/engines wherever they run; the fix names the folder given, if any."""
    from landslide.contract import engine_dir
    from landslide.errors import MissingArtefactError
    from landslide.export import ExportConfig
    from landslide.infer import resolve_artefact

    run, _ = exported
    monkeypatch.chdir(tmp_path)
    assert engine_dir(make_config(ExportConfig, {}).engine_dir) == ROOT / "engines"
    with pytest.raises(MissingArtefactError, match=f"in {ROOT / 'engines'}/") as e:
        resolve_artefact(make_config(InferConfig, {"run": str(run), "backend": "aoti", "engine_dir": ""}))
    assert e.value.fix.startswith(f"python export.py {run} --engine aoti (or, for one exported with --engine-dir")
    with pytest.raises(MissingArtefactError, match=f"in {tmp_path / 'mine'}/") as e:
        resolve_artefact(make_config(InferConfig, {"run": str(run), "backend": "aoti", "engine_dir": str(tmp_path / "mine")}))
    assert e.value.fix == f"python export.py {run} --engine aoti --engine-dir {tmp_path / 'mine'}"


def test_precision_is_the_artefacts_own_or_refused(exported, tmp_path, caplog):
    """--precision auto takes what the artefact was built at; a precision it was not built at is refused
    (not run at its own one under the asked-for name), and bf16 with auto goes to the backend that has it."""
    import torch

    from landslide.infer import resolve_artefact

    run, _ = exported
    cfg = lambda **kw: make_config(InferConfig, {"run": str(run), "device": "cpu", **kw})  # noqa: E731
    assert make_runner(cfg()).precision == "fp32"
    with caplog.at_level("WARNING", logger="landslide.runtime.onnxruntime"):
        assert make_runner(cfg(precision="fp16")).describe().startswith("onnxruntime-cpu (fused_fp16.onnx")
    assert "FP32 between casts, slower than the FP32 graph" in caplog.text
    caplog.clear()
    make_runner(cfg())
    assert "between casts" not in caplog.text  # the FP32 graph: nothing to say
    bf16 = make_runner(cfg(precision="bf16"))  # ONNX Runtime has no bf16 graph: auto takes torch
    assert (bf16.name, bf16.precision) == ("torch-fused", "bf16")
    assert resolve_artefact(cfg(precision="bf16"))[2].startswith("--precision bf16")  # not "the run has no export/"
    # Refused before any lookup, even where the artefact is missing: exporting it (as a MissingArtefactError
    # would have said) could not give that precision either.
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("export"))
    for backend, precision, can in (("onnxruntime", "bf16", "fp32|fp16"), ("aoti", "fp16", "fp32")):
        for folder in (run, bare):
            with pytest.raises(ConfigError, match=f"--precision {precision}: the {backend} backend computes at {can}"):
                make_runner(make_config(InferConfig, {"run": str(folder), "device": "cpu", "backend": backend,
                                                      "precision": precision, "engine_dir": str(tmp_path / "none")}))
    fp16_graph = str(run / "export" / "fused_fp16.onnx")
    assert make_runner(make_config(InferConfig, {"run": fp16_graph, "device": "cpu"})).precision == "fp16"
    with pytest.raises(ConfigError, match="--precision fp32 asked for, .* computes at fp16") as e:
        make_runner(make_config(InferConfig, {"run": fp16_graph, "device": "cpu", "precision": "fp32"}))
    assert "drop --precision" in str(e.value)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="the torch backend runs fp16 on a CUDA GPU only") as e:
            make_runner(cfg(backend="torch", precision="fp16"))
        assert e.value.fix.startswith("on a CPU, --backend onnxruntime --precision fp16")  # the run has its graph
        with pytest.raises(ConfigError, match="the torch backend runs fp16 on a CUDA GPU only") as e:
            make_runner(make_config(InferConfig, {"run": str(bare), "precision": "fp16"}))
        assert e.value.fix.startswith(f"on a CPU, python export.py {bare}, then --backend onnxruntime")


def test_auto_passes_over_a_tensorrt_engine_built_for_another_gpu(exported, tmp_path, monkeypatch, caplog):
    """On a GPU host with TensorRT, auto takes the run's engine only when it was built for this GPU and this
    TensorRT; otherwise it says why in the log and takes the next backend (no load that then refuses)."""
    import importlib.machinery
    import json
    import logging
    import sys
    import types

    import torch

    import landslide.runtime.tensorrt as rt_trt
    from landslide import device
    from landslide.ensemble import read_run
    from landslide.export.sidecar import run_hash, sidecar_path
    from landslide.infer import resolve_artefact

    run, _ = exported
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.__spec__ = "10.13.0", importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(device, "resolve_device", lambda requested="auto": torch.device("cuda"))
    monkeypatch.setattr(rt_trt, "gpu_name", lambda: "Fake GPU")
    engines = tmp_path / "engines"
    engines.mkdir()
    side = {"source_run": str(run.resolve()), "source_hash": run_hash(read_run(run)), "gpu": "Other GPU",
            "versions": {"tensorrt": "10.13.0"}}
    (engines / "fused-a.engine").write_bytes(b"plan")
    sidecar_path(engines / "fused-a.engine").write_text(json.dumps(side))
    cfg = make_config(InferConfig, {"run": str(run), "engine_dir": str(engines)})
    with caplog.at_level(logging.WARNING, logger="landslide.infer"):
        backend, _, _ = resolve_artefact(cfg)
    assert backend != "tensorrt"
    assert "fused-a.engine: engine built for Other GPU, this GPU is Fake GPU" in caplog.text
    sidecar_path(engines / "fused-a.engine").write_text(json.dumps({**side, "gpu": "Fake GPU"}))
    assert resolve_artefact(cfg)[:2] == ("tensorrt", engines / "fused-a.engine")
    # An engine passed over, then the export's staleness checked: the checkpoints are hashed once for both.
    sidecar_path(engines / "fused-a.engine").write_text(json.dumps(side))
    import landslide.export.sidecar as sc
    calls = []
    monkeypatch.setattr(sc, "run_hash", lambda info: calls.append(1) or run_hash(info))
    assert resolve_artefact(cfg)[0] != "tensorrt" and len(calls) == 1
    # A TensorRT too old to use, installed beside: auto says so and takes the next backend; asked for, refused.
    trt.__version__ = "8.6.1"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="landslide.infer"):
        assert resolve_artefact(cfg)[0] != "tensorrt"
    assert "tensorrt skipped: TensorRT 8.6.1 is too old" in caplog.text
    for folder in (engines, tmp_path / "none"):  # with or without an engine from this run, the version is the answer
        with pytest.raises(ConfigError, match="TensorRT 8.6.1 is too old"):
            resolve_artefact(make_config(InferConfig, {"run": str(run), "engine_dir": str(folder), "backend": "tensorrt"}))


def test_sharded_inference_equals_unsharded(exported, tmp_path):
    from landslide.shards import probs_path, shard_path

    run, data = exported
    whole = _infer(run, data, tmp_path / "all.csv", batch_size=5)
    out = tmp_path / "sub.csv"
    for i in (0, 1):
        got = infer_main(make_config(InferConfig, {"run": str(run), "data": str(data), "out": str(out), "probs": True,
                                                   "shard": f"{i}/2", "batch_size": 5, "device": "cpu"}))
        # Each shard has its own file: neither overwrites the other nor the full submission.
        assert got["out"] == str(shard_path(out, i, 2)) == str(tmp_path / f"sub.shard{i}of2.csv")
        assert got["probs"] == str(tmp_path / f"sub_probs.shard{i}of2.csv")
    assert not out.exists()
    parts = {**_probs(shard_path(probs_path(out), 0, 2)), **_probs(shard_path(probs_path(out), 1, 2))}
    assert list(parts) == list(whole) and parts == whole  # same IDs, same order once concatenated
    made = infer_main(make_config(InferConfig, {"run": str(run), "data": str(data), "out": str(out),
                                                "merge_shards": True}))
    calibrated = json.loads((run / "calibration.json").read_text())["threshold"]
    assert made == {"out": str(out), "n": len(whole), "shards": 2, "probs": str(probs_path(out)), "threshold": calibrated}
    assert _probs(probs_path(out)) == whole and list(_probs(probs_path(out))) == list(whole)
    assert out.read_text() == (tmp_path / "all.csv").read_text()


def test_onnx_infer_matches_torch_infer(exported, tmp_path):
    run, data = exported
    onnx = _infer(run, data, tmp_path / "o.csv", backend="onnxruntime")
    ref = _infer(run, data, tmp_path / "t.csv", backend="torch")
    assert list(onnx) == list(ref)
    assert max(abs(onnx[k] - ref[k]) for k in ref) <= 2e-6  # the CSV keeps 6 decimals


def test_bad_files_named_or_skipped(exported, tmp_path):
    run, data = exported
    d = tmp_path / "d"
    shutil.copytree(data, d)
    victims = sorted((d / "test_data").glob("*.npy"))[:2]
    victims[0].write_bytes(b"not a npy")
    victims[1].unlink()
    with pytest.raises(BadFilesError) as e:
        _infer(run, d, tmp_path / "x.csv", batch_size=4)
    assert all(v.stem in str(e.value) for v in victims)
    assert not (tmp_path / "x.csv").exists()
    got = _infer(run, d, tmp_path / "y.csv", batch_size=4, skip_bad=True)
    full = _infer(run, data, tmp_path / "z.csv", batch_size=4)
    assert set(full) - set(got) == {v.stem for v in victims}
    assert all(got[k] == full[k] for k in got)


def test_predictor_matches_infer(exported, tmp_path):
    from landslide import Predictor

    run, data = exported
    ref = _infer(run, data, tmp_path / "p.csv", device="cpu")
    p = Predictor(run, device="cpu")  # a GPU host may pick torch (onnxruntime without its CUDA EP)
    assert p.backend == "onnxruntime" and "backend='onnxruntime'" in repr(p) and str(run) in repr(p)  # auto's pick
    assert Predictor(run, backend="torch").backend == "torch"
    ids, probs = p.predict_dir(data)
    assert ids == list(ref)
    assert np.abs(probs - np.array(list(ref.values()))).max() <= 1e-6
    x = np.load(data / "test_data" / f"{ids[0]}.npy")
    assert abs(float(p.predict(x)) - probs[0]) <= 1e-6          # one patch -> a scalar
    assert p.predict(np.stack([x, x])).shape == (2,)
    with pytest.raises(Exception, match="expected"):
        p.predict(x[:32])
    assert p.predict(np.zeros((0, *x.shape), np.float32)).shape == (0,)
    nan, big = x.copy(), x.astype(np.float64)
    nan[3, 4, 0] = np.nan
    big[0, 0, 1] = 1e300  # beyond float32: inf once cast
    with pytest.raises(DataError, match=r"2 patch\(es\) hold NaN/Inf .* at index 1, 2"):
        p.predict(np.stack([x, nan, big]))
    with pytest.raises(ConfigError, match="--batch-size 0"):
        Predictor(run, device="cpu", batch_size=0)


def test_predictor_keeps_torchs_cuda_home_warning_out_of_the_callers_log(exported):
    import logging

    from landslide import Predictor
    from landslide.utils import _not_cuda_home_noise

    cpp = logging.getLogger("torch.utils.cpp_extension")
    # As in a fresh process that never ran a script's setup_logging:
    for f in [f for f in cpp.filters if f is _not_cuda_home_noise]:
        cpp.removeFilter(f)
    Predictor(exported[0], device="cpu")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    cpp.addHandler(handler)  # torch's own loggers may not propagate to the root (and caplog)
    try:
        cpp.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        cpp.warning("a real C++ build failure")
    finally:
        cpp.removeHandler(handler)
    assert seen == ["a real C++ build failure"]


def test_predict_dir_names_what_it_skips(exported, tmp_path, caplog):
    from landslide import Predictor

    run, data = exported
    d = tmp_path / "d"
    shutil.copytree(data, d)
    victim = sorted((d / "test_data").glob("*.npy"))[1]
    victim.write_bytes(b"not a npy")
    with caplog.at_level("WARNING", logger="landslide.predictor"):
        ids, probs = Predictor(run, device="cpu").predict_dir(d, skip_bad=True)
    assert victim.stem not in ids and len(ids) == len(probs) == len(list(data.glob("test_data/*.npy"))) - 1
    assert f"skipped: {victim}" in caplog.text or victim.stem in caplog.text
    assert "1 bad patch file(s) skipped" in caplog.text


def test_flags_the_backend_would_ignore_are_refused(exported, tmp_path):
    run, data = exported
    cfg = lambda **kw: make_config(InferConfig, {"run": str(run), "device": "cpu", **kw})  # noqa: E731
    with pytest.raises(ConfigError, match=r"--compile on is the torch backend's, and onnxruntime is what auto chose"):
        make_runner(cfg(compile="on"))
    with pytest.raises(ConfigError, match="--compile on is the torch backend's, and onnxruntime was asked for"):
        make_runner(cfg(compile="on", backend="onnxruntime"))
    with pytest.raises(ConfigError, match="--provider cpu is onnxruntime's, and torch was asked for") as e:
        make_runner(cfg(provider="cpu", backend="torch"))
    assert "add --backend onnxruntime" in e.value.fix
    for bs in (0, -3):
        with pytest.raises(ConfigError, match=f"--batch-size {bs}"):
            infer_main(make_config(InferConfig, {"run": str(run), "data": str(data), "batch_size": bs,
                                                 "out": str(tmp_path / "s.csv")}))
    assert not (tmp_path / "s.csv").exists()


def test_an_output_folder_that_cannot_be_made_is_refused_before_scoring(exported, tmp_path, monkeypatch):
    from landslide import infer

    run, data = exported
    monkeypatch.setattr(infer, "make_runner", lambda *a, **k: pytest.fail("a runner built before --out was checked"))
    # /proc takes no new folders, not even root's (a read-only permission bit would not stop root, as CI runs).
    with pytest.raises(ConfigError, match="cannot make the output's folder") as e:
        infer_main(make_config(InferConfig, {"run": str(run), "data": str(data), "out": "/proc/landslide-x/s.csv"}))
    assert "/proc/landslide-x" in str(e.value) and "Fix:" in str(e.value)
    # A folder that does not exist yet is made up front (and the submission lands in it).
    monkeypatch.undo()
    out = tmp_path / "new" / "deeper" / "s.csv"
    infer_main(make_config(InferConfig, {"run": str(run), "data": str(data), "out": str(out), "device": "cpu"}))
    assert out.is_file()


def test_import_landslide_is_light():
    code = "import sys, landslide; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_bad_headers_fail_before_any_compute(exported, tmp_path):
    from landslide.infer import score
    from landslide.runtime import Runner

    class Boom(Runner):
        def predict(self, x):
            raise AssertionError("compute ran before the bad files were reported")

    _, data = exported
    d = tmp_path / "d"
    shutil.copytree(data, d)
    files = sorted((d / "test_data").glob("*.npy"))
    np.save(files[-1], np.zeros((64, 64, 3)))                 # last file: wrong channel count
    files[-2].write_bytes(files[-2].read_bytes()[:-8])         # truncated
    ids = [f.stem for f in files]
    with pytest.raises(BadFilesError) as e:
        score(Boom(), d, "test", ids, 4, skip_bad=False)
    assert files[-1].stem in str(e.value) and files[-2].stem in str(e.value)
    # NaN is only visible in the values: found while streaming, still named, still no submission.
    x = np.load(files[0])
    x[0, 0, 0] = np.nan
    np.save(files[0], x)
    with pytest.raises(BadFilesError, match="NaN"):
        score(Boom(), d, "test", ids[:4], 4, skip_bad=False)
    # Header errors and a NaN together: all three in one message, in the order of the IDs given.
    with pytest.raises(BadFilesError) as e:
        score(Boom(), d, "test", ids, 4, skip_bad=False)
    lines = str(e.value).splitlines()
    assert lines[0] == "3 bad patch file(s), one line per file:"
    assert [line.split(", ID ")[1].split(":")[0] for line in lines[1:4]] == [ids[0], ids[-2], ids[-1]]
    assert "NaN/Inf" in lines[1] and "cannot read .npy" in lines[2] and "3 channels" in lines[3]
    assert lines[4].startswith("Fix: ") and "--skip-bad" in lines[4] and len(lines) == 5


def test_other_bands_are_refused_before_a_model_is_loaded(exported, tmp_path, monkeypatch):
    from landslide import infer
    from landslide.errors import ContractError

    from conftest import write_zindi

    run, _ = exported
    rgb = write_zindi(tmp_path / "rgb", n_train=2, n_test=2, channels=3, bands=["red", "green", "blue"])
    monkeypatch.setattr(infer, "make_runner", lambda *a, **k: pytest.fail("a model loaded before the bands were checked"))
    for artefact in (run, run / "export" / "fused.onnx"):
        with pytest.raises(ContractError, match="trained on bands"):
            infer_main(make_config(InferConfig, {"run": str(artefact), "data": str(rgb), "out": str(tmp_path / "s.csv")}))


def test_default_output_path(exported, tmp_path, monkeypatch):
    import json

    from landslide.infer import default_out

    run, _ = exported
    monkeypatch.chdir(tmp_path)
    at = lambda path: default_out(make_config(InferConfig, {"run": str(path)}))[0]
    assert at(run) == run / "submission.csv"
    train = default_out(make_config(InferConfig, {"run": str(run), "split": "train"}))[0]
    assert train == run / "submission_train.csv"  # scoring the training rows keeps the test submission
    assert at(run / "export" / "fused.onnx") == run / "export" / "submission.csv"
    # An engine sits in the cache every run shares: its submission goes to the run its sidecar names...
    engines = tmp_path / "engines"
    engines.mkdir()
    engine = engines / "fused-0123.pt2"
    engine.write_bytes(b"package")
    (engines / "fused-0123.pt2.json").write_text(json.dumps({"source_run": str(run.resolve())}))
    assert at(engine) == run.resolve() / "submission.csv"
    # ...or, when that run is not on this host, to the current folder; never into the cache.
    (engines / "fused-0123.pt2.json").write_text(json.dumps({"source_run": str(tmp_path / "gone")}))
    assert at(engine) == tmp_path / "submission.csv"


def test_the_first_calls_warm_up_is_reported_apart_from_the_steady_rate(exported):
    import time

    from landslide.infer import score
    from landslide.runtime import Runner

    class Warm(Runner):  # the first call pays a compile, the others are quick
        calls = 0

        def predict(self, x):
            Warm.calls += 1
            time.sleep(0.4 if Warm.calls == 1 else 0.01)
            return np.zeros(len(x), np.float32)

    _, data = exported
    ids = sorted(f.stem for f in (data / "test_data").glob("*.npy"))[:12]
    r = score(Warm(), data, "test", ids, 4, skip_bad=False)
    assert Warm.calls == 3 and r.first_n == 4 and r.first_call_s >= 0.4
    assert len(r.ids) / r.compute_s < 12 / 0.4 < 100 < r.steady_rate()  # the warm-up is not in the steady rate
    one = score(Warm(), data, "test", ids[:4], 4, skip_bad=False)
    assert one.steady_rate() is None  # one call: nothing after the warm-up to time


def test_the_probs_file_rethresholded_gives_the_submissions_calls(tmp_path):
    import csv

    from landslide.infer import write_submission

    thr = 0.4321
    probs = np.array([np.nextafter(np.float32(thr), np.float32(0)), np.float32(thr) + np.float32(3e-8), 0.9, 1e-6],
                     np.float32)  # the first two: within a float32 step of the threshold, either side
    write_submission(tmp_path / "s.csv", ["a", "b", "c", "d"], probs, thr, tmp_path / "p.csv")
    with open(tmp_path / "s.csv") as f:
        calls = [int(r["Target"]) for r in csv.DictReader(f)]
    with open(tmp_path / "p.csv") as f:
        back = np.array([float(r["prob"]) for r in csv.DictReader(f)], np.float32)
    assert calls == [0, 1, 1, 0] and (back == probs).all() and ((back >= thr).astype(int).tolist() == calls)
