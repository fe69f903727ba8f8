"""Detect the host once; resolve precision/compile/channels-last defaults; refuse the impossible.

GPU-only features degrade on a CPU by design, never silently: ``auto`` picks what the host can do
and the start-up line says so; an explicit request the host cannot honour raises ConfigError.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from landslide.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str        # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def fold_dtype(self) -> torch.dtype:
        """How the standardised training fold is stored: fp16 under AMP on a GPU (half the memory and the
        gather's bytes; fp16 rather than bf16 because standardised values are small and fp16 keeps 3 more
        mantissa bits), else fp32."""
        return torch.float16 if self.device.type == "cuda" and self.amp_dtype is not None else torch.float32

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        precision = self.precision + (tf32_note(self.device) if self.precision == "fp32" else "")
        return (f"device={self.device} ({name}) precision={precision} "
                f"channels_last={'on' if self.channels_last else 'off'} compile={'on' if self.compile else 'off'}")


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work, so a clock read after it measures that work (no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def tf32_note(device: torch.device) -> str:
    """What to say beside "fp32" for work on ``device``: on CUDA cuDNN runs fp32 convolutions in TF32 by
    default (a 10-bit mantissa), which a bare "fp32" would hide."""
    return " (convolutions in TF32: cuDNN's default)" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else ""


@contextlib.contextmanager
def ieee_fp32(device: torch.device | str):
    """Run fp32 convolutions and matmuls as true fp32 on CUDA, where cuDNN defaults convolutions to TF32.

    For checks against a CPU reference at fp32 tolerance: TF32's 10-bit mantissa moves a trained
    ensemble's probabilities by ~5e-5, past the 1e-5 an fp32 artefact is held to.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def bf16_native() -> bool:
    """Whether this GPU runs bf16 in hardware (sm >= 80). ``torch.cuda.is_bf16_supported()`` alone also
    counts emulation, which would make ``auto`` pick a slow emulated bf16 on a V100 or T4."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def enable_autotune(rt: Runtime, deterministic: bool = False) -> bool:
    """Let cuDNN time its convolution algorithms for the shapes met (every shape here is fixed, so the
    search runs once per shape, in the first steps, before any CUDA-graph capture). Off on a CPU and
    under ``--deterministic`` (autotuning may pick a nondeterministic algorithm). Returns the setting."""
    on = rt.device.type == "cuda" and not deterministic
    torch.backends.cudnn.benchmark = on
    return on


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested} asked for, but this host has no CUDA GPU",
                          fix="drop --device (auto picks the CPU here) or run on a GPU machine")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {requested!r} unsupported", fix="use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and dev.index is not None:
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: this host has {torch.cuda.device_count()} GPU(s)",
                              fix=f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        # Streams, events and CUDA-graph captures made without a device argument use the *current*
        # device: make that the one asked for, or they would land on cuda:0 beside work on cuda:N.
        torch.cuda.set_device(dev)
    return dev


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor's CPU backend (and ``augment/native.py``) would call, or None when there
    is none on PATH."""
    for name in ("g++", "c++", "clang++"):
        if path := shutil.which(name):
            return path
    return None


def compile_toolchain(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot build kernels on this host, or None when it can.

    Inductor's CPU backend compiles C++ (g++, c++ or clang++); on CUDA, Triton builds each kernel's
    launcher with a C compiler (``$CC``, else gcc or clang, as Triton looks for it) against Python.h.
    A slim GPU image without them would otherwise fail inside the first training step.
    """
    if device_type == "cuda":
        if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
            return "Triton needs a C compiler (gcc or clang, or $CC) and none was found"
        if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
            return f"Triton needs the Python headers and {sysconfig.get_paths()['include']}/Python.h is missing"
        return None
    if cpp_compiler() is None:
        return "Inductor's CPU backend needs a C++ compiler (g++, c++ or clang++) and none is on PATH"
    return None


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: str = "auto",
                    compile: str = "auto") -> Runtime:
    """``auto`` = bf16 + channels-last + compile on a CUDA GPU (fp16 where bf16 is unsupported), fp32 and off on CPU."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} unknown", fix=f"use one of {PRECISIONS}")
    if precision == "auto":
        precision = ("bf16" if bf16_native() else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("--precision fp16 needs a CUDA GPU",
                          fix="use --precision fp32 or bf16 on the CPU")
    if precision == "bf16" and cuda and not bf16_native():
        raise ConfigError("this GPU has no native bf16 (torch would emulate it, slowly)", fix="use --precision fp16")

    def flag(v: str, name: str) -> bool:
        if v == "auto":
            return cuda
        if v in ("on", "true", "1"):
            return True
        if v in ("off", "false", "0"):
            return False
        raise ConfigError(f"--{name} {v!r}", fix=f"use --{name} auto|on|off")

    compiled = flag(compile, "compile")
    if compiled and (missing := compile_toolchain(dev.type)):
        if compile != "auto":
            raise ConfigError(f"--compile {compile}: {missing}",
                              fix="install gcc/g++ and the Python headers (python3-dev), or use --compile off")
        log.warning("compile auto -> off: %s", missing)  # degrade, but say so
        compiled = False
    return Runtime(dev, precision, flag(channels_last, "channels-last"), compiled)
