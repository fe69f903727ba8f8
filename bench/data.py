"""Augmentation throughput: every batched backend vs the conventional per-sample DataLoader.

    python -m bench.data --quick            # < 3 min on a 2-core CPU
    python -m bench.data --device cuda      # on a GPU machine (DALI when installed)

Each batched backend (``landslide.augment.BACKENDS``, whichever build here) is timed on what a
training step asks of it: gather a class-balanced index batch from the device-resident set, then
augment it — ``batch`` x (C, 64, 64) float32. The baseline, in the same process on the same data, is
``torch.utils.data.DataLoader`` (``--workers`` processes, shuffled) whose Dataset augments one
sample at a time with the seed's albumentations chain (``--per-sample numpy``: the same ops in NumPy;
``bench/persample.py``), collated and, on a GPU, copied to the device. Throughput is samples/s over each timing window;
the table quotes the median over windows with the min-max spread. The pipelines take turns, one
window each per round, and "x per-sample" is the median over rounds of each round's ratio.

On a GPU (``--timing auto``) throughput comes from *pipelined* windows, synchronised only at their ends,
as a training loop queues batches; a window synchronised after every batch (kept for the latency
columns) would bound a GPU backend by its launch latency instead. On a CPU the two are the same.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bench import common
from landslide.config import field, parse_config
from landslide.errors import ConfigError

log = logging.getLogger("bench.data")


@dataclass
class DataBenchConfig:
    quick: bool = field(False, "short run (< 3 min on a 2-core CPU)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N (the batched backends' device)")
    batch_size: int = field(64, "samples per batch")
    n: int = field(0, "samples in the pool (0 = 2048 quick, 8192 full)")
    channels: int = field(12, "bands per patch")
    workers: int = field(2, "baseline DataLoader worker processes")
    per_sample: str = field("albumentations", "the per-sample baseline: albumentations (the seed's) | numpy")
    windows: int = field(0, "timing windows per backend (0 = 5 quick, 10 full)")
    iters: int = field(0, "batches per window (0 = 10 quick, 40 full)")
    warmup: int = field(5, "untimed batches first (the baseline adds its prefetch depth)")
    seed: int = field(0, "seed for data, sampling and augmentation")
    out_dir: str = field("", "where results go (default bench/results)")
    threads: int = field(0, "torch intra-op CPU threads (0 = torch's default); recorded in env.torch_threads")
    timing: str = field("auto", "throughput windows: pipelined (synced at window ends) | synchronised (after "
                                "every batch) | auto (pipelined on a GPU; on a CPU the two are the same)")


def backend_names() -> list[str]:
    """Every concrete augmentation pipeline the package declares (``auto`` is a chooser, not one): each
    backend, and the torch backend once per kernel (``torch`` eager, ``torch-compiled``)."""
    from landslide.augment import BACKENDS
    from landslide.augment.compiled import KERNELS

    names = []
    for b in BACKENDS:
        if b == "auto":
            continue
        names.append(b)
        if b == "torch":
            names += [f"torch-{k}" for k in KERNELS if k not in ("auto", "eager")]
    return names


def backend_batches(name: str, x: torch.Tensor, y: torch.Tensor, cfg: DataBenchConfig, calls: int):
    """(one_batch, None): a callable doing what a training step asks of the backend — gather a
    class-balanced index batch from the device-resident set, then augment it; or (None, why not here).
    ``name`` is ``backend`` or ``backend-kernel``; the compiled kernel's first call (its compile) is
    made here, before any timing, and its seconds are returned as the third item."""
    from landslide.augment import build_augment, resolve_backend
    from landslide.augment.torch import AugmentConfig
    from landslide.sampler import BalancedSampler

    backend, _, kernel = name.partition("-")
    try:
        resolved = resolve_backend(backend, x.device, kernel or "eager")
        aug = build_augment(resolved, AugmentConfig(), x.device, cfg.batch_size, cfg.seed)
        x = x.contiguous(memory_format=aug.memory_format)  # stored as the training fold is for this backend
        gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
        batches = iter(BalancedSampler(y, cfg.batch_size, generator=gen).epoch(calls))

        def one_batch():  # the gather is the backend's (training calls it on the fold the same way)
            return aug(x, gen, index=next(batches))

        t0 = time.perf_counter()
        one_batch()  # e.g. DALI built but unable to run on this host; the compiled kernel compiles here
        first_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - any failure to build or run is reported as the skip reason
        return None, f"{type(e).__name__}: {e}", None
    return one_batch, None, first_s


def timed_windows(fn, warmup: int, iters: int, items: int, device: torch.device,
                  pipelined: bool) -> list[common.Timing]:
    """One synchronised window of ``fn`` (latency, and throughput on a CPU), then, when ``pipelined``, one
    synchronised only at its ends (throughput as training sees it on a GPU)."""
    out = [common.measure(fn, warmup=warmup, iters=iters, items=items, device=device)]
    if pipelined:
        out.append(common.measure(fn, warmup=0, iters=iters, items=items, device=device, sync_each=False))
    return out


def baseline_window(x_hwc: np.ndarray, y: np.ndarray, device: torch.device, cfg: DataBenchConfig, iters: int,
                    round_: int, pipelined: bool) -> list[common.Timing]:
    """One timing window of the conventional loader, started fresh: worker start-up and the prefetch
    queue's fill are warm-up, so no batch made during another pipeline's window is counted here."""
    from bench.persample import endless, make_loader
    from landslide.augment.torch import AugmentConfig

    cuda = device.type == "cuda"
    loader = make_loader(x_hwc, y, AugmentConfig(), cfg.batch_size, cfg.workers, cfg.seed + round_, pin_memory=cuda,
                         impl=cfg.per_sample)
    it = endless(loader)

    def one_batch():
        xb, yb = next(it)  # noqa: F821 - ruff misreads the later `del it`
        return xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    # The pipelined window reuses the warm loader: its queue refills while the synchronised one runs.
    out = timed_windows(one_batch, cfg.warmup + 2 * cfg.workers, iters, cfg.batch_size, device, pipelined)
    del it, loader  # stops the worker processes
    return out


def main(cfg: DataBenchConfig) -> list[dict]:
    from landslide.device import resolve_device

    common.check_counts(cfg, positive=("batch_size", "channels"),
                        non_negative=("n", "workers", "windows", "iters", "warmup", "threads", "seed"))
    common.set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if cfg.timing not in ("auto", "pipelined", "synchronised"):
        raise ConfigError(f"--timing {cfg.timing!r}", fix="use auto, pipelined or synchronised")
    pipelined = cfg.timing == "pipelined" or (cfg.timing == "auto" and device.type == "cuda")
    n = cfg.n or (2048 if cfg.quick else 8192)
    common.check_pool(n, cfg.batch_size)
    windows = cfg.windows or (5 if cfg.quick else 10)
    iters = cfg.iters or (10 if cfg.quick else 40)
    env = common.environment(device)
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir",)} | {"n": n, "windows": windows,
                                                                             "iters": iters, "shape": [cfg.channels, 64, 64],
                                                                             "dtype": "float32",
                                                                             "timing": "pipelined" if pipelined
                                                                             else "synchronised"}
    log.info("bench.data: %s (%s), %d threads, batch %d, pool %d", device, env["device_name"], env["torch_threads"],
             cfg.batch_size, n)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(n, cfg.channels, 64, 64, generator=g)  # standardised patches, as training holds them
    y = (torch.rand(n, generator=g) < 0.176).float()
    x_dev, y_dev = x.to(device), y.to(device)
    x_hwc, y_np = x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy()

    base_name = "per-sample DataLoader"
    records, rows, bars = [], [], []
    fns, skipped, first = {}, {}, {}
    for name in backend_names():
        # calls: the check in backend_batches, the warm-up, then per round one re-warm call + iters
        # (+ iters pipelined)
        fn, why, first_s = backend_batches(name, x_dev, y_dev, cfg,
                                           1 + cfg.warmup + windows * (1 + iters * (1 + pipelined)))
        if fn is None:
            log.warning("backend %s skipped: %s", name, why)
            skipped[name] = why
        else:
            fns[name], first[name] = fn, first_s
    # Round-robin, one window per pipeline per round, the order rotating each round: a shared host's
    # load changes over a run, and this way each ratio compares windows measured moments apart.
    seconds: dict[str, list[np.ndarray]] = {base_name: [], **{k: [] for k in fns}}
    piped: dict[str, list[np.ndarray]] = {k: [] for k in seconds}
    for fn in fns.values():
        for _ in range(cfg.warmup):
            fn()
    common.sync(device)
    for r in range(windows):
        names = list(seconds)
        for name in names[r % len(names):] + names[:r % len(names)]:
            ts = (baseline_window(x_hwc, y_np, device, cfg, iters, r, pipelined) if name == base_name
                  else timed_windows(fns[name], 1, iters, cfg.batch_size, device, pipelined))
            seconds[name].append(ts[0].seconds[0])
            if pipelined:
                piped[name].append(ts[1].seconds[0])
    timings = {k: common.Timing(np.stack(v), cfg.batch_size) for k, v in seconds.items()}
    # Throughput from the pipelined windows where there are some; latency always from the synchronised ones.
    rates = {k: common.Timing(np.stack(v), cfg.batch_size) for k, v in piped.items()} if pipelined else timings
    base_rate = common.window_rates(rates[base_name])  # per round
    for name, t in timings.items():
        tp, lat = common.throughput_stats(rates[name]), common.latency_stats(t.flat)
        ratio = float(np.median(common.window_rates(rates[name]) / base_rate))
        label = f"{name} ({cfg.per_sample})" if name == base_name else f"{name} (batched, gather+augment)"
        extra = {"workers": cfg.workers, "impl": f"{cfg.per_sample}, one sample at a time"} if name == base_name \
            else {"backend": name}
        metrics = {"samples_per_s": tp, "batch_latency": lat, "ratio_vs_per_sample": ratio}
        if name in first:  # the first call: a compile, a DALI pipeline build; never in the windows
            metrics["first_call_s"] = first[name]
        records.append(common.record("data", name, env, {**conf, **extra}, metrics=metrics))
        rows.append({"pipeline": label, "samples/s median (min-max)": common.spread(tp),
                     "ms/batch p50": lat["p50_ms"], "ms/batch p95": lat["p95_ms"], "x per-sample": f"{ratio:.1f}x",
                     "first call s": f"{first[name]:.1f}" if name in first else ""})
        bars.append((name, tp))
    for name, why in skipped.items():
        records.append(common.record("data", name, env, {**conf, "backend": name}, skipped=why))
        rows.append({"pipeline": f"{name} (batched, gather+augment)", "samples/s median (min-max)": f"skipped: {why}"})

    out = common.RESULTS_DIR if not cfg.out_dir else cfg.out_dir
    slug = env["device_slug"] + (f"-t{cfg.threads}" if cfg.threads else "")  # file names only
    title = f"augmentation, batch {cfg.batch_size} x {cfg.channels}x64x64 fp32 — {env['device_name']}"
    table = common.format_table(rows, ["pipeline", "samples/s median (min-max)", "ms/batch p50", "ms/batch p95",
                                       "x per-sample", "first call s"])
    head = (f"# bench.data — {title}\n\n`{common.command_line('bench.data')}`; "
            f"{windows} windows x {iters} batches, samples/s from {conf['timing']} windows; "
            f"torch threads {env['torch_threads']}, baseline workers {cfg.workers}, load avg {env['loadavg_1m']} at start\n\n")
    common.append_jsonl(common.results_path(env, out), records)  # its JSON lines on stdout, then the table
    print(head + table)
    common.write_text(f"{out}/{slug}-data.md", head + table + "\n")
    common.plot_bars([b[0] for b in bars], [b[1] for b in bars], f"{out}/{slug}-data.png",
                     ylabel="samples/s (median, min-max)", title=title)
    return records


if __name__ == "__main__":
    from landslide.utils import run_script

    sys.exit(run_script(lambda argv: main(parse_config(DataBenchConfig, argv, __doc__.split("\n")[0]))))
