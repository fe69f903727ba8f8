"""The torch backend's compiled CPU path: the seed's augmentations as compiled kernels.

On a CPU, ``grid_sample`` is the costliest op of a batch (it gathers every tap of every channel on
its own), ``torch.randn`` runs on one core, and each further op is another pass over the batch. Here,
once per process, ``torch.compile`` (Inductor C++) builds

* ``params``: the batch's parameters from its uniforms (``torch.params_from_uniforms``: ~50 tiny ops);
* ``taps``: the geometry (flips, rot90, shift-scale-rotate, one 2x3 matrix per sample) as one index
  and two fractions per output pixel, vectorised across pixels;
* ``normals``: counter-based Gaussian noise (SplitMix64 + Box-Muller) on every core;

and ``native.py`` builds two hand-written loops (``gather.cpp``), where a generated loop falls short:

* the bilinear gather: it reads the channels-last fold in place (the gather is its own indexing),
  each tap's channels one vector load, and prefetches each next sample, without which rotated reads
  wait on memory (4-5x slower than a shift);
* blur, noise and holes, in that order, in one pass per sample in place (no gathered subsets).

Same parameters (the same function as :meth:`TorchAugment.sample`), ops and order as the eager paths.
Flip/rot90-only samples stay exact (their taps carry weight 1 and 0); warped samples agree with
``grid_sample`` to float32 rounding of the sample position (~2e-5 on unit-variance noise; tested). The
noise has ``torch.randn``'s distribution, not its numbers. The output is a ``(B, C, H, W)`` tensor in
channels-last memory, which the model's convolutions prefer; a channels-last input (the training fold
is stored so) is read in place, any other layout costs one transposing copy first.
"""
from __future__ import annotations

import logging
import math
import time

import torch

from landslide.augment import native
from landslide.augment.native import cpp_compiler
from landslide.augment.torch import AugmentConfig, AugmentParams, TorchAugment, _centres, gaussian_kernels, params_from_uniforms

log = logging.getLogger(__name__)

KERNELS = ("auto", "eager", "compiled")


