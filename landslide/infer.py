"""Score a test set with a trained run or an exported artefact: ``submission.csv`` as ``ID,Target``.

``RUN`` is a run folder (torch, or its ``export/`` ONNX graphs) or an artefact file whose suffix
picks the backend: ``.onnx`` onnxruntime, ``.pt2`` AOTInductor, ``.engine`` TensorRT. ``auto`` picks
the best this host can run for what was given, and says which in one log line. Reading and scoring
the patches is :mod:`landslide.scoring`'s (bad files all named at once; no submission is written
unless ``--skip-bad``). A ``--shard K/N`` run writes ``<out stem>.shard<K>of<N>.csv``; once all N
are written, ``--merge-shards`` checks and joins them into the submission (see :func:`merge_shards`).
"""
from __future__ import annotations

import functools
import logging
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landslide.bands import BandLayout
from landslide.config import field
from landslide.contract import check_data, engine_dir
from landslide.data import SPLITS, read_csv, require_data_dir
from landslide.errors import ConfigError, ContractError, MissingArtefactError
from landslide.runtime import Runner
from landslide.scoring import Scored, iter_batches, prescan, run_batches, score  # noqa: F401 - the module's API too
from landslide.shards import (
    forget_threshold,
    merge_shards,
    parse_shard,
    probs_path,
    shard_ids,
    shard_path,
    threshold_path,
    write_csv,
    write_threshold,
)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "aoti", "torch")
SUFFIX_BACKEND = {".onnx": "onnxruntime", ".pt2": "aoti", ".engine": "tensorrt"}
# What each backend can compute at: torch by autocast; the others at what the artefact was built at.
PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "fp16"), "aoti": ("fp32",), "tensorrt": ("fp16",)}
PRECISION_FIX = ("drop --precision (auto takes the artefact's own), or use --backend torch (fp32|bf16|fp16) or "
                 "onnxruntime on the run folder (fp32|fp16)")


def computes_at(backend: str, precision: str) -> bool:
    """Whether ``backend`` can serve ``--precision precision`` (``auto``: each its own)."""
    return precision == "auto" or precision in PRECISIONS[backend]


@dataclass
class InferConfig:
    run: str = field("", "run folder written by train.py, or an artefact (.onnx, .pt2, .engine) from export.py")
    data: str = field("", "Zindi-layout folder with Test.csv and test_data/")
    out: str = field("", "submission path (default: RUN/submission.csv, submission_train.csv for --split train; "
                         "beside a .onnx file; for a .pt2/.engine "
                         "file the run folder its sidecar names, else the current folder); "
                         "with --shard K/N the shard goes to <out stem>.shard<K>of<N>.csv")
    split: str = field("test", "which CSV to score", choices=("test", "train"))
    backend: str = field("auto", "inference backend", choices=BACKENDS)
    batch_size: int = field(64, "patches per runner call")
    probs: bool = field(False, "also write probabilities (<out stem>_probs.csv; a shard: "
                               "<out stem>_probs.shard<K>of<N>.csv)")
    shard: str = field("", "score slice i of n of the IDs, as i/n (0-based)")
    merge_shards: bool = field(False, "join the N shard files of --out (or the default submission) into it, in "
                                      "Test.csv order when --data is given; scores nothing")
    skip_bad: bool = field(False, "score the readable patches and list the bad ones, instead of failing")
    threshold: float | None = field(None, "call a patch positive at this probability (0 to 1) instead of the "
                                          "calibrated threshold the run or artefact carries (the default)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    precision: str = field("auto", "auto = the backend's own (torch, onnxruntime on a run folder, aoti: fp32; a .onnx "
                                   "file: the one it was exported at; tensorrt: fp16); torch runs fp32|bf16|fp16 "
                                   "(fp16 on a GPU), onnxruntime on a run folder fp32|fp16 (fused_fp16.onnx); "
                                   "a precision the artefact was not built at is refused",
                           choices=("auto", "fp32", "bf16", "fp16"))
    compile: str = field("off", "torch backend: torch.compile on | off | auto (on for a CUDA device, off on a CPU)",
                         choices=("auto", "on", "off"))
    provider: str = field("auto", "onnxruntime provider: auto (CUDA EP when --device is a GPU, else CPU) | cpu | cuda | tensorrt",
                          choices=("auto", "cpu", "cuda", "tensorrt", "CPUExecutionProvider", "CUDAExecutionProvider",
                                   "TensorrtExecutionProvider"))
    engine_dir: str = field("", "where export.py put engines: a run folder finds its .engine/.pt2 here (default: "
                                "the repository's engines/, from any current folder)")


