"""The JSON sidecar every exported artefact carries (``<file>.json``), and the loader's checks.

The sidecar holds the data contract (bands, input shape/layout, preprocess version), the calibrated
threshold and weights, archs and folds, precision, library versions, a hash of the run it was built
from and the artefact's own sha256. A loader refuses an artefact whose bytes, preprocessing or
libraries disagree with its sidecar, naming the file and the command that rebuilds it.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from landslide.contract import checkpoint_path, file_sha256, stable_hash, versions
from landslide.errors import ContractError
from landslide.export import DEFAULT_PROFILE
from landslide.io import read_json, write_json
from landslide.preprocess import PREPROCESS_VERSION

SIDECAR_FORMAT = "landslide-artefact/1"
ENGINE_OF_SUFFIX = {".pt2": "aoti", ".engine": "tensorrt"}


def weights_path(graph: str | Path) -> Path:
    """Where a graph over protobuf's 2 GB limit keeps its weights: ``<graph>.data`` beside it."""
    p = Path(graph)
    return p.with_name(p.name + ".data")


def sidecar_path(artefact: str | Path) -> Path:
    p = Path(artefact)
    return p.with_name(p.name + ".json")


def readable_sidecar(artefact: Path) -> dict[str, Any] | None:
    """The sidecar's contents, or None when it is missing or not a JSON object (for messages, and for
    ``infer.find_engine``'s scan, where one broken file must not stop the others being found)."""
    try:
        side = read_json(sidecar_path(artefact)) if sidecar_path(artefact).is_file() else None
    except ValueError:
        return None
    return side if isinstance(side, dict) else None


def source_run(artefact: str | Path, side: dict[str, Any] | None = None) -> Path | None:
    """The run folder ``artefact`` was exported from: the one whose ``export/`` holds it, else the one its
    sidecar names (``side``, read here when not given). None when neither says."""
    artefact = Path(artefact)
    if artefact.suffix == ".onnx" and artefact.parent.name == "export" \
            and (artefact.parent.parent / "calibration.json").is_file():
        return artefact.parent.parent  # also right for a copied run folder, whose sidecars name the original
    source = (side if side is not None else readable_sidecar(artefact) or {}).get("source_run")
    return Path(source) if source else None


def rebuild_command(artefact: str | Path, side: dict[str, Any] | None = None) -> str:
    """The ``export.py`` command that writes ``artefact`` again, with its real run folder and flags.

    ONNX graphs are rewritten by every export; an engine (``.pt2``, ``.engine``) in the cache is reused
    when its key matches, so its command carries ``--rebuild``, and the engine folder and batch profile
    it was built with. ``side`` is the sidecar when readable; without it the run folder is a placeholder.
    """
    artefact = Path(artefact)
    side = readable_sidecar(artefact) if side is None else side
    run = source_run(artefact, side)
    cmd = ["python", "export.py", shlex.quote(str(run)) if run else "RUN_DIR"]
    engine = ENGINE_OF_SUFFIX.get(artefact.suffix)
    if engine is None:
        home = (run / "export").resolve() if run else None  # where export.py writes without --out
        if artefact.parent.resolve() != home and not (home is None and artefact.parent.name == "export"):
            cmd += ["--out", shlex.quote(str(artefact.parent))]
    else:
        cmd += ["--engine", engine, "--engine-dir", shlex.quote(str(artefact.parent))]
        profile = (side or {}).get("profile")
        if profile and tuple(profile) != DEFAULT_PROFILE:
            cmd += [f"--{k}-batch {v}" for k, v in zip(("min", "opt", "max"), profile)]
        cmd.append("--rebuild")
    where = "" if run else " (RUN_DIR: the run folder it was exported from)"
    return " ".join(cmd) + where


def run_hash(info: Any) -> str:
    """Hash of what a run's ensemble is: every checkpoint's bytes plus the calibration."""
    files = {f"fold{k}/{a}": file_sha256(checkpoint_path(info.run_dir, k, a))
             for a in info.archs for k in info.folds}
    return stable_hash({"checkpoints": files, "calibration": info.calibration})


