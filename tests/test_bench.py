"""The benchmark harness on trivial callables: statistics, the JSON line schema, plots. No timing assertions."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import common
from bench.persample import BASELINES, augment_one, make_loader, per_sample_fn
from landslide.augment.torch import AugmentConfig
from landslide.errors import ConfigError

# requirements.txt pins albumentations; a GPU image may lack it (or OpenCV), and the benchmarks' NumPy twin
# stands in there, as bench/gpu_check.sh does.
HAS_ALBUMENTATIONS = all(importlib.util.find_spec(m) is not None for m in ("albumentations", "cv2"))
PER_SAMPLE = "albumentations" if HAS_ALBUMENTATIONS else "numpy"


def test_latency_percentiles_on_known_data():
    s = common.latency_stats(np.arange(1, 101) / 1e3)  # 1..100 ms
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert (s["min_ms"], s["max_ms"], s["mean_ms"]) == pytest.approx((1.0, 100.0, 50.5))
    with pytest.raises(ValueError):
        common.latency_stats([])


def test_throughput_is_median_over_windows_with_spread():
    t = common.Timing(np.array([[0.1, 0.1], [0.2, 0.2], [0.05, 0.05]]), items=10)  # 100, 50, 200 items/s
    s = common.throughput_stats(t)
    assert (s["median"], s["min"], s["max"], s["windows"]) == (100.0, 50.0, 200.0, 3)
    assert common.spread(s) == "100 (50-200)"


def test_measure_excludes_warmup_and_respects_shape():
    calls = []
    t = common.measure(lambda: calls.append(1), warmup=3, iters=4, windows=2, items=8, device="cpu")
    assert len(calls) == 3 + 8
    assert t.seconds.shape == (2, 4) and t.items == 8 and (t.flat >= 0).all()
    t = common.measure(lambda: None, warmup=0, iters=2, windows=50, budget_s=0.0)
    assert t.seconds.shape == (1, 2)  # the budget stops after the first whole window


def test_pipelined_measure_times_whole_windows():
    """sync_each=False: the same calls, one clock read per window, each call given the window's mean."""
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.01 * (len(calls) % 2))  # calls alternate 0 and 10 ms: a per-call clock would show it

    t = common.measure(work, warmup=1, iters=4, windows=2, items=8, device="cpu", sync_each=False)
    assert len(calls) == 1 + 8 and t.seconds.shape == (2, 4)
    assert np.ptp(t.seconds, axis=1).max() == 0  # constant within a window
    assert 0.004 < t.seconds.mean() < 0.05 and common.window_rates(t).shape == (2,)


def test_json_line_schema_and_append(tmp_path, capsys):
    env = common.environment("cpu")
    assert env["device_slug"] == f"cpu-{env['cpu_count']}core"
    for key in ("device_name", "torch", "timm", "onnxruntime", "dali", "torch_threads", "git_commit"):
        assert key in env
    ok = common.record("data", "torch", env, {"batch_size": 64}, metrics={"samples_per_s": {"median": np.float32(1.5)}})
    skip = common.record("infer", "tensorrt", env, {}, skipped="no GPU")
    with pytest.raises(ValueError):
        common.record("x", "y", env, {})
    path = common.append_jsonl(common.results_path(env, tmp_path), [ok])
    common.append_jsonl(path, [skip])
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert capsys.readouterr().out.splitlines() == lines  # each line printed as written, one per record
    common.append_jsonl(tmp_path / "quiet.jsonl", [ok], echo=False)
    assert capsys.readouterr().out == ""
    recs = [json.loads(line) for line in lines]
    assert recs == common.read_jsonl(path)
    for r in recs:
        assert r["schema"] == common.SCHEMA
        assert {"bench", "name", "time", "env", "config"} <= set(r)
        assert ("metrics" in r) != ("skipped" in r)
    assert recs[0]["metrics"]["samples_per_s"]["median"] == 1.5
    assert recs[1]["skipped"] == "no GPU"