def resolve_artefact(cfg: InferConfig, sha: Callable[[], str] | None = None) -> tuple[str, Path, str]:
    """(backend, path to load, why) for ``cfg.run`` and ``cfg.backend``; ``sha``: the run's
    :func:`lazy_run_hash`, when the caller needs it too (the torch runner's record of a shard)."""
    path = Path(cfg.run)
    if path.is_file():
        backend = SUFFIX_BACKEND.get(path.suffix)
        if backend is None:
            raise ConfigError(f"cannot tell the backend of {path.name}", file=path,
                              fix="pass a run folder or a .onnx / .pt2 / .engine file from export.py")
        if cfg.backend not in ("auto", backend):
            raise ConfigError(f"--backend {cfg.backend} cannot run a {path.suffix} file", file=path,
                              fix=f"use --backend {backend} (or auto)")
        return backend, path, f"the artefact is a {path.suffix} file"
    if not path.is_dir():
        raise ConfigError("run folder or artefact not found", file=path, fix="pass RUN_DIR or an exported file")
    graph = path / "export" / ("fused_fp16.onnx" if cfg.precision == "fp16" else "fused.onnx")
    sha = sha or lazy_run_hash(path)  # the engine lookup and the stale-export check hash the checkpoints once between them
    if cfg.backend == "torch":
        return "torch", path, "asked for"
    if cfg.backend == "onnxruntime":
        if not graph.is_file():
            raise MissingArtefactError("no exported graph in the run folder", file=graph,
                                       fix=f"python export.py {path} (a graph exported with --out DIR: pass "
                                           "DIR/fused.onnx as the run)")
        if stale := stale_export(path, graph, sha):
            raise ContractError(f"{graph.name} is not this run's ensemble: {stale}", file=graph,
                                fix=f"export the run again: python export.py {path}")
        return "onnxruntime", graph, "asked for"
    if cfg.backend in ("aoti", "tensorrt"):
        engines = engine_dir(cfg.engine_dir)
        engine, unfit = find_engine(path, engines, cfg.backend, cfg.device, sha)
        if engine is None:
            why = f" that runs here ({'; '.join(unfit)})" if unfit else ""
            # A fitting engine has another cache key (TensorRT/torch version, GPU): export builds it beside.
            given = f" --engine-dir {cfg.engine_dir}" if cfg.engine_dir else \
                " (or, for one exported with --engine-dir DIR, pass that --engine-dir here)"
            raise MissingArtefactError(f"no {cfg.backend} engine built from this run in {engines}/{why}", file=path,
                                       fix=f"python export.py {path} --engine {cfg.backend}{given}")
        return cfg.backend, engine, f"built from this run, found in {engines}/"
    if computes_at("tensorrt", cfg.precision) and _gpu_tensorrt(cfg.device):
        try:
            engine, unfit = find_engine(path, engine_dir(cfg.engine_dir), "tensorrt", cfg.device, sha)
        except ConfigError as e:  # an installed TensorRT this code cannot use (too old): not asked for, so say and pass
            log.warning("tensorrt skipped: %s", e)
            engine, unfit = None, []
        if engine is not None:
            return "tensorrt", engine, "a GPU with TensorRT and an engine built from this run"
        if unfit:  # say why the faster engine is passed over, then take the next best
            log.warning("tensorrt engines built from this run skipped: %s", "; ".join(unfit))
    if not computes_at("onnxruntime", cfg.precision):
        return "torch", path, f"--precision {cfg.precision} (the exported graphs are fp32 and fp16)"
    if graph.is_file():
        if cfg.provider == "auto" and _gpu_without_ort_cuda(cfg.device):
            # ONNX Runtime would run the whole ensemble on the host cores: the GPU is the faster engine.
            return "torch", path, "a CUDA device, and this onnxruntime build has no CUDA provider"
        if stale := stale_export(path, graph, sha):
            # The checkpoints are the truth: score them (slower) rather than another ensemble, and say so.
            log.warning("export/%s skipped: %s (python export.py %s refreshes it)", graph.name, stale, path)
            return "torch", path, f"the run's export/{graph.name} is stale"
        return "onnxruntime", graph, f"the run has an exported graph ({graph.name})"
    return "torch", path, (f"the run has no export/ folder (python export.py {path} makes one; a graph exported "
                           "with --out DIR is scored by passing DIR/fused.onnx)")


