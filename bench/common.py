"""The benchmark harness every ``bench/*.py`` script shares.

- :func:`measure` times a callable: warm-up calls excluded, the device synchronised before each
  clock read (CUDA), per-call seconds kept in ``windows`` so throughput comes with a spread.
- :func:`latency_stats` / :func:`throughput_stats`: p50/p95/p99 of per-call latency (ms), and the
  median of per-window throughput with its min-max spread (items/s).
- :func:`environment`: device name, cores, library versions, load average (the host is shared).
- :func:`record` + :func:`append_jsonl`: one JSON line per result in ``bench/results/<device>.jsonl``, also
  printed on stdout.
- :func:`check_counts`: count-like flags (batch sizes, windows, steps) refused up front when 0 or negative.
- :func:`format_table`, :func:`plot_bars`, :func:`plot_throughput`, :func:`plot_latency`: the human
  table (Markdown, readable on stdout) and PNGs (matplotlib Agg), written atomically.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landslide.device import sync  # the scripts time with common.sync too
from landslide.io import atomic_write
from landslide.plots import _plt, _save  # Agg backend, atomic PNG writes: the run folders' plots do the same

SCHEMA = "landslide-bench/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------- timing

@dataclass
class Timing:
    """Per-call seconds of a measurement, ``(windows, iters)``; ``items`` = items per call (e.g. batch)."""

    seconds: np.ndarray
    items: int

    @property
    def flat(self) -> np.ndarray:
        return self.seconds.reshape(-1)


def measure(fn: Callable[[], Any], *, warmup: int, iters: int, windows: int = 1, items: int = 1,
            device: torch.device | str | None = None, budget_s: float | None = None,
            sync_each: bool = True) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``windows x iters`` times, each call timed on its own.

    The device is synchronised before every clock read. ``budget_s`` (wall seconds, measured part
    only) stops early after a whole window once spent, so a slow runner cannot blow a time limit;
    at least one window always runs. ``sync_each=False`` synchronises only at each window's ends, so
    the host queues call after call as a training loop does (a GPU overlaps them); each call's seconds
    are then its window's mean: a throughput, not a latency.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    start = time.perf_counter()
    for _ in range(windows):
        row = np.empty(iters)
        if sync_each:
            for i in range(iters):
                t0 = time.perf_counter()
                fn()
                sync(device)
                row[i] = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            row[:] = (time.perf_counter() - t0) / iters
        out.append(row)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return Timing(np.stack(out), items)


def latency_stats(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Per-call latency in milliseconds: n, mean, p50, p95, p99, min, max (linear-interpolated percentiles)."""
    ms = np.asarray(seconds, dtype=np.float64).reshape(-1) * 1e3
    if ms.size == 0:
        raise ValueError("no samples to summarise")
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": int(ms.size), "mean_ms": float(ms.mean()), "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def window_rates(t: Timing) -> np.ndarray:
    """Items/s of each window: items x calls / window seconds."""
    return t.items * t.seconds.shape[1] / t.seconds.sum(1)


def throughput_stats(t: Timing) -> dict[str, float]:
    """Items/s of each window (:func:`window_rates`): median with the min-max spread."""
    per_window = window_rates(t)
    return {"windows": int(per_window.size), "median": float(np.median(per_window)),
            "min": float(per_window.min()), "max": float(per_window.max())}


def spread(s: dict[str, float], digits: int = 0) -> str:
    """``"1234 (1200-1300)"`` from a :func:`throughput_stats` dict."""
    f = f"{{:.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"


# ------------------------------------------------------------------------------------------- flags

def check_counts(cfg: Any, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> None:
    """Count-like flags, checked before anything is built or timed: a 0 or a negative count would
    otherwise surface far from its flag, as a NumPy or torch traceback (``high <= 0``, an empty window).

    ``positive``: at least 1 (a list field: each item). ``non_negative``: 0 or more, for the fields where
    0 means "the default" (their help says which) or "none" (e.g. DataLoader workers).
    """
    from landslide.errors import ConfigError

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cfg)}
    for names, low, what in ((positive, 1, "1 or more"), (non_negative, 0, "0 or more")):
        for name in names:
            value = getattr(cfg, name)
            bad = [v for v in (value if isinstance(value, list) else [value]) if v < low]
            if bad:
                flag = "--" + name.replace("_", "-")
                shown = ",".join(map(str, value)) if isinstance(value, list) else value
                raise ConfigError(f"{flag} {shown}: {bad[0]} is {'below 1' if low else 'negative'}",
                                  fix=f"pass {flag} {what}{' (each)' if isinstance(value, list) else ''}; "
                                      f"{flag}: {helps.get(name, '')}")


def check_pool(n: int, batch_size: int) -> None:
    """The resident pool must hold a batch: the baseline DataLoader drops a last partial batch, so with fewer
    samples than ``batch_size`` it yields nothing (and the balanced sampler would draw each sample many times)."""
    from landslide.errors import ConfigError

    if n < batch_size:
        raise ConfigError(f"--n {n}: fewer samples than --batch-size {batch_size}",
                          fix=f"pass --n {batch_size} or more, or a smaller --batch-size")


# ------------------------------------------------------------------------------------------ environment

def command_line(module: str) -> str:
    """How this result was produced, as a user would type it: ``python -m bench.x --flags``."""
    import shlex
    import sys

    return " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])


def set_threads(n: int) -> None:
    """``n > 0``: torch's intra-op threads. On a loaded shared host, OpenMP threads that wait on each
    other at every barrier can make 2 threads several times slower than 1; the count is recorded."""
    if n > 0:
        torch.set_num_threads(n)


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model


