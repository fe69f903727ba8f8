"""The compiled CPU path's hand-written kernels (``gather.cpp``): the bilinear gather, then blur, noise
and holes in one pass per sample.

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
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from landslide.device import cpp_compiler

SOURCE = Path(__file__).with_name("gather.cpp")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC", "-fopenmp", "-std=c++17")


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
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.ls_interpolate.restype = lib.ls_finish.restype = ctypes.c_int
    lib.ls_interpolate.argtypes = [ptr] * 5 + [i64] * 4 + [ctypes.c_int]
    lib.ls_finish.argtypes = [ptr] + [i64] * 4 + [ptr, ptr, i64, ptr, ptr, ptr, i64, ptr, i64, ctypes.c_int]
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


def finish(out: torch.Tensor, blur: torch.Tensor, kern: torch.Tensor, noise: torch.Tensor | None,
           noise_std: torch.Tensor, holes: torch.Tensor, seed: int | None = None,
           lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """In place on ``out (B, C, H, W)`` (channels-last memory, :func:`interpolate`'s), per sample and in
    the eager paths' order: the separable blur with ``kern[s]`` where ``blur[s]`` (reflect-101 borders),
    then ``noise_std[s]`` times sample ``s``'s field of ``noise`` where ``noise_std[s] > 0`` (``(B, C, H, W)``,
    or ``(R, C, H, W)``: one row per such sample in sample order, as ``draw_noise`` makes them on a CPU;
    ``None``: no noise, unless ``seed``), then the ``holes (B, K, 4)`` boxes (half-open y0, x0, y1, x1)
    set to 0. With ``seed`` (an int64) and no ``noise``, the kernel makes the noise rows itself: row ``r``
    (the ``r``-th noisy sample) is :func:`normals`' ``(r, ...)``, never written to memory. Returns ``out``."""
    b, c, h, w = out.shape
    if out.dtype != torch.float32 or not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("finish works in place on a float32 channels-last batch")
    std = noise_std.to(torch.float32).contiguous()
    if noise is not None and seed is not None:
        raise ValueError("give the noise rows or the seed to make them from, not both")
    made = seed is not None
    noisy = std > 0 if noise is not None or made else torch.zeros(b, dtype=torch.bool)  # neither: none added
    rows = int(noisy.sum())
    if made or (rows and noise.shape[0] == rows):  # one per noisy sample, in sample order (the CPU's)
        zrow = torch.where(noisy, noisy.int().cumsum(0, dtype=torch.int32) - 1, -1)
    elif rows and noise.shape[0] == b:  # a field for every sample (the GPU's draw_noise)
        zrow = torch.where(noisy, torch.arange(b, dtype=torch.int32), -1)
    elif rows:
        raise ValueError(f"noise has {noise.shape[0]} rows; expected {b} (all samples) or {rows} "
                         "(one per sample with noise_std > 0)")
    else:
        zrow = torch.full((b,), -1, dtype=torch.int32)
    if rows and not made and tuple(noise.shape[1:]) != (c, h, w):
        raise ValueError(f"noise fields of {tuple(noise.shape[1:])} for a batch of {(c, h, w)}")
    # (R, H, W, C) for the kernel: a view when the rows are channels-last (draw_noise's), else one copy
    z = noise.to(torch.float32).permute(0, 2, 3, 1).contiguous() if rows and not made else None
    zrow = zrow.to(torch.int32).contiguous()
    flags = blur.to(torch.uint8).contiguous()
    kern = kern.to(torch.float32).contiguous()
    holes = holes.to(torch.int64).contiguous()
    if flags.shape != (b,) or kern.shape[0] != b or holes.shape[0] != b or holes.shape[-1] != 4:
        raise ValueError(f"blur {tuple(flags.shape)}, kernels {tuple(kern.shape)} and holes {tuple(holes.shape)} "
                         f"must each have one row per sample ({b})")
    rc = (lib or library()).ls_finish(out.data_ptr(), b, h, w, c, flags.data_ptr(), kern.data_ptr(), kern.shape[1],
                                      None if z is None else z.data_ptr(), zrow.data_ptr(), std.data_ptr(),
                                      seed or 0, holes.data_ptr(), holes.shape[1], torch.get_num_threads())
    if rc:
        raise MemoryError(f"the blur's scratch ({h * w * c * 4} bytes per thread) could not be allocated")
    return out


def normals(seed: int, rows: int, h: int, w: int, c: int, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """``(rows, C, H, W)`` standard normals (channels-last memory) as :func:`finish` makes them from
    ``seed``: the noise fields themselves, for tests and for anyone who wants to see them."""
    out = torch.zeros(rows, h, w, c).permute(0, 3, 1, 2)
    none = torch.zeros(rows, dtype=torch.bool)
    return finish(out, none, torch.zeros(rows, 1), None, torch.ones(rows), torch.zeros(rows, 0, 4, dtype=torch.int64),
                  seed=seed, lib=lib)