def _taps(theta: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each output pixel samples, for ``theta (B, 2, 3)`` (output -> input, ``affine_grid``'s
    normalised coordinates), replicate border: ``(B, H, W)`` int32 flat index ``y * W + x`` of the
    top-left bilinear tap, and ``(2, B, H, W)`` float32 fractions ``fx, fy`` towards the other three.

    The position is computed in ``grid_sample``'s order (the grid as ``torch._warp`` builds it, then
    ``(g + 1) * size / 2 - 0.5``) and clamped to the border, where the fraction towards the outside is
    exactly 0. A pure flip/rot90 lands on pixel centres: fractions 0, the output an exact copy.

    The right/lower neighbours are ``p00 + 1``, ``+ W``, ``+ W + 1`` in the flattened image: on the right
    edge ``+ 1`` is the next row's first pixel and past the last row the gather clamps the index in, and
    both times that tap's weight is exactly 0 (the position sits on the border), so they read finite data
    that counts for nothing, as ``grid_sample``'s zero-weighted out-of-range taps do.
    """
    b = theta.shape[0]
    u = _centres(w, theta.device).view(1, 1, w)
    v = _centres(h, theta.device).view(1, h, 1)
    t = theta.reshape(b, 6, 1, 1)
    sx = (t[:, 2] + u * t[:, 0]) + v * t[:, 1]
    sy = (t[:, 5] + u * t[:, 3]) + v * t[:, 4]
    ix = ((sx + 1) * (w / 2) - 0.5).clamp(0, w - 1)
    iy = ((sy + 1) * (h / 2) - 0.5).clamp(0, h - 1)
    fx0, fy0 = ix.floor(), iy.floor()
    return (fy0 * w + fx0).int(), torch.stack([ix - fx0, iy - fy0])


# SplitMix64 (Steele et al. 2014; java.util.SplittableRandom): a Weyl sequence through a 64-bit mixer,
# as signed int64 constants (torch has no uint64 arithmetic; products wrap the same way).
_GAMMA, _MIX1, _MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _normals(seed: torch.Tensor, n: int, h: int, w: int, c: int) -> torch.Tensor:
    """``(n, h, w, c)`` standard normals from the int64 ``seed``: counter-based, so one compiled loop on
    every core makes them (``torch.randn`` on a CPU is one thread, and the costliest op left here).

    Element pair ``i`` is SplitMix64's ``i``-th output after ``seed``; its top and middle 24 bits are
    two uniforms that Box-Muller turns into two independent normals (channels ``2j`` and ``2j + 1``).
    24-bit uniforms cap |z| at 5.8: a Gaussian past that is one draw in 10^8.
    """
    pairs = (c + 1) // 2
    i = torch.arange(n * h * w * pairs, dtype=torch.int64, device=seed.device).view(n, h, w, pairs, 1)
    z = seed + (i + 1) * _GAMMA
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    z = z ^ _srl(z, 31)
    u1 = (_srl(z, 40) + 1).float() * 2.0**-24           # (0, 1]
    u2 = ((z >> 16) & 0xFFFFFF).float() * 2.0**-24      # [0, 1)
    r, a = torch.sqrt(-2 * torch.log(u1)), (2 * math.pi) * u2
    z = torch.cat([r * torch.cos(a), r * torch.sin(a)], -1).view(n, h, w, 2 * pairs)  # pairs side by side: 2x faster
    return z if c % 2 == 0 else z[..., :c]


_KERNELS: dict[str, object] = {}  # compiled once per process: their graphs serve every augmenter


def _kernel(name: str):
    if name not in _KERNELS:
        # The geometry's batch size is fixed in training, so its first shape compiles static (a second one
        # recompiles once, dynamic); noise is drawn for however many samples drew it: dynamic from the start.
        fn, dynamic = {"params": (params_from_uniforms, None), "taps": (_taps, None),
                       "normals": (_normals, True)}[name]
        _KERNELS[name] = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    return _KERNELS[name]


def resolve_kernel(requested: str, backend: str, device: torch.device) -> str:
    """``eager`` or ``compiled`` for the augmentation ops; ``auto`` -> compiled for the torch backend on a
    CPU with a C++ compiler (Inductor's), else eager. The caller logs the choice once."""
    from landslide.errors import ConfigError

    if requested not in KERNELS:
        raise ConfigError(f"augmentation kernel {requested!r} unknown", fix=f"use one of {KERNELS}")
    host = backend == "torch" and device.type == "cpu"
    if requested == "auto":
        return "compiled" if host and cpp_compiler() else "eager"
    if requested == "compiled":
        if not host:
            raise ConfigError(f"--augment-kernel compiled is the torch backend's CPU path; this run uses the "
                              f"{backend} backend on {device}",
                              fix="use --augment-kernel auto or eager (a GPU takes the batched torch path or DALI, "
                                  "neither of which waits on the host)")
        if not cpp_compiler():
            raise ConfigError("--augment-kernel compiled needs a C++ compiler for torch.compile's CPU backend, "
                              "and none (g++, c++, clang++) is on PATH",
                              fix="apt-get install g++, or use --augment-kernel eager")
    return requested


def apply_compiled(x: torch.Tensor, p: AugmentParams, noise: torch.Tensor | None = None,
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``p`` to ``x (B, C, H, W)``, or to ``x[index]``, float32 on the CPU: the geometry (compiled
    taps, then the native gather), then blur, noise (``noise`` as for :func:`~landslide.augment.torch.apply`)
    and holes on the samples that drew them (native, in place). ``(B, C, H, W)`` float32, channels-last."""
    if x.device.type != "cpu":
        raise ValueError(f"apply_compiled is the CPU path; got a batch on {x.device}")
    _, _, h, w = x.shape
    hwc = x.float().permute(0, 2, 3, 1)
    hwc = hwc if hwc.is_contiguous() else hwc.contiguous()
    index = torch.arange(x.shape[0]) if index is None else index
    p00, frac = _kernel("taps")(p.theta.float(), h, w)
    out = native.interpolate(hwc, index, p00, frac)
    return native.finish(out, p.blur_sigma > 0, gaussian_kernels(p.blur_sigma), noise, p.noise_std, p.holes)


class CompiledAugment:
    """The torch backend on a CPU with its ops compiled: ``aug(x, g, index=None)`` like :class:`TorchAugment`.

    Parameters are made from ``TorchAugment.uniforms`` by the same function as ``TorchAugment.sample``
    (compiled), so the same generator state draws the same augmentations. The noise fields come from
    :func:`_normals` seeded by one draw from ``g``: reproducible under a seed, the same distribution as
    ``torch.randn``'s, not the same numbers. The first call compiles (seconds; logged apart, ``compile_s``).
    """

    memory_format = torch.channels_last  # the fold stored so is read in place (no transposing copy)

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self.sampler = TorchAugment(cfg)  # its uniforms; the parameters are made from them by a compiled kernel
        self.compile_s: float | None = None

    def draw_noise(self, p: AugmentParams, shape, g: torch.Generator | None) -> torch.Tensor | None:
        """Unit normal rows ``(R, C, H, W)`` (channels-last memory, the batch's), one per sample with
        ``noise_std > 0``; ``None`` when none has."""
        seed = torch.randint(-2**63, 2**63 - 1, (), generator=g)  # drawn every call: g's stream stays fixed
        rows = int((p.noise_std > 0).sum())
        if rows == 0:
            return None
        c, h, w = shape[1:]
        # At least 2 rows: torch.compile specialises a size of 1, so a lone row would compile a second graph.
        return _kernel("normals")(seed, max(rows, 2), h, w, c)[:rows].permute(0, 3, 1, 2)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """Augment ``x (B, C, H, W)``, or the batch ``x[index]`` of a fold ``x`` (gathered in the kernel)."""
        t0 = time.perf_counter()
        fresh = not _KERNELS  # this process compiles on this call
        _, c, h, w = x.shape
        b = x.shape[0] if index is None else index.shape[0]
        p = _kernel("params")(self.sampler.uniforms(b, g, x.device), self.cfg, h, w)
        out = apply_compiled(x, p, self.draw_noise(p, (b, c, h, w), g), index)
        if self.compile_s is None:
            self.compile_s = time.perf_counter() - t0
            if fresh:
                log.info("augmentation kernels compiled (Inductor C++, native gather %.2f s) + first batch: %.1f s",
                         native.library().build_s, self.compile_s)
        return out

    def warm_up(self, x: torch.Tensor, batch_size: int) -> None:
        """One throwaway batch of the fold ``x`` with a private generator: the compile happens here, timed
        apart, and the run's own random streams are untouched. A toolchain that cannot build the kernels
        is an error naming the way out, not a silent switch to the eager ops."""
        from landslide.errors import ConfigError

        try:
            self(x, torch.Generator().manual_seed(0), index=torch.arange(min(batch_size, x.shape[0])))
        except (RuntimeError, OSError) as e:  # Inductor's build and load failures (BackendCompilerFailed is one)
            raise ConfigError(f"the compiled augmentation kernels failed to build or run: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}",
                              fix="use --augment-kernel eager (same augmentations, eager ops), or repair the "
                                  "C++ toolchain torch.compile uses (g++ and the Python headers)") from e