def test_table_and_plots_written(tmp_path):
    table = common.format_table([{"a": 1.23456, "b": "x"}, {"a": 1234.5}], ["a", "b"])
    lines = table.splitlines()
    assert lines[0].startswith("| a") and len(lines) == 4 and "1.23" in lines[2] and "1234" in lines[3]
    # A long skip reason goes under the table as a numbered note; its column stays narrow.
    why = "skipped: ConfigError: TensorRT runs on a CUDA GPU, and this host has none. Fix: use --backend torch"
    name = "DataLoader (2 workers, per-sample albumentations), a long name that stays"
    lines = common.format_table([{"a": 1.0, "b": why}, {"a": 2.0, "b": name}], ["a", "b"]).splitlines()
    assert lines[2] == f"| 1 | {'see [1]'.ljust(len(name))} |" and lines[3] == f"| 2 | {name} |"
    assert lines[4:] == ["", f"[1] {why}"]
    tp = {"median": 10.0, "min": 8.0, "max": 12.0}
    for p in (common.plot_bars(["a", "b"], [tp, tp], tmp_path / "bars.png", ylabel="y", title="t"),
              common.plot_throughput({"r": [(1, tp), (8, tp)]}, tmp_path / "tp.png", ylabel="y", title="t"),
              common.plot_latency({"r": np.array([0.001, 0.002, 0.003])}, tmp_path / "lat.png", title="t")):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_per_sample_baseline_keeps_shape_and_dtype():
    x = np.random.default_rng(0).standard_normal((64, 64, 12), dtype=np.float32)
    cfg = AugmentConfig(p_hflip=1, p_vflip=1, p_rot90=1, p_ssr=1, p_dropout=1, p_noise=1, p_blur=1)
    rng = np.random.default_rng(1)
    for _ in range(3):
        y = augment_one(x, cfg, rng)
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    # identity config: untouched
    off = AugmentConfig(p_hflip=0, p_vflip=0, p_rot90=0, p_ssr=0, p_dropout=0, p_noise=0, p_blur=0)
    assert np.array_equal(augment_one(x, off, rng), x)


def test_sync_is_a_noop_on_cpu():
    common.sync(torch.device("cpu"))
    common.sync(None)


@pytest.mark.parametrize("impl", BASELINES)
def test_per_sample_loaders_batch_and_seed(impl):
    """Both baselines (the seed's albumentations chain, its NumPy twin) yield seeded (B, C, H, W) batches."""
    if impl == "albumentations" and not HAS_ALBUMENTATIONS:
        pytest.skip("albumentations (with OpenCV) does not import here (requirements.txt pins it; a GPU image may lack it)")
    x = np.random.default_rng(0).standard_normal((16, 64, 64, 12), dtype=np.float32)
    y = (np.arange(16) % 2).astype(np.float32)
    batches = [next(iter(make_loader(x, y, AugmentConfig(), 8, workers=0, seed=3, impl=impl))) for _ in range(2)]
    (xa, ya), (xb, yb) = batches
    assert xa.shape == (8, 12, 64, 64) and xa.dtype == torch.float32 and ya.shape == (8,)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, torch.from_numpy(x[:8]).permute(0, 3, 1, 2))  # something was augmented


def test_unknown_per_sample_baseline_is_a_config_error():
    with pytest.raises(ConfigError, match="opencv"):
        per_sample_fn("opencv", AugmentConfig(), 0)


def printed_records(out: str, table_head: str) -> list[dict]:
    """The JSON lines a bench printed on stdout, checked to come before its table (whose header row starts
    with ``table_head``)."""
    lines = out.splitlines()
    json_at = [i for i, line in enumerate(lines) if line.startswith("{")]
    table_at = next(i for i, line in enumerate(lines) if line.startswith(table_head))
    assert json_at and max(json_at) < table_at
    return [json.loads(lines[i]) for i in json_at]