def write_sidecar(artefact: str | Path, *, kind: str, info: Any, precision: str, run_sha: str,
                  extra: dict[str, Any] | None = None, libs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write ``<artefact>.json`` for a finished artefact file; returns the sidecar."""
    artefact = Path(artefact)
    side = {
        "format": SIDECAR_FORMAT,
        "kind": kind,
        "file": artefact.name,
        "sha256": file_sha256(artefact),
        # A graph over 2 GB keeps its weights beside it: hashed too.
        **({"data_sha256": file_sha256(weights_path(artefact))} if weights_path(artefact).is_file() else {}),
        "contract": dict(info.contract),  # read_run refused a run made with other preprocessing
        "threshold": info.threshold,
        "weights": dict(zip(info.archs, info.weights)),
        "archs": info.archs,
        "folds": info.folds,
        "precision": precision,
        "input": {"name": "patches", "shape": ["batch", *info.contract["input_shape"]], "dtype": "float32",
                  "layout": "NHWC"},
        "output": {"name": "prob", "shape": ["batch"], "dtype": "float32"},
        "source_run": str(Path(info.run_dir).resolve()),
        "source_hash": run_sha,
        "versions": versions("onnx", "onnxruntime", *libs),
        **(extra or {}),
    }
    write_json(sidecar_path(artefact), side)
    return side


def read_sidecar(artefact: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read and check an artefact's sidecar: present, right format/kind, bytes and preprocessing unchanged."""
    artefact = Path(artefact)
    side_p = sidecar_path(artefact)
    if not artefact.is_file():
        raise ContractError("artefact not found", file=artefact, fix=f"export it: {rebuild_command(artefact)}")
    if not side_p.is_file():
        raise ContractError("sidecar missing: the artefact's contract is unknown", file=side_p,
                            fix=f"keep {side_p.name} beside the artefact, or rebuild both: {rebuild_command(artefact)}")
    try:
        side = read_json(side_p)
    except ValueError as e:
        raise ContractError(f"sidecar is not valid JSON ({e})", file=side_p,
                            fix=f"rebuild it: {rebuild_command(artefact, {})}") from None

    def rebuild() -> str:  # built only when a check fails (a stat and string work on every load otherwise)
        return f"rebuild it: {rebuild_command(artefact, side)}"

    if side.get("format") != SIDECAR_FORMAT:
        raise ContractError(f"sidecar format {side.get('format')!r}, expected {SIDECAR_FORMAT!r}", file=side_p,
                            fix=rebuild())
    if kind is not None and side.get("kind") == "onnx-fold" and kind != "onnx-fold":
        raise ContractError(f"{artefact.name} is one fold's graph (a logit on SAR-filtered NCHW input, no TTA, "
                            "for serving it yourself); the runners score the whole ensemble", file=artefact,
                            fix=f"pass {artefact.parent / 'fused.onnx'} (or the run folder) instead")
    if kind is not None and not str(side.get("kind", "")).startswith(kind):
        raise ContractError(f"artefact is a {side.get('kind')!r}, not a {kind!r}", file=artefact,
                            fix="pick the backend that matches the file (or --backend auto)")
    if file_sha256(artefact) != side.get("sha256"):
        raise ContractError("artefact bytes do not match the sha256 in its sidecar (modified or replaced)",
                            file=artefact, fix=rebuild())
    if "data_sha256" in side:
        data = weights_path(artefact)
        if not data.is_file() or file_sha256(data) != side["data_sha256"]:
            raise ContractError("the graph's weights file is missing or does not match the sha256 in its sidecar",
                                file=data, fix=f"keep {data.name} beside {artefact.name}, or {rebuild()}")
    pv = side.get("contract", {}).get("preprocess_version")
    if pv != PREPROCESS_VERSION:
        raise ContractError(f"artefact made with preprocessing v{pv}, this code is v{PREPROCESS_VERSION}",
                            file=artefact, fix=rebuild())
    return side
