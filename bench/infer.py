"""Inference: latency p50/p95/p99 and throughput per runner and batch size, test-set wall time, FLOPs.

    python -m bench.infer --quick                       # CPU, a cached tiny 5-fold run, < 3 min
    python -m bench.infer --run runs/full --n-test 5398 # an existing run folder, the Zindi test-set size

Runners: torch fused (eager, and ``torch.compile``d), the torch looped baseline (a Python loop over
folds and TTA views), and every other name in ``landslide.infer.BACKENDS`` (ONNX Runtime once per
available provider when the config takes a ``provider``, AOTInductor, TensorRT, ...), each built by
``make_runner``. A runner the host cannot build is recorded as ``skipped: <reason>``. The run folder is
only read: its exported graphs are used as they are, and what it lacks ``landslide.export`` builds into
the bench's own cache (graphs: ``.cache/bench/export/<run>/``, engines: ``.cache/bench/engines/``).

Every runner gets the same raw ``(B, 64, 64, C)`` float32 patches and is timed per call (device
synchronised; warm-up and compilation excluded, compile time reported apart). ``--n-test`` patches are
then scored from memory with ``run_batches`` (file reading excluded) for the test-set wall time.
FLOPs per patch are counted on the fused module (``FlopCounterMode``: every fold x 4 views) and turned
into a fraction of the device's peak: on a CPU the peak is a large fp32 matmul measured in the same
run; on a GPU a table of datasheet peaks by device name (dense, no sparsity), else the measured matmul.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench import common
from landslide.config import field, parse_config
from landslide.errors import ConfigError

log = logging.getLogger("bench.infer")

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "bench"

# Dense datasheet peaks, TFLOP/s (NVIDIA H100 / H200 product briefs; tensor-core figures without sparsity).
GPU_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0},
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},   # SXM5 (e.g. "H100 80GB HBM3")
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},   # SXM
}


@dataclass
class InferBenchConfig:
    quick: bool = field(False, "short run (< 3 min on a 2-core CPU)")
    run: str = field("", "run folder from train.py (default: train a tiny cached run under .cache/bench)")
    archs: list[str] = field(["test_efficientnet"], "archs of the run trained when --run is not given")
    folds: int = field(0, "folds of the run trained when --run is not given (0 = 5; --quick 2)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    precision: str = field("fp32", "fp32 | bf16 | fp16 for the torch runners; ONNX Runtime: fp16 = the FP16 graph, "
                                "else FP32; AOTI and TensorRT: their own (each record says which)",
                           choices=("fp32", "bf16", "fp16"))
    batch_sizes: list[int] = field([], "batch sizes to time (default 1,8,64,256; --quick 1,8,32)")
    compile: str = field("auto", "include torch.compile'd fused: auto (on, except --quick on a CPU) | on | off",
                         choices=("auto", "on", "off"))
    n_test: int = field(0, "patches to score for the test-set wall time (0 = 32 quick, 5398 full)")
    budget_s: float = field(0.0, "seconds of timed calls per runner and batch size, at least 2 calls "
                                 "(0 = 1.5 quick, 15 full)")
    testset_budget_s: float = field(120.0, "skip the test-set pass of a runner whose estimated time exceeds this")
    seed: int = field(0, "seed for the synthetic patches")
    out_dir: str = field("", "where results go (default bench/results)")
    threads: int = field(0, "torch intra-op CPU threads (0 = torch's default); recorded in env.torch_threads")


# ------------------------------------------------------------------------------------------ the run

def ensure_run(cfg: InferBenchConfig) -> Path:
    """``--run`` as given, or a tiny run trained once on synthetic data and cached under ``.cache/bench``."""
    from landslide import synth
    from landslide import train as train_mod
    from landslide.config import make_config
    from landslide.contract import arch_stem
    from landslide.ensemble import read_run
    from landslide.train_config import PRESETS, TrainConfig

    if cfg.run:
        return Path(cfg.run)
    tag = f"{'-'.join(map(arch_stem, cfg.archs))}-f{cfg.folds}"
    run, data = CACHE / f"run-{tag}", CACHE / "synth"
    try:
        read_run(run)
        train_mod.load_checkpoint(next(run.glob("fold0/*.pt")))  # still loadable by this code
        return run
    except Exception:  # noqa: BLE001 - anything stale or half-written is rebuilt
        shutil.rmtree(run, ignore_errors=True)
    if not (data / "Train.csv").is_file():
        synth.write_dataset(synth.SynthConfig(str(data), n_train=20 * cfg.folds, n_test=8, seed=0))
    log.info("training a throwaway %d-fold run of %s for the benchmark (weights do not matter for speed)",
             cfg.folds, ",".join(cfg.archs))
    train_mod.main(make_config(TrainConfig, {**PRESETS["tiny"], "data": str(data), "out": str(run), "archs": cfg.archs,
                                             "folds": cfg.folds, "epochs": 1, "max_steps": 1, "batch_size": 8,
                                             "eval_batch_size": 16, "compile": "off", "data_backend": "torch",
                                             "cache_dir": str(CACHE / "cache")}))
    return run


# ------------------------------------------------------------------------------------------ runners

def runner_factories(cfg: InferBenchConfig, run: Path, compile_on: bool) -> list[tuple[str, Callable | str]]:
    """(label, factory or skip reason) for every runner to try, discovered from what the package declares."""
    from landslide.device import resolve_device
    from landslide.infer import BACKENDS
    from landslide.runtime.torch import TorchRunner

    gpu = resolve_device(cfg.device).type == "cuda"
    out: list[tuple[str, Callable | str]] = [
        ("torch-fused", lambda: TorchRunner(run, cfg.device, cfg.precision, "off")),
        ("torch-looped", lambda: TorchRunner(run, cfg.device, cfg.precision, "off", looped=True)),
    ]
    # On a GPU the compiled runner goes before the exported ones: exporting the full ensemble takes
    # minutes there, and a step's time limit should cut those, not the compiled torch figure. On a CPU
    # it goes last for the same reason the other way round (compiling is what takes minutes there).
    compiled = ("torch-fused-compiled", (lambda: TorchRunner(run, cfg.device, cfg.precision, "on")) if compile_on else
                "compile off (--quick on a CPU: minutes of compilation; pass --compile on)")
    if gpu:
        out.append(compiled)
    for backend in BACKENDS:
        if backend in ("auto", "torch"):
            continue
        # Engines the benchmark builds go to its cache, not beside the user's own in engines/. An engine
        # computes at the precision it was built at (AOTI fp32, TensorRT fp16: infer refuses another one);
        # ONNX Runtime runs the run's FP16 graph for --precision fp16, else its FP32 one (it has no bf16).
        # Each record's config.precision is what the runner computed at.
        prec = "fp16" if backend == "onnxruntime" and cfg.precision == "fp16" else "auto"
        base = {"run": str(run), "backend": backend, "device": cfg.device, "precision": prec,
                "engine_dir": str(CACHE / "engines")}
        providers = [None]
        if backend.startswith("onnx"):
            try:
                import onnxruntime as ort

                providers = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
                if gpu and providers == ["CPUExecutionProvider"]:
                    # The GPU image's onnxruntime is the CPU build: a GPU ensemble on 16 host cores is
                    # minutes per call and measures nothing a GPU deployment would run.
                    out.append((backend, "only ONNX Runtime's CPU provider is installed on this GPU host "
                                         "(pip install onnxruntime-gpu for the CUDA/TensorRT providers)"))
                    continue
            except ImportError as e:
                out.append((backend, f"onnxruntime not importable: {e}"))
                continue
        for prov in providers:
            values = base | ({"provider": prov} if prov else {})
            label = backend + (f"-{prov.removesuffix('ExecutionProvider')}" if prov else "")
            if gpu and prov == "CPUExecutionProvider":  # beside the CUDA/TensorRT EPs of onnxruntime-gpu
                out.append((label, "the CPU provider on a GPU host: minutes per call on the host cores, "
                                   "and not what a GPU deployment runs (bench it with --device cpu)"))
                continue
            out.append((label, lambda v=values: _make_with_export(v, user_engines=bool(cfg.run))))
    if not gpu:
        out.append(compiled)
    return out


def bench_export_dir(run: Path) -> Path:
    """Where the benchmark exports what a run lacks (ONNX graphs), one folder per run path: its own cache,
    never ``RUN/export``. A benchmark leaves the user's artefacts as they are."""
    from landslide.contract import stable_hash

    return CACHE / "export" / stable_hash(str(run.resolve()))