def lazy_run_hash(run: Path) -> Callable[[], str]:
    """``run_hash(read_run(run))``, computed on the first call and kept (it reads every checkpoint's bytes)."""
    @functools.cache
    def sha() -> str:
        from landslide.ensemble import read_run
        from landslide.export.sidecar import run_hash

        return run_hash(read_run(run))
    return sha


def stale_export(run: Path, graph: Path, sha: Callable[[], str] | None = None) -> str | None:
    """Why ``run``'s ``export/`` graph is not the run's ensemble as it is now (None when it is): its sidecar
    records the hash of the checkpoints and calibration it was built from, which retraining, a new
    calibration.json or an export copied from another run changes. An unreadable sidecar is the runner's
    to refuse, with its own message."""
    from landslide.export.sidecar import readable_sidecar

    side = readable_sidecar(graph)
    if side is None or "source_hash" not in side:
        return None
    if side["source_hash"] == (sha or lazy_run_hash(run))():
        return None
    return (f"it was exported from {side.get('source_run', 'another run')} when its checkpoints or calibration "
            "differed from this run's now (retrained, recalibrated, or copied from another run)")


def _gpu_tensorrt(device: str) -> bool:
    import importlib.util

    from landslide.device import resolve_device

    return importlib.util.find_spec("tensorrt") is not None and resolve_device(device).type == "cuda"


def _gpu_without_ort_cuda(device: str) -> bool:
    from landslide.device import resolve_device

    if resolve_device(device).type != "cuda":
        return False
    try:
        import onnxruntime as ort
    except ImportError:
        return True
    return "CUDAExecutionProvider" not in ort.get_available_providers()


def find_engine(run: Path, folder: Path, backend: str, device: str = "auto",
                sha: Callable[[], str] | None = None) -> tuple[Path | None, list[str]]:
    """The newest engine in ``folder`` whose sidecar says it was built from ``run`` as it is now and that
    can run here, and why each other engine built from ``run`` cannot (``name: reason``).

    "Runs here" is the runner's own check: a TensorRT engine needs this TensorRT version and GPU model;
    an AOTInductor package this torch, and the device ``device`` resolves to (a CUDA package can't run
    on a CPU host, and a CPU one on a GPU host would leave the GPU idle) and, on CUDA, this GPU model.
    """
    from landslide.device import resolve_device
    from landslide.export.sidecar import readable_sidecar

    suffix = {"aoti": ".pt2", "tensorrt": ".engine"}[backend]
    if backend == "tensorrt":  # first: a TensorRT missing or too old is the answer, whatever the folder holds
        from landslide.export.tensorrt import import_trt

        trt = import_trt()
    found = [(p, side) for p in folder.glob(f"*{suffix}") if (side := readable_sidecar(p)) is not None]
    if found:
        want, now = str(run.resolve()), (sha or lazy_run_hash(run))()
        found = [(p, side) for p, side in found if side.get("source_run") == want and side.get("source_hash") == now]
    if not found:
        return None, []
    if backend == "aoti":
        from landslide.runtime.aoti import mismatch

        here = resolve_device(device).type
        why = {p: mismatch(side, here) for p, side in found}
    else:
        from landslide.runtime.tensorrt import mismatch

        why = {p: mismatch(side, trt) for p, side in found}
    ok = [p for p, _ in found if why[p] is None]
    unfit = [f"{p.name}: {why[p]}" for p, _ in found if why[p] is not None]
    return (max(ok, key=lambda p: p.stat().st_mtime) if ok else None), unfit


def check_backend_options(cfg: InferConfig, backend: str, why: str) -> None:
    """Refuse a flag the resolved backend would ignore: asked for, it must take effect (or fail)."""
    chosen = "was asked for" if cfg.backend != "auto" else f"is what auto chose ({why})"
    if cfg.compile == "on" and backend != "torch":
        raise ConfigError(f"--compile on is the torch backend's, and {backend} {chosen}", file=cfg.run,
                          fix="drop --compile (exported artefacts are compiled already), or add --backend torch")
    if cfg.provider != "auto" and backend != "onnxruntime":
        need = "" if backend != "torch" or Path(cfg.run).is_file() else f" (python export.py {cfg.run} makes the graph)"
        raise ConfigError(f"--provider {cfg.provider} is onnxruntime's, and {backend} {chosen}", file=cfg.run,
                          fix=f"drop --provider, or add --backend onnxruntime{need}")