def device_slug(device: torch.device | str) -> str:
    """File-name tag for the results file: ``cpu-2core``, ``nvidia-h100-80gb-hbm3``, ..."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", device_name(dev).lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except Exception:  # noqa: BLE001 - an optional library may fail to import in many ways
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _git_dirty() -> bool | None:
    """Whether tracked files differ from ``git_commit`` (results from uncommitted code say so)."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                              ":(top,exclude)bench/results"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def environment(device: torch.device | str) -> dict[str, Any]:
    """What a number depends on: device, cores/threads, versions, and how busy the host was."""
    from landslide.utils import git_commit

    dev = torch.device(device)
    env: dict[str, Any] = {
        "device": str(dev), "device_name": device_name(dev), "device_slug": device_slug(dev),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "timm": _version("timm"),
        "numpy": np.__version__, "onnxruntime": _version("onnxruntime"), "dali": _version("nvidia.dali"),
        "tensorrt": None, "git_commit": git_commit(), "git_dirty": _git_dirty(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if dev.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tensorrt"] = _version("tensorrt")
    return env


# -------------------------------------------------------------------------------------------- results

def record(bench: str, name: str, env: dict[str, Any], config: dict[str, Any],
           metrics: dict[str, Any] | None = None, skipped: str | None = None) -> dict[str, Any]:
    """One result: either ``metrics`` or ``skipped`` (the reason the host could not run it)."""
    if (metrics is None) == (skipped is None):
        raise ValueError("a result has metrics or a skip reason, exactly one of them")
    rec: dict[str, Any] = {"schema": SCHEMA, "bench": bench, "name": name,
                           "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "env": env, "config": config,
                           "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if skipped is not None:
        rec["skipped"] = skipped
    else:
        rec["metrics"] = metrics
    return rec


def results_path(env: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    return Path(out_dir or RESULTS_DIR) / f"{env['device_slug']}.jsonl"


def append_jsonl(path: str | Path, records: Sequence[dict[str, Any]], *, echo: bool = True) -> Path:
    """Append one JSON line per record; the file is rewritten atomically (old lines + new).

    ``echo``: each line is also printed on stdout, the same text as written, so a benchmark's output
    carries its JSON lines (before its table) and can be piped to ``jq`` without opening the file.
    """
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    lines = [json.dumps(r, sort_keys=False, default=_json_default) for r in records]
    with atomic_write(path) as f:
        f.write(old)
        f.writelines(line + "\n" for line in lines)
    if echo:
        for line in lines:
            print(line, flush=True)  # flushed: a run cut off by a time limit still shows what it measured
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (Path, torch.device, torch.dtype)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], note_over: int = 48) -> str:
    """A Markdown table (pipes aligned, so it also reads on a terminal); missing cells are blank.

    A skip reason longer than ``note_over`` characters (``skipped: ...`` with its fix) becomes ``see [k]``,
    its text a numbered note under the table: one long reason would otherwise widen its column for every row.
    """
    notes: list[str] = []

    def cell(v: Any) -> str:
        text = _cell(v)
        if not text.startswith("skipped: ") or len(text) <= note_over:
            return text
        notes.append(text)
        return f"see [{len(notes)}]"

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, width)) + " |"  # noqa: E731
    table = [line(columns), "|" + "|".join("-" * (w + 2) for w in width) + "|", *map(line, cells)]
    return "\n".join(table + ([""] + [f"[{k}] {n}" for k, n in enumerate(notes, 1)] if notes else []))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


# ---------------------------------------------------------------------------------------------- plots

def plot_bars(labels: Sequence[str], stats: Sequence[dict[str, float]], path: str | Path, *, ylabel: str,
              title: str) -> Path:
    """One bar per label at the median, whiskers at min and max (from :func:`throughput_stats`)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(labels) + 1), 3.6))
    med = np.array([s["median"] for s in stats])
    err = np.array([[m - s["min"] for m, s in zip(med, stats)], [s["max"] - m for m, s in zip(med, stats)]])
    ax.bar(range(len(labels)), med, yerr=err, capsize=4, color="tab:blue")
    for i, m in enumerate(med):
        ax.text(i, m, f"{m:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


def plot_throughput(series: dict[str, list[tuple[int, dict[str, float]]]], path: str | Path, *, ylabel: str,
                    title: str) -> Path:
    """Throughput vs batch size, one line per backend; the shaded band is the min-max over windows."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, pts in series.items():
        if not pts:
            continue
        pts = sorted(pts, key=lambda p: p[0])
        b = [p[0] for p in pts]
        ax.plot(b, [p[1]["median"] for p in pts], marker="o", label=name)
        ax.fill_between(b, [p[1]["min"] for p in pts], [p[1]["max"] for p in pts], alpha=0.2)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


def plot_latency(dists: dict[str, np.ndarray], path: str | Path, *, title: str) -> Path:
    """Per-call latency distributions (ms), one box per name: box = p25-p75, whiskers = p5-p95."""
    plt = _plt()
    names = [n for n, d in dists.items() if len(d)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 * len(names) + 2), 3.8))
    ax.boxplot([np.asarray(dists[n]) * 1e3 for n in names], whis=(5, 95), showfliers=True,
               flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right", fontsize=7)
    ax.set(yscale="log", ylabel="ms per call")
    ax.set_title(title, fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    _save(fig, Path(path))
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)
