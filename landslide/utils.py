"""Small process-level helpers: logging, determinism, git commit, the scripts' error boundary."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def _not_cuda_home_noise(record: logging.LogRecord) -> bool:
    # torch's C++ builder (Inductor on a CPU, the native augmentation kernels) warns "No CUDA runtime is
    # found, using CUDA_HOME=..." on every GPU-less host that has a CUDA toolkit: noise next to the one
    # line landslide.device logs about what runs where.
    return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home_noise() -> None:
    """Drop that one warning from torch's C++ builder logger (the scripts, and ``Predictor`` in-process)."""
    cpp = logging.getLogger("torch.utils.cpp_extension")
    if _not_cuda_home_noise not in cpp.filters:
        cpp.addFilter(_not_cuda_home_noise)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    quiet_cuda_home_noise()


def set_determinism() -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_script(fn: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a script's main; a user error prints one clear message and exits 2, without a traceback."""
    from landslide.errors import LandslideError

    setup_logging()
    try:
        fn(argv)
    except LandslideError as e:
        print(f"error: {e.format()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