def usable_graph(run: Path, name: str) -> Path | None:
    """The run's own ``export/<name>`` when it is there (read, never rewritten), else the bench's export of it
    when that was made from the run as it is now (same checkpoints and calibration), else None."""
    from landslide.export.sidecar import readable_sidecar
    from landslide.infer import stale_export

    if (run / "export" / name).is_file():
        return run / "export" / name
    mine = bench_export_dir(run) / name
    return mine if readable_sidecar(mine) is not None and stale_export(run, mine) is None else None


def _bench_copy(graph: Path, run: Path) -> Path:
    """``graph`` (with its sidecar and any weights file) copied into the bench's folder, once per version. For
    ONNX Runtime's TensorRT EP, which writes its engine cache beside the graph it runs: not into RUN/export."""
    from landslide.export.sidecar import readable_sidecar, sidecar_path, weights_path

    dst = bench_export_dir(run) / graph.name
    if (readable_sidecar(dst) or {}).get("sha256") != (readable_sidecar(graph) or {}).get("sha256"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        for src in (graph, weights_path(graph), sidecar_path(graph)):  # the sidecar last: it vouches for the rest
            if src.is_file():
                tmp = dst.parent / f".{src.name}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(dst.parent / src.name)
    return dst


def _export(run: Path, engine: str, **over) -> None:
    """``landslide.export`` into the bench's folders: graphs to :func:`bench_export_dir`, engines to its cache.

    Only the fused graph is timed; a few verification patches suffice here (export's own tests verify in full),
    and on a GPU host the reference pass over 256 patches alone takes minutes."""
    from landslide.config import make_config
    from landslide.export import ExportConfig
    from landslide.export import main as export_main

    log.info("exporting %s (engine=%s) into %s", run, engine, bench_export_dir(run))
    export_main(make_config(ExportConfig, {"run": str(run), "out": str(bench_export_dir(run)), "engine": engine,
                                           "engine_dir": str(CACHE / "engines"), "n_verify": 16,
                                           "folds_onnx": False, **over}))


def _build_trt_engine(run: Path, graph: Path) -> None:
    """A TensorRT engine, into the bench's cache, from a fused FP16 graph already there (the run's own: read)."""
    from landslide.ensemble import build_ensemble
    from landslide.export import DEFAULT_PROFILE, reference_inputs
    from landslide.export.onnx import torch_run
    from landslide.export.tensorrt import build_engine

    fused, info = build_ensemble(run)
    x = reference_inputs(info, "", 16)  # as _export verifies
    build_engine(graph.parent, CACHE / "engines", DEFAULT_PROFILE, x, torch_run(fused, x))


def _make_with_export(values: dict, user_engines: bool = False):
    """``make_runner`` on what the run has, else on what the bench exports for it into its own folders, never
    into the run's (:func:`bench_export_dir`, ``.cache/bench/engines``). Only a missing artefact is exported; any
    other refusal (a provider that cannot start, a missing library) is the result: exporting would cost minutes
    and fail the same way. ``user_engines`` (a ``--run`` of the user's): an engine built from it in the default
    engines/ is used before any is built into the bench's cache."""
    from landslide.config import make_config
    from landslide.errors import MissingArtefactError
    from landslide.infer import InferConfig, make_runner

    run, backend = Path(values["run"]), values["backend"]
    if backend == "onnxruntime":  # the graph file itself: make_runner on the folder would read RUN/export only
        name = "fused_fp16.onnx" if values["precision"] == "fp16" else "fused.onnx"
        graph = usable_graph(run, name)
        if graph is None:
            _export(run, "none", fp16=name == "fused_fp16.onnx")
            graph = bench_export_dir(run) / name
        elif values.get("provider") == "TensorrtExecutionProvider" and graph.parent != bench_export_dir(run):
            graph = _bench_copy(graph, run)
        return make_runner(make_config(InferConfig, {**values, "run": str(graph)}))
    cfg = make_config(InferConfig, values)
    if user_engines and backend in ("aoti", "tensorrt"):
        try:
            return make_runner(make_config(InferConfig, {**values, "engine_dir": ""}))
        except MissingArtefactError:
            pass  # none there: the bench's own cache, exporting into it if need be
    try:
        return make_runner(cfg)
    except MissingArtefactError as first:
        log.info("%s: %s -> building it into %s", backend, first.problem, CACHE / "engines")
        graph = usable_graph(run, "fused_fp16.onnx") if backend == "tensorrt" else None
        if graph is not None:  # TensorRT builds from the FP16 graph: the run's own when it has one
            _build_trt_engine(run, graph)
        else:
            # No ONNX for AOTI (it compiles the torch modules): on a GPU host, tracing and checking the full
            # fp32 ensemble's graph costs minutes of the step's budget before AOTI even starts.
            _export(run, backend, onnx=backend != "aoti")
        return make_runner(cfg)


# ----------------------------------------------------------------------------------------- FLOPs, peak

def flops_per_patch(module: torch.nn.Module, device: torch.device, channels: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 64, 64, channels, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops() / 2


def measured_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large square matmul (the fastest of 5), the practical ceiling on this device."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = common.measure(lambda: a @ b, warmup=2, iters=5, device=device)
    return 2 * n**3 / float(t.flat.min())


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for the fraction-of-peak column."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = precision if precision != "fp32" else ("tf32" if torch.backends.cudnn.allow_tf32 else "fp32")
        for model in sorted(GPU_PEAKS_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
            if model in name:
                return GPU_PEAKS_TFLOPS[model][key] * 1e12, f"datasheet {model} {key} dense"
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        return measured_matmul_peak(device, dt), f"measured {precision} matmul (no datasheet entry for {name})"
    return measured_matmul_peak(device), "measured fp32 2048^3 matmul, this run (CPU estimate)"


# -------------------------------------------------------------------------------------------------- main

def main(cfg: InferBenchConfig) -> list[dict]:
    from landslide.device import resolve_device
    from landslide.ensemble import read_run
    from landslide.infer import run_batches
    from landslide.synth import band_stats

    common.check_counts(cfg, positive=("batch_sizes",),
                        non_negative=("folds", "n_test", "budget_s", "testset_budget_s", "seed", "threads"))
    if cfg.folds == 1 and not cfg.run:  # before minutes of training a run that cannot be made
        raise ConfigError("--folds 1: the throwaway run is cross-validated", fix="pass --folds 2 or more (0 = 5; --quick 2)")
    common.set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    compile_on = cfg.compile == "on" or (cfg.compile == "auto" and not (cfg.quick and device.type == "cpu"))
    n_test = cfg.n_test or (32 if cfg.quick else 5398)
    budget = cfg.budget_s or (1.5 if cfg.quick else 15.0)
    cfg = dataclasses.replace(cfg, folds=cfg.folds or (2 if cfg.quick else 5),
                              batch_sizes=cfg.batch_sizes or ([1, 8, 32] if cfg.quick else [1, 8, 64, 256]))
    env = common.environment(device)
    out = Path(cfg.out_dir or common.RESULTS_DIR)
    jsonl = common.results_path(env, out)
    run = ensure_run(cfg)
    info = read_run(run)
    n_models = len(info.archs) * len(info.folds)
    conf = {**{k: v for k, v in asdict(cfg).items() if k != "out_dir"}, "run": str(run), "archs": info.archs,
            "folds": len(info.folds), "n_test": n_test, "budget_s": budget, "tta_views": 4}
    log.info("bench.infer: %s (%s); ensemble %s x %d folds x 4 views", device, env["device_name"],
             ",".join(info.archs), len(info.folds))

    stats = band_stats()
    mean = np.array([stats[b]["mean"] for b in info.layout.names], dtype=np.float32)
    std = np.array([stats[b]["std"] for b in info.layout.names], dtype=np.float32)
    rng = np.random.default_rng(cfg.seed)
    pool = (mean + std * rng.standard_normal((max(cfg.batch_sizes), 64, 64, len(mean)), dtype=np.float32))
    test_x = pool[rng.integers(0, len(pool), n_test)]

    peak, peak_src = device_peak(device, cfg.precision)
    peaks: dict[str, float] = {cfg.precision: peak}
    flops = None
    records: list[dict] = []
    rows: list[dict] = []
    series: dict[str, list] = {}
    lat1: dict[str, np.ndarray] = {}
    tp_by: dict[tuple[str, int], float] = {}

    def emit(rec: dict) -> None:
        records.append(rec)
        common.append_jsonl(jsonl, [rec])  # as we go: a killed run keeps what it measured

    def report(final: bool) -> None:
        """Table + plots so far: rewritten after every runner, so a run cut by a time limit keeps them."""
        for r in rows:  # speed-up of each runner over the looped baseline at the same batch
            base = tp_by.get(("torch-looped", r["batch"]))
            mine = tp_by.get((r["runner"], r["batch"]))
            if base and mine:
                r["x looped"] = f"{mine / base:.2f}x"
        slug = env["device_slug"] + (f"-t{cfg.threads}" if cfg.threads else "")  # file names only
        title = f"{','.join(info.archs)} x {len(info.folds)} folds x 4 views, {cfg.precision} — {env['device_name']}"
        head = (f"# bench.infer — {title}\n\n`{common.command_line('bench.infer')}`; "
                f"FLOPs per patch (fused ensemble, FlopCounterMode): "
                f"{flops / 1e9:.3f} GFLOP; peak {peak / 1e12:.3f} TFLOP/s ({peak_src}; a runner computing in "
                f"another precision is held to that precision's peak); "
                f"torch threads {env['torch_threads']}; load avg {env['loadavg_1m']} at start. "
                f"Test set: {n_test} patches scored from memory (file reading excluded).\n\n"
                if flops else f"# bench.infer — {title}\n\n")
        table = common.format_table(rows, ["runner", "batch", "p50 ms", "p95 ms", "p99 ms", "patches/s median (min-max)",
                                           "x looped", "% peak", "first call s"])
        if final:
            print(head + table)
        common.write_text(out / f"{slug}-infer.md", head + table + "\n")
        common.plot_throughput(series, out / f"{slug}-infer-throughput.png", ylabel="patches/s (median, min-max band)",
                               title=f"inference throughput — {title}")
        if lat1:
            common.plot_latency(lat1, out / f"{slug}-infer-latency.png", title=f"latency at batch 1 — {title}")

    for label, factory in runner_factories(cfg, run, compile_on):
        rconf = {**conf, "runner": label}
        if isinstance(factory, str):
            emit(common.record("infer", label, env, rconf, skipped=factory))
            rows.append({"runner": label, "batch": "-", "p50 ms": f"skipped: {factory}"})
            continue
        t0 = time.perf_counter()
        try:
            runner = factory()
        except Exception as e:  # noqa: BLE001 - the reason is the result
            why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            log.warning("runner %s skipped: %s", label, why)
            emit(common.record("infer", label, env, rconf, skipped=why))
            rows.append({"runner": label, "batch": "-", "p50 ms": f"skipped: {why}"})
            continue
        build_s = time.perf_counter() - t0
        # % peak against the peak of the precision this runner computes in (AOTI is fp32, TensorRT fp16).
        prec = runner.precision
        rconf["precision"] = prec
        if prec not in peaks:
            peaks[prec] = device_peak(device, prec)[0]
        if flops is None and hasattr(runner, "module") and not getattr(runner.module, "__class__").__name__.startswith("Looped"):
            flops = flops_per_patch(runner.module, device, len(mean))
            emit(common.record("infer", "flops", env, conf, metrics={
                "flops_per_patch": flops, "models": n_models, "forwards_per_patch": 4 * n_models,
                "peak_flops": peak, "peak_source": peak_src}))
        series[label] = []
        for bs in cfg.batch_sizes:
            x = pool[:bs]
            t_first = time.perf_counter()
            try:
                runner.predict(x)  # the warm-up call (compilation, engine set-up): timed, reported apart
                common.sync(device)
                first_s = time.perf_counter() - t_first
                per_call = first_s
                if first_s > budget:  # it compiled or is slow: one more untimed call, to size the timed part
                    t_w = time.perf_counter()
                    runner.predict(x)
                    common.sync(device)
                    per_call = time.perf_counter() - t_w
                n_calls = int(np.clip(budget / max(per_call, 1e-6), 2, 250))  # >= 2 timed calls always
                windows = min(5, n_calls)
                t = common.measure(lambda: runner.predict(x),  # noqa: F821 (ruff misreads the later `del runner`)
                                   warmup=0, iters=n_calls // windows, windows=windows, items=bs, device=device)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch
                why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                emit(common.record("infer", label, env, {**rconf, "batch_size": bs}, skipped=why))
                rows.append({"runner": label, "batch": bs, "p50 ms": f"skipped: {why}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            lat, tp = common.latency_stats(t.flat), common.throughput_stats(t)
            frac = flops * tp["median"] / peaks[prec] if flops else None
            tp_by[(label, bs)] = tp["median"]
            series[label].append((bs, tp))
            if bs == 1:
                lat1[label] = t.flat
            m = {"latency": lat, "patches_per_s": tp, "first_call_s": first_s, "build_s": build_s,
                 "fraction_of_peak": frac}
            emit(common.record("infer", label, env, {**rconf, "batch_size": bs}, metrics=m))
            rows.append({"runner": label, "batch": bs, "p50 ms": lat["p50_ms"], "p95 ms": lat["p95_ms"],
                         "p99 ms": lat["p99_ms"], "patches/s median (min-max)": common.spread(tp, 1),
                         "% peak": f"{100 * frac:.2f}" if frac is not None else "", "first call s": round(first_s, 2)})
        # test-set wall time at the largest batch size that ran
        done = [bs for bs, _ in series[label]]
        if done:
            bs = max(done)
            est = n_test / tp_by[(label, bs)]
            if est > cfg.testset_budget_s:
                why = f"estimated {est:.0f} s > --testset-budget-s {cfg.testset_budget_s:.0f}"
                emit(common.record("infer", f"{label} test set", env, {**rconf, "batch_size": bs}, skipped=why))
                rows.append({"runner": label, "batch": f"test set ({n_test})", "p50 ms": f"skipped: {why}"})
            else:
                common.sync(device)
                t0 = time.perf_counter()
                run_batches(runner, test_x, bs)
                common.sync(device)
                wall = time.perf_counter() - t0
                emit(common.record("infer", f"{label} test set", env, {**rconf, "batch_size": bs},
                                   metrics={"n": n_test, "wall_s": wall, "patches_per_s": n_test / wall}))
                rows.append({"runner": label, "batch": f"test set {n_test} @ {bs}", "p50 ms": f"{wall:.2f} s wall",
                             "patches/s median (min-max)": f"{n_test / wall:.1f}"})
        del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report(final=False)

    report(final=True)
    return records


if __name__ == "__main__":
    from landslide.utils import run_script

    sys.exit(run_script(lambda argv: main(parse_config(InferBenchConfig, argv, __doc__.split("\n")[0]))))
