"""The compiled CPU path's one hand-written kernel: the bilinear gather (``gather.cpp``).

Built once per process with the C++ compiler Inductor needs anyway (a plain C ABI and no torch
headers: well under a second), into a temporary folder that is removed once the library is loaded,
so no stale binary built for another CPU (``-march=native``) is ever picked up. Called through
``ctypes``, which releases the GIL; its OpenMP loop binds to the libgomp torch has loaded, so it runs
on torch's thread pool (``torch.get_num_threads()`` threads), never beside it. Why by hand and not
by Inductor: ``gather.cpp``'s header.
"""
from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("gather.cpp")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fopenmp", "-std=c++17")


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor's CPU backend would call, or None when there is none on PATH."""
    for name in ("g++", "c++", "clang++"):
        if path := shutil.which(name):
            return path
    return None


@functools.cache
def library(*defines: str) -> ctypes.CDLL:
    """``gather.cpp`` built and loaded (cached per process and ``defines``, e.g. ``"LS_NO_AVX512"`` to
    build the portable vector path). A failed build is a RuntimeError carrying the compiler's message."""
    compiler = cpp_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++, c++, clang++) on PATH to build the native gather kernel")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="landslide-native-") as tmp:
        so = Path(tmp) / "gather.so"
        cmd = [compiler, *FLAGS, *(f"-D{d}" for d in defines), "-x", "c++", str(SOURCE), "-o", str(so)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip() or f"exit status {r.returncode}").splitlines()
            raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(cmd)}): {msg[0]}")
        lib = ctypes.CDLL(str(so))  # mapped now: the file itself can go with the folder
    fn = lib.ls_interpolate
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]
    lib.build_s = time.perf_counter() - t0
    return lib


def interpolate(x: torch.Tensor, index: torch.Tensor, p00: torch.Tensor, frac: torch.Tensor,
                lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """Rows ``index (B,)`` of the channels-last fold ``x (N, H, W, C)`` sampled at ``p00 (B, H, W)``
    int32 / ``frac (2, B, H, W)`` (``compiled._taps``): ``(B, C, H, W)`` float32 in channels-last memory.
    The gather is the kernel's own indexing, so no gathered copy of the batch is made."""
    n, h, w, c = x.shape
    b = index.shape[0]
    if x.dtype != torch.float32 or not x.is_contiguous() or x.device.type != "cpu":
        raise ValueError(f"the native gather reads a contiguous float32 (N, H, W, C) CPU tensor; got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}, contiguous={x.is_contiguous()}")
    index = index.to(torch.int64).contiguous()
    p00, frac = p00.to(torch.int32).contiguous(), frac.to(torch.float32).contiguous()
    if p00.shape != (b, h, w) or frac.shape != (2, b, h, w):
        raise ValueError(f"taps of shape {tuple(p00.shape)} / {tuple(frac.shape)} do not fit {b} samples of {h}x{w}")
    if b:
        lo, hi = torch.aminmax(index)
        if int(lo) < 0 or int(hi) >= n:
            raise IndexError(f"batch index out of range [{int(lo)}, {int(hi)}] for a fold of {n} samples")
    out = torch.empty(b, h, w, c)
    (lib or library()).ls_interpolate(x.data_ptr(), index.data_ptr(), p00.data_ptr(), frac.data_ptr(),
                                      out.data_ptr(), b, h, w, c, torch.get_num_threads())
    return out.permute(0, 3, 1, 2)