def make_runner(cfg: InferConfig) -> Runner:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend {cfg.backend!r} unknown", fix=f"use one of {BACKENDS}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size}: a runner call scores at least one patch",
                          fix="pass --batch-size 1 or more (default 64)")
    from landslide.device import resolve_device

    dev = resolve_device(cfg.device)  # first: engines are checked against and run on the current GPU (cuda:N)
    if dev.type == "cpu" and (cfg.backend == "tensorrt" or Path(cfg.run).suffix == ".engine"):
        where = f"--device {cfg.device} was asked for" if cfg.device != "auto" else "this host has none"
        raise ConfigError(f"TensorRT runs on a CUDA GPU, and {where}", file=cfg.run,
                          fix="use --backend onnxruntime, aoti or torch here, or run on a GPU machine")
    # Before any lookup: an export or engine the fix would send the user to build could not run it either.
    asked = cfg.backend if cfg.backend != "auto" else SUFFIX_BACKEND.get(Path(cfg.run).suffix)
    if asked and not computes_at(asked, cfg.precision):
        raise ConfigError(f"--precision {cfg.precision}: the {asked} backend computes at "
                          f"{'|'.join(PRECISIONS[asked])}", file=cfg.run, fix=PRECISION_FIX)
    # One hash of the checkpoints for the engine lookup, the stale-export check and a shard's record.
    sha = lazy_run_hash(Path(cfg.run)) if Path(cfg.run).is_dir() else None
    backend, path, why = resolve_artefact(cfg, sha)
    check_backend_options(cfg, backend, why)
    if backend == "torch":
        from landslide.runtime.torch import TorchRunner

        if cfg.precision == "fp16" and dev.type == "cpu":
            graph = "" if (path / "export" / "fused_fp16.onnx").is_file() else f"python export.py {path}, then "
            raise ConfigError("--precision fp16: the torch backend runs fp16 on a CUDA GPU only", file=path,
                              fix=f"on a CPU, {graph}--backend onnxruntime --precision fp16 (the run's FP16 graph), "
                                  "or --precision fp32|bf16 here")
        runner: Runner = TorchRunner(path, cfg.device, "fp32" if cfg.precision == "auto" else cfg.precision, cfg.compile,
                                     run_hash=sha)
    elif backend == "onnxruntime":
        from landslide.runtime.onnxruntime import OnnxRunner

        runner = OnnxRunner(path, cfg.provider, cfg.batch_size, cfg.device)
    elif backend == "aoti":
        from landslide.runtime.aoti import AotiRunner

        # A package chosen from the engine folder fits the device already; a file given by hand is refused
        # only when --device names another device than the one it was compiled for.
        runner = AotiRunner(path, None if cfg.device == "auto" else dev.type)
    else:
        from landslide.runtime.tensorrt import TensorRTRunner

        runner = TensorRTRunner(path)
    if cfg.precision not in ("auto", runner.precision):  # a .onnx file: the precision it was exported at
        raise ConfigError(f"--precision {cfg.precision} asked for, but {runner.describe()} computes at "
                          f"{runner.precision}, fixed when it was built", file=path, fix=PRECISION_FIX)
    log.info("backend %s -> %s (%s)", cfg.backend, runner.describe(), why)
    return runner


def default_out(cfg: InferConfig) -> tuple[Path, str]:
    """(submission path, why) when ``--out`` is not given: ``submission.csv``, or ``submission_train.csv``
    for ``--split train`` (scoring the training rows must not replace the test submission)."""
    run = Path(cfg.run)
    name = "submission.csv" if cfg.split == "test" else f"submission_{cfg.split}.csv"
    if run.is_dir():
        return run / name, "the run folder"
    if run.suffix == ".onnx":  # a graph lives in its run's export/ folder (or one of the user's choosing)
        return run.parent / name, "beside the graph"
    # An engine lives in the engine cache that every run shares: its submission goes to the run it was built
    # from, which the sidecar names, or else here (the runner refuses an engine whose sidecar is unreadable;
    # --merge-shards loads no runner, so an unreadable one just means "here").
    from landslide.export.sidecar import sidecar_path, source_run

    source = source_run(run)
    if source is not None and source.is_dir():
        return source / name, f"the run folder named by {sidecar_path(run).name}"
    return Path.cwd() / name, "the current folder: the engine's source run is not on this host"