def test_bench_data_and_train_run_end_to_end(tmp_path, capsys):
    """The benchmark scripts on a tiny problem: every pipeline measured (or skipped with a reason),
    one JSON line each, printed (before the table) as written, a table and a plot written. Speed itself is
    not asserted."""
    from bench import data as bdata
    from bench import train as btrain

    recs = bdata.main(bdata.DataBenchConfig(n=128, batch_size=16, windows=2, iters=2, warmup=1, workers=0,
                                            device="cpu", per_sample=PER_SAMPLE, out_dir=str(tmp_path)))
    shown = printed_records(capsys.readouterr().out, "| pipeline")
    assert shown == common.read_jsonl(next(tmp_path.glob("*.jsonl")))
    assert [r["name"] for r in shown] == [r["name"] for r in recs] and shown[0]["metrics"] == recs[0]["metrics"]
    names = [r["name"] for r in recs]
    assert names[0] == "per-sample DataLoader" and "torch" in names
    for r in recs:
        assert ("metrics" in r) != ("skipped" in r)
    base = next(r for r in recs if r["name"] == "per-sample DataLoader")
    assert base["metrics"]["ratio_vs_per_sample"] == pytest.approx(1.0)
    assert base["metrics"]["samples_per_s"]["windows"] == 2 and base["config"]["timing"] == "synchronised"
    # Pipelined throughput windows (a GPU's default) beside the synchronised latency ones: every backend
    # still gets enough index batches for both, and the records say which timing their rate is from.
    piped = bdata.main(bdata.DataBenchConfig(n=128, batch_size=16, windows=2, iters=2, warmup=1, workers=0,
                                             device="cpu", per_sample=PER_SAMPLE, timing="pipelined",
                                             out_dir=str(tmp_path / "piped")))
    assert [r["name"] for r in piped] == names
    for r in piped:
        assert r["config"]["timing"] == "pipelined"
        if "metrics" in r:
            assert r["metrics"]["samples_per_s"]["windows"] == 2 and r["metrics"]["batch_latency"]["n"] == 4
    with pytest.raises(ConfigError, match="--timing"):
        bdata.main(bdata.DataBenchConfig(timing="sometimes"))
    capsys.readouterr()  # the pipelined run's output: only the train bench's is read next
    recs = btrain.main(btrain.TrainBenchConfig(n=64, batch_size=8, windows=1, steps=1, warmup=1, workers=0, device="cpu",
                                               per_sample=PER_SAMPLE, baseline_loader=True, data_backend="torch",
                                               out_dir=str(tmp_path)))
    assert len(recs) == 2 and all("metrics" in r for r in recs)
    shown = printed_records(capsys.readouterr().out, "| pipeline")
    assert shown == common.read_jsonl(next(tmp_path.glob("*.jsonl")))[-2:]  # appended after the data bench's
    assert [r["name"] for r in shown] == [r["name"] for r in recs]
    for r in recs:
        m = r["metrics"]
        assert m["data_wait_fraction"]["rounds"] == 1 and m["data_wait_fraction"]["median"] < 1
        assert m["pipelined_images_per_s"]["median"] > 0 and m["compute_only_images_per_s"]["median"] > 0
    assert recs[1]["metrics"]["device_pipeline_speedup_pipelined"] > 0
    assert "data wait % (pipelined)" in next(tmp_path.glob("*-train.md")).read_text()
    lines = [json.loads(s) for s in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert len(lines) == 1 + len(bdata.backend_names()) + 2  # data: baseline + each backend (run or skipped); train: 2
    assert list(tmp_path.glob("*-data.md")) and list(tmp_path.glob("*-train.md")) and list(tmp_path.glob("*.png"))


def test_train_bench_data_wait_is_the_pipelined_step_minus_compute_only():
    """With a data phase of 20 ms and a compute phase of 80 ms (sleeps: nothing overlaps on a CPU), the
    device waits for data a fifth of a pipelined step; the synchronised split says the same."""
    import time

    from bench.train import steps_needed, time_steps

    drawn = []

    def data():
        drawn.append(1)
        time.sleep(0.02)
        return ()

    st = time_steps(data, lambda: time.sleep(0.08), torch.device("cpu"), warmup=1, windows=2, steps=3)
    assert len(drawn) == steps_needed(1, 2, 3)  # what the device pipeline's sampler is sized for
    assert st.data.shape == st.compute.shape == (2, 3) and st.pipelined.shape == st.compute_only.shape == (2, 1)
    assert st.data_wait() == pytest.approx([0.2, 0.2], abs=0.06)
    assert st.compute_only == pytest.approx(np.full((2, 1), 0.08), abs=0.02)
    assert st.data.mean() / (st.data + st.compute).mean() == pytest.approx(0.2, abs=0.06)


def test_infer_runners_on_a_gpu_host_skip_ort_cpu_with_a_reason(monkeypatch, tmp_path):
    """With onnxruntime-gpu on a GPU host, ONNX Runtime is timed on its CUDA and TensorRT EPs; its CPU
    provider is recorded as skipped (never silently dropped), and nothing is built while listing."""
    import onnxruntime as ort

    import landslide.device as device
    from bench.infer import InferBenchConfig, runner_factories
    from landslide.config import make_config

    monkeypatch.setattr(device, "resolve_device", lambda requested="auto": torch.device("cuda"))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider",
                                                                 "CUDAExecutionProvider", "CPUExecutionProvider"])
    got = dict(runner_factories(make_config(InferBenchConfig, {"device": "cuda"}), tmp_path, compile_on=True))
    assert callable(got["onnxruntime-Tensorrt"]) and callable(got["onnxruntime-CUDA"])
    assert "CPU provider on a GPU host" in got["onnxruntime-CPU"]
    labels = list(got)  # on a GPU the compiled torch runner comes before the exported ones
    assert labels.index("torch-fused-compiled") < labels.index("onnxruntime-Tensorrt")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    got = dict(runner_factories(make_config(InferBenchConfig, {"device": "cuda"}), tmp_path, compile_on=True))
    assert "pip install onnxruntime-gpu" in got["onnxruntime"]


