"""``export.py``: a trained run -> verified ONNX graphs (+ a TensorRT engine or an AOTInductor package).

Outputs (default ``RUN_DIR/export/``): ``fold<k>_<arch>.onnx`` per fold, ``fused.onnx`` (the whole
ensemble on raw NHWC patches), ``fused_fp16.onnx``; each with a ``<file>.json`` sidecar. Engines
(``--engine tensorrt|aoti``) go to ``--engine-dir`` (default: the repository's ``engines/``, see its README).
Every artefact is built and checked against the torch ensemble in a temp folder beside its target, and
swapped in with its sidecar only once verified; past tolerance (or interrupted) the script exits non-zero
and the previous artefact, if any, stays as it was (``landslide.export.staging``).
"""
from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landslide.config import field

log = logging.getLogger(__name__)

ENGINES = ("none", "tensorrt", "aoti")
DEFAULT_PROFILE = (1, 64, 256)  # engine batch profile (min, opt, max); sidecar.rebuild_command omits it


@dataclass
class ExportConfig:
    run: str = field("", "run folder written by train.py")
    out: str = field("", "folder for the ONNX graphs (default RUN/export)")
    data: str = field("", "Zindi-layout folder whose patches verify the exports (default: synthetic patches)")
    n_verify: int = field(256, "patches used to verify each artefact")
    engine: str = field("none", "also build an engine", choices=ENGINES)
    engine_dir: str = field("", "where built engines (.engine, .pt2) and the timing cache go (default: the "
                                "repository's engines/, from any current folder)")
    min_batch: int = field(DEFAULT_PROFILE[0], "engine optimisation profile: smallest batch")
    opt_batch: int = field(DEFAULT_PROFILE[1], "engine optimisation profile: batch tuned for")
    max_batch: int = field(DEFAULT_PROFILE[2], "engine optimisation profile: largest batch")
    onnx: bool = field(True, "write the ONNX graphs (--no-onnx: only the --engine aoti package, which "
                              "compiles the torch modules and needs none)")
    folds_onnx: bool = field(True, "also export one ONNX per fold")
    fp16: bool = field(True, "also export the FP16 fused graph (what TensorRT builds from)")
    rebuild: bool = field(False, "rebuild an engine even when a matching one is cached")


def reference_inputs(info, data: str, n: int, seed: int = 0) -> np.ndarray:
    """``(n, 64, 64, C)`` float32 raw patches in the run's band order: from ``data`` or synthetic."""
    from landslide.bands import ALL_BANDS, BandLayout
    from landslide.contract import check_data
    from landslide.data import SPLITS, load_patches, read_csv

    if data:
        d = Path(data)
        layout = BandLayout.from_dir(d)
        check_data(info.contract, layout, artefact=info.run_dir, data_dir=d)
        split = "test" if (d / SPLITS["test"][0]).is_file() else "train"
        ids = read_csv(d / SPLITS[split][0], labelled=False).ids[:n]
        x, _, _ = load_patches(d, split, ids, layout, then="export again, or drop --data to verify on synthetic patches")
        log.info("verification inputs: %d %s patches from %s", len(x), split, d)
        return x
    from landslide.synth import generate

    labels = (np.arange(n) % 4 == 0).astype(np.int64)  # 25 % positives, both classes present
    x = generate(n, labels, seed)
    idx = [ALL_BANDS.index(b) for b in info.layout.names]
    log.info("verification inputs: %d synthetic patches (pass --data DIR to verify on real ones)", n)
    return np.ascontiguousarray(x[..., idx], dtype=np.float32)


def main(cfg) -> dict:
    from landslide.contract import engine_dir
    from landslide.ensemble import build_ensemble
    from landslide.errors import ConfigError, refuse_files_as_folders
    from landslide.export import onnx as ox
    from landslide.export.sidecar import run_hash, source_run

    if not cfg.run:
        raise ConfigError("export needs a run folder", fix="python export.py RUN_DIR")
    if Path(cfg.run).is_file():  # an artefact, most likely: read_run's "not found" would send the user astray
        run = source_run(cfg.run)
        raise ConfigError(f"{cfg.run} is a file; export.py takes a run folder (the one train.py --out wrote)",
                          fix=f"python export.py {shlex.quote(str(run)) if run else 'RUN_DIR'}")
    if cfg.n_verify < 1:  # zero patches would verify nothing (and crash); negative ones crash the generator
        raise ConfigError(f"--n-verify {cfg.n_verify}: every artefact is checked on at least one patch",
                          fix="pass --n-verify 1 or more (default 256)")
    refuse_files_as_folders(out=cfg.out, engine_dir=cfg.engine_dir)
    if not 1 <= cfg.min_batch <= cfg.opt_batch <= cfg.max_batch:
        raise ConfigError(f"batch profile {cfg.min_batch}/{cfg.opt_batch}/{cfg.max_batch} is not ordered",
                          fix="use --min-batch <= --opt-batch <= --max-batch, all >= 1")
    if not cfg.onnx and cfg.engine != "aoti":
        raise ConfigError("--no-onnx leaves nothing to export without --engine aoti",
                          fix="drop --no-onnx, or add --engine aoti (TensorRT builds from the ONNX graph)")
    if cfg.engine == "tensorrt":  # fail before minutes of ONNX export, not after
        from landslide.export.tensorrt import gpu_name, import_trt

        import_trt()
        gpu_name()
    if cfg.engine == "aoti":  # likewise: AOTI for CUDA compiles C++ against the CUDA toolkit's headers
        import torch
        from torch.utils.cpp_extension import CUDA_HOME

        if torch.cuda.is_available() and CUDA_HOME is None:
            raise ConfigError("AOTInductor for CUDA needs the CUDA toolkit (headers, nvcc); none was found",
                              fix="set CUDA_HOME to a CUDA toolkit matching torch's CUDA, or serve with "
                                  "--backend torch --compile on")
    fused, info = build_ensemble(cfg.run)
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "export"
    sha = run_hash(info)
    x = reference_inputs(info, cfg.data, cfg.n_verify)
    ref = ox.torch_run(fused, x)
    made: dict[str, str] = {}
    if cfg.onnx and cfg.folds_onnx:
        for _, _, p in ox.export_folds(fused, info, x, out, sha):
            made[p.stem] = str(p)
    if cfg.onnx:
        made["fused"] = str(ox.export_fused(fused, info, x, ref, out / "fused.onnx", sha))
    if cfg.onnx and (cfg.fp16 or cfg.engine == "tensorrt"):
        made["fused_fp16"] = str(ox.export_fp16(fused, info, x, ref, out / "fused_fp16.onnx", sha))
    profile = (cfg.min_batch, cfg.opt_batch, cfg.max_batch)
    if cfg.engine == "tensorrt":
        from landslide.export.tensorrt import build_engine

        made["engine"] = str(build_engine(out, engine_dir(cfg.engine_dir), profile, x, ref, rebuild=cfg.rebuild))
    elif cfg.engine == "aoti":
        from landslide.export.aoti import build_package

        made["engine"] = str(build_package(fused, info, sha, engine_dir(cfg.engine_dir), profile, x, ref,
                                           rebuild=cfg.rebuild))
    for k, v in made.items():
        log.info("exported %s: %s", k, v)
    return made