def write_submission(path: Path, ids: list[str], probs: np.ndarray, threshold: float,
                     probs_out: Path | None) -> None:
    write_csv(path, ["ID", "Target"], zip(ids, (probs >= threshold).astype(int).tolist()))
    if probs_out is not None:
        # 9 significant digits: a float32 read back exactly, so the file re-thresholded gives the Target calls.
        write_csv(probs_out, ["ID", "prob"], ((i, f"{p:.9g}") for i, p in zip(ids, probs)))


def _command(cfg: InferConfig, flag: str) -> str:
    """``python infer.py RUN --data DIR [--split train] FLAG [--out OUT]``: a command on this one's run,
    CSV and output (a shard's rescore, the merge of its set)."""
    split = f" --split {cfg.split}" if cfg.split != "test" else ""
    out = f" --out {shlex.quote(cfg.out)}" if cfg.out else ""
    return f"python infer.py {shlex.quote(cfg.run or 'RUN')} --data {shlex.quote(cfg.data or 'DIR')}{split} {flag}{out}"


def check_threshold(cfg: InferConfig) -> float | None:
    """``--threshold``, refused outside 0-1 (NaN too) and with --merge-shards: a shard's calls are made when
    it is scored (and recorded beside it, so the merge refuses a set called at two thresholds)."""
    t = cfg.threshold
    if t is None:
        return None
    if not 0 <= t <= 1:
        raise ConfigError(f"--threshold {t}: not a probability", fix="pass a value from 0 to 1, or leave it out for "
                          "the calibrated threshold")
    if cfg.merge_shards:
        raise ConfigError(f"--threshold {t} with --merge-shards: a merge joins calls made when each shard was scored",
                          fix="drop --threshold here and pass it when scoring the shards (--shard K/N --threshold T)")
    return float(t)


def declared_contract(run: Path) -> dict | None:
    """The data contract a run folder or artefact declares in its JSON (contract.json, the sidecar), read
    without loading a model: a TensorRT session or AOTI package can take minutes to load, and data with the
    wrong bands should hear so first. None when it cannot be read here (the runner then says why)."""
    from landslide.export.sidecar import readable_sidecar
    from landslide.io import read_json

    try:
        contract = read_json(run / "contract.json") if run.is_dir() else (readable_sidecar(run) or {}).get("contract")
    except (OSError, ValueError):
        return None
    return contract if isinstance(contract, dict) and "bands" in contract else None


def check_out(out: Path, *derived: Path | None) -> None:
    """Refuse output paths that are folders (or lie under a file) before any compute: the final os.replace
    would only find out once every patch had been scored. ``out``: the submission path (--out or its
    default); ``derived``: the files named after it that this call writes (probabilities, shard files)."""
    for p in (out, *derived):
        if p is None:
            continue
        if p.is_dir():
            if p == out:
                raise ConfigError("--out names a folder; it is the submission file's path", file=p,
                                  fix=f"name the file: --out {p / 'submission.csv'}")
            raise ConfigError(f"a folder stands where infer writes {p.name} (named after {out.name})", file=p,
                              fix="move or rename that folder, or pick another --out")
        if (blocker := next((a for a in p.parents if a.exists() and not a.is_dir()), None)) is not None:
            raise ConfigError(f"the output's folder {blocker} is a file", file=p, fix="pick --out in a folder")
        try:  # made now, not after the scoring: a folder that cannot be made or written is refused up front
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot make the output's folder ({e.strerror})", file=p.parent,
                              fix="pick --out in a folder you can write to") from None
        if not os.access(p.parent, os.W_OK | os.X_OK):
            raise ConfigError("the output's folder is not writable", file=p.parent,
                              fix="pick --out in a folder you can write to")


def _merge(cfg: InferConfig) -> dict:
    if not cfg.run and not cfg.out:
        raise ConfigError("--merge-shards needs the run (or --out) the shards were written for",
                          fix="python infer.py RUN_DIR --merge-shards [--data DIR]")
    if cfg.shard:
        raise ConfigError("--merge-shards joins the shard files; it scores nothing", fix="drop --shard")
    if cfg.run and not cfg.out and not Path(cfg.run).exists():  # else default_out would look in the current folder
        raise ConfigError("run folder or artefact not found", file=cfg.run,
                          fix="pass the run folder (or exported file) the shards were scored with, or --out")
    out = Path(cfg.out) if cfg.out else default_out(cfg)[0]
    check_out(out, probs_path(out))
    rerun = _command(cfg, "--shard {i}/{n}")
    table = read_csv(require_data_dir(cfg.data) / SPLITS[cfg.split][0], labelled=False) if cfg.data else None
    return merge_shards(out, table, rerun, allow_missing=cfg.skip_bad)