def test_infer_bench_builds_its_engines_in_its_own_cache(monkeypatch, tmp_path):
    """An engine the benchmark has to export goes to bench's cache, never into the user's engines/; and only
    a missing artefact is exported: any other refusal is the result, not minutes of export that fail the same way."""
    import landslide.export as export
    import landslide.infer as infer
    from bench.infer import CACHE, InferBenchConfig, bench_export_dir, runner_factories
    from landslide.config import make_config
    from landslide.errors import ConfigError, MissingArtefactError

    exported, asked = [], []

    def make_runner(cfg):
        asked.append(cfg.engine_dir)
        assert cfg.precision == "auto"  # an engine runs at its own precision; the bench's fp32 would be refused
        if not exported:
            raise MissingArtefactError("no aoti engine built from this run")
        return "runner"

    monkeypatch.setattr(infer, "make_runner", make_runner)
    monkeypatch.setattr(export, "main", lambda cfg: exported.append(cfg))
    got = dict(runner_factories(make_config(InferBenchConfig, {"device": "cpu"}), tmp_path, compile_on=False))
    assert got["aoti"]() == "runner"
    assert asked == [str(CACHE / "engines")] * 2 and exported[0].engine_dir == str(CACHE / "engines")
    assert exported[0].run == str(tmp_path) and exported[0].engine == "aoti"
    assert exported[0].out == str(bench_export_dir(tmp_path))  # nothing into the run's export/ either

    # A --run of the user's: an engine built from it in the default engines/ first, then the bench's cache.
    exported.clear()
    asked.clear()
    got = dict(runner_factories(make_config(InferBenchConfig, {"device": "cpu", "run": str(tmp_path)}), tmp_path,
                                compile_on=False))
    assert got["aoti"]() == "runner" and asked == ["", str(CACHE / "engines"), str(CACHE / "engines")]
    assert exported[0].engine_dir == str(CACHE / "engines")  # never built into the user's folder
    exported.clear()

    def refuse(cfg):
        raise ConfigError("onnxruntime could not start ['TensorrtExecutionProvider']")

    monkeypatch.setattr(infer, "make_runner", refuse)
    got = dict(runner_factories(make_config(InferBenchConfig, {"device": "cpu"}), tmp_path, compile_on=False))
    with pytest.raises(ConfigError, match="could not start"):
        got["aoti"]()
    assert exported == []


def test_train_bench_refuses_a_baseline_runtime_the_host_cannot_run_before_timing():
    """--baseline-precision fp16 on a CPU is refused as train.py refuses it, not timed as 'fp16'."""
    import bench.train as bt
    from landslide.config import make_config
    from landslide.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        bt.main(make_config(bt.TrainBenchConfig, {"quick": True, "device": "cpu", "baseline_loader": True,
                                                  "baseline_precision": "fp16"}))


@pytest.mark.parametrize("module, argv, flag", [
    ("infer", ["--quick", "--batch-sizes", "0"], "--batch-sizes 0"),
    ("infer", ["--batch-sizes", "8,-1"], "--batch-sizes 8,-1"),
    ("infer", ["--folds", "1"], "--folds 1"),
    ("infer", ["--n-test", "-1"], "--n-test -1"),
    ("data", ["--windows", "-1"], "--windows -1"),
    ("data", ["--batch-size", "0"], "--batch-size 0"),
    ("data", ["--n", "4", "--batch-size", "16"], "--n 4"),  # the drop_last DataLoader would yield nothing
    ("train", ["--steps", "-2"], "--steps -2"),
    ("train", ["--n", "4", "--batch-size", "8"], "--n 4"),
    ("ablate", ["--n-train", "-5"], "--n-train -5"),
])
def test_bench_refuses_a_bad_count_up_front(module, argv, flag, capsys):
    """A 0 or negative count is one clear error naming the flag and its fix, exit 2, before anything is
    trained, built or timed: not a NumPy traceback (``high <= 0``) or a loop that never ends."""
    import importlib

    from landslide.config import parse_config
    from landslide.utils import run_script

    mod = importlib.import_module(f"bench.{module}")
    cls = next(v for k, v in vars(mod).items() if k.endswith("Config") and v.__module__ == mod.__name__)
    assert run_script(lambda a: mod.main(parse_config(cls, a, "x")), argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}") and "Fix: pass --" in err and "Traceback" not in err


