"""The input contract every artefact carries, and the checks that refuse a mismatch.

A checkpoint, ONNX file or engine is only meaningful for data with the same bands (in the same
order), the same preprocessing and patch shape; the contract records those plus the normalisation
statistics, versions and a hash, so a loader can say exactly what disagrees and how to fix it.
"""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from landslide.bands import BandLayout
from landslide.data import PATCH_HW
from landslide.errors import ContractError
from landslide.preprocess import PREPROCESS_VERSION

CHECKPOINT_FORMAT = "landslide-checkpoint/1"
ENGINE_DIR = Path(__file__).resolve().parent.parent / "engines"  # the repository's engines/ (see its README)


def engine_dir(value: str = "") -> Path:
    """``--engine-dir``: the folder given (relative to the current one), else the repository's engines/, so
    export and infer meet in one folder from wherever they are run."""
    return Path(value) if value else ENGINE_DIR


def arch_stem(arch: str) -> str:
    """``arch`` in file names (checkpoints, per-fold graphs): ``NAME@SIZE`` -> ``NAME_SIZE``."""
    return arch.replace("@", "_")


def checkpoint_path(run_dir: str | Path, fold: int, arch: str, suffix: str = ".pt") -> Path:
    """Where a run folder keeps fold ``fold``'s checkpoint of ``arch``."""
    return Path(run_dir) / f"fold{fold}" / f"{arch_stem(arch)}{suffix}"


def versions(*extra: str) -> dict[str, str]:
    """Python, torch, timm, numpy (and CUDA + the current GPU where there is one), plus the import names
    in ``extra`` that are installed: what a checkpoint, run or artefact records it was made with."""
    import importlib

    import numpy
    import timm

    v = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
         "numpy": numpy.__version__}
    if torch.cuda.is_available():
        v["cuda"] = str(torch.version.cuda)
        v["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())  # --device cuda:N made it current
    for name in extra:
        try:
            v[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return v


# Exporting again cannot help: the weights were fitted to the other preprocessing.
PREPROCESS_FIX = "re-train with this version of landslide, or score with the version that trained it"


def data_contract(layout: BandLayout) -> dict[str, Any]:
    """What a patch must look like for this artefact: raw, as read from the ``.npy`` files."""
    return {"bands": layout.to_list(), "input_shape": [*PATCH_HW, layout.n_channels],
            "input_layout": "HWC per patch (NHWC batch), raw values in the data's units",
            "preprocess_version": PREPROCESS_VERSION,
            "preprocess": "3x3 median (replicate border) on SAR bands; per-band standardisation; "
                          "cloud = sigmoid(mean standardised optical)"}


def check_data(contract: dict[str, Any], layout: BandLayout, *, artefact: str | Path, data_dir: str | Path) -> None:
    """Refuse data whose bands disagree with the artefact's contract. (Its preprocessing version was
    checked where the contract was read: ``ensemble.read_run`` for a run, ``read_sidecar`` for an artefact.)"""
    want = contract.get("bands")
    if want != layout.to_list():
        bands = Path(data_dir) / "bands.txt"
        declared = f"{bands} declares the data's" if bands.is_file() else \
            f"{data_dir} has no bands.txt, so its patches are taken as the 12 Zindi bands"
        raise ContractError(f"the artefact was trained on bands {want}, but the data declares {layout.to_list()}",
                            file=artefact,
                            fix=f"score data with the same bands in the same order ({declared}), "
                                "or train a model on this data")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