def main(cfg: InferConfig) -> dict:
    threshold = check_threshold(cfg)
    if cfg.merge_shards:
        return _merge(cfg)
    if not cfg.run or not cfg.data:
        raise ConfigError("infer needs a run folder (or artefact) and --data", fix="python infer.py RUN_DIR --data DIR")
    data = require_data_dir(cfg.data)
    layout = BandLayout.from_dir(data)
    table = read_csv(data / SPLITS[cfg.split][0], labelled=False)
    ids = shard_ids(table.ids, cfg.shard)
    asked, why = (Path(cfg.out), "--out") if cfg.out else default_out(cfg)
    out, pout = asked, probs_path(asked) if cfg.probs else None
    if cfg.shard:
        i, n = parse_shard(cfg.shard)
        out, pout = shard_path(out, i, n), pout and shard_path(pout, i, n)
    # Before the runner (a TensorRT EP session can take minutes) and the compute.
    check_out(asked, out, pout, threshold_path(out) if cfg.shard else None)
    if (early := declared_contract(Path(cfg.run))) is not None:  # bands from the JSON, before any model loads
        check_data(early, layout, artefact=cfg.run, data_dir=data)
    runner = make_runner(cfg)
    if early is None:  # the runner's contract is the one declared in that JSON: checked once
        check_data(runner.contract, layout, artefact=cfg.run, data_dir=data)
    log.info("infer: runner=%s patches=%d%s", runner.describe(), len(ids), f" shard={cfg.shard}" if cfg.shard else "")
    # A shard's file is written even when it scores nothing, so --merge-shards finds the whole set.
    r = score(runner, data, cfg.split, ids, cfg.batch_size, cfg.skip_bad, allow_empty=bool(cfg.shard))
    for e in r.skipped:
        log.warning("skipped: %s", e.format())
    replaced = out.exists()  # said in the log: another backend's or --data's submission is overwritten
    thr, thr_why = ((runner.threshold, "calibrated") if threshold is None else
                    (threshold, f"--threshold; the calibrated one is {runner.threshold:.4f}"))
    if cfg.shard:
        forget_threshold(out)
    write_submission(out, r.ids, r.probs, thr, pout)
    if cfg.shard:
        write_threshold(out, thr, "calibrated" if threshold is None else "--threshold", runner.source_hash,
                        runner.describe())
    steady = r.steady_rate()
    # The first call carries torch.compile's compile or an engine's warm-up: the rate after it is the one
    # a longer set would see, so both are said (a lone call: only the overall rate is known).
    rate = "" if steady is None else \
        f"; {steady:.1f} patches/s after the first call ({r.first_call_s:.2f} s, any compile / warm-up)"
    log.info("wrote %s (%s%s)%s: %d patches, %d positive at threshold %.4f (%s); %.1f patches/s overall (%.2f s), "
             "%.1f patches/s compute (%.2f s)%s", out, why, ", replacing the one there" if replaced else "",
             f" and {pout.name}" if pout else "", len(r.ids), int((r.probs >= thr).sum()), thr, thr_why,
             len(r.ids) / max(r.total_s, 1e-9), r.total_s, len(r.ids) / max(r.compute_s, 1e-9), r.compute_s, rate)
    if cfg.shard:
        log.info("shard %d of %d: once all %d are written%s, join them with: %s", i, n, n,
                 "" if threshold is None else f" (each with --threshold {threshold})", _command(cfg, "--merge-shards"))
    if r.skipped:
        whole = "the merged submission will lack them" if cfg.shard else \
            "so it is not a complete submission (Zindi scores complete ones only); mend the files and score again"
        log.warning("%d bad patch file(s) skipped (listed above): %s holds %d of the %d IDs%s, %s", len(r.skipped),
                    out.name, len(r.ids), len(ids), " of this shard" if cfg.shard else "", whole)
    return {"out": str(out), "n": len(r.ids), "threshold": thr, "skipped": [e.id for e in r.skipped], "seconds": r.total_s,
            "compute_seconds": r.compute_s, "first_call_seconds": r.first_call_s,
            "steady_patches_per_s": steady, "backend": runner.name, **({"probs": str(pout)} if pout else {})}