def _fake_export(made):
    """``landslide.export.main`` writing stand-in graphs where the real one would: ``--out``, else RUN/export."""
    def export(cfg):
        made.append(cfg)
        out = Path(cfg.out) if cfg.out else Path(cfg.run) / "export"
        out.mkdir(parents=True, exist_ok=True)
        for name in ["fused.onnx"] + (["fused_fp16.onnx"] if cfg.fp16 else []):
            (out / name).write_bytes(b"exported " + name.encode())
            (out / f"{name}.json").write_text(json.dumps({"sha256": name, "source_hash": "h1"}))
    return export


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_infer_bench_reads_the_run_folder_and_exports_into_its_own(monkeypatch, tmp_path):
    """bench.infer --run RUN never writes into RUN: the graphs it has are run where they are, one it lacks is
    exported into the bench's cache (and reused while the run is unchanged), the TensorRT EP (which caches
    engines beside its graph) gets a copy, and a TensorRT engine is built from the run's own FP16 graph."""
    import bench.infer as bi
    import landslide.ensemble as ensemble
    import landslide.export as export
    import landslide.export.sidecar as sidecar
    import landslide.infer as infer
    from landslide.errors import MissingArtefactError

    run_hash = ["h1"]
    monkeypatch.setattr(bi, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(ensemble, "read_run", lambda run: run)
    monkeypatch.setattr(sidecar, "run_hash", lambda info: run_hash[0])
    made, loaded, built = [], [], []
    monkeypatch.setattr(export, "main", _fake_export(made))
    monkeypatch.setattr(infer, "make_runner", lambda cfg: loaded.append(cfg.run) or Path(cfg.run))
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "fused.onnx").write_bytes(b"the user's graph")
    (run / "export" / "fused.onnx.json").write_text(json.dumps({"sha256": "user", "source_hash": "h1"}))
    before = _tree(run)
    ort = {"run": str(run), "backend": "onnxruntime", "device": "cpu", "engine_dir": str(bi.CACHE / "engines")}
    mine = bi.bench_export_dir(run)
    assert mine.parent == tmp_path / "cache" / "export"

    # fp32: the run's own graph, as it is; nothing exported
    assert bi._make_with_export({**ort, "precision": "auto", "provider": "CPUExecutionProvider"}) == \
        run / "export" / "fused.onnx"
    assert made == []
    # fp16: the run has no FP16 graph: exported into the bench's folder, then reused while the run is unchanged
    for _ in range(2):
        assert bi._make_with_export({**ort, "precision": "fp16"}) == mine / "fused_fp16.onnx"
    assert len(made) == 1 and made[0].out == str(mine) and made[0].engine == "none" and made[0].fp16
    run_hash[0] = "h2"  # retrained: the bench's export is stale and made again
    bi._make_with_export({**ort, "precision": "fp16"})
    assert len(made) == 2
    # the TensorRT EP writes its engine cache beside the graph: it runs a copy in the bench's folder
    got = bi._make_with_export({**ort, "precision": "auto", "provider": "TensorrtExecutionProvider"})
    assert got == mine / "fused.onnx" and got.read_bytes() == b"the user's graph"
    assert json.loads((mine / "fused.onnx.json").read_text())["sha256"] == "user"
    assert _tree(run) == before  # the run folder: nothing written, added or removed

    # a TensorRT engine the cache lacks: built from the run's own FP16 graph, into the bench's engines
    (run / "export" / "fused_fp16.onnx").write_bytes(b"the user's fp16 graph")
    before = _tree(run)

    def no_engine_yet(cfg):
        loaded.append(cfg.engine_dir)
        if not built:
            raise MissingArtefactError("no tensorrt engine built from this run")
        return "engine"

    monkeypatch.setattr(infer, "make_runner", no_engine_yet)
    monkeypatch.setattr(bi, "_build_trt_engine", lambda r, graph: built.append(graph))
    trt = {**ort, "backend": "tensorrt", "precision": "auto"}
    assert bi._make_with_export(trt) == "engine" and built == [run / "export" / "fused_fp16.onnx"]
    assert len(made) == 2  # nothing re-exported
    assert _tree(run) == before
