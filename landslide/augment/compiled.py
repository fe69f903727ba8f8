"""The torch backend's compiled CPU path: the seed's augmentations as compiled kernels.

On a CPU, ``grid_sample`` is the costliest op of a batch (it gathers every tap of every channel on
its own), ``torch.randn`` runs on one core, and each further op is another pass over the batch. Here,
once per process, ``torch.compile`` (Inductor C++) builds

* ``params``: the batch's parameters from its uniforms (``torch.params_from_uniforms``: ~50 tiny ops);
* ``taps``: the geometry (flips, rot90, shift-scale-rotate, one 2x3 matrix per sample) as one index
  and two fractions per output pixel, vectorised across pixels;

and ``native.py`` builds two hand-written loops (``gather.cpp``), where a generated loop falls short:

* the bilinear gather: it reads the channels-last fold in place (the gather is its own indexing),
  each tap's channels one vector load, and prefetches each next sample, without which rotated reads
  wait on memory (4-5x slower than a shift);
* blur, noise and holes, in that order, in one pass per sample in place (no gathered subsets); the
  noise is counter-based (SplitMix64 + Box-Muller), made where it is added, on every core.

Same parameters (the same function as :meth:`TorchAugment.sample`), ops and order as the eager paths.
Flip/rot90-only samples stay exact (their taps carry weight 1 and 0); warped samples agree with
``grid_sample`` to float32 rounding of the sample position (~2e-5 on unit-variance noise; tested). The
noise has ``torch.randn``'s distribution, not its numbers. The output is a ``(B, C, H, W)`` tensor in
channels-last memory, which the model's convolutions prefer; a channels-last input (the training fold
is stored so) is read in place, any other layout costs one transposing copy first.
"""
from __future__ import annotations

import logging
import time

import torch

from landslide.augment import native
from landslide.augment.torch import AugmentConfig, AugmentParams, TorchAugment, _centres, gaussian_kernels, params_from_uniforms
from landslide.device import cpp_compiler

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


_KERNELS: dict[str, object] = {}  # compiled once per process: their graphs serve every augmenter


def _kernel(name: str):
    if name not in _KERNELS:
        # The batch size is fixed in training, so its first shape compiles static (a second one recompiles
        # once, dynamic).
        _KERNELS[name] = torch.compile({"params": params_from_uniforms, "taps": _taps}[name], fullgraph=True)
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
                   index: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
    """Apply ``p`` to ``x (B, C, H, W)``, or to ``x[index]``, float32 on the CPU: the geometry (compiled
    taps, then the native gather), then blur, noise (``noise`` as for :func:`~landslide.augment.torch.apply`,
    or made in the kernel from ``seed``: ``native.finish``) and holes on the samples that drew them
    (native, in place). ``(B, C, H, W)`` float32, channels-last."""
    if x.device.type != "cpu":
        raise ValueError(f"apply_compiled is the CPU path; got a batch on {x.device}")
    _, _, h, w = x.shape
    hwc = x.float().permute(0, 2, 3, 1).contiguous()  # a view of a channels-last fold: no copy
    index = torch.arange(x.shape[0]) if index is None else index
    p00, frac = _kernel("taps")(p.theta.float(), h, w)
    out = native.interpolate(hwc, index, p00, frac)
    return native.finish(out, p.blur_sigma > 0, gaussian_kernels(p.blur_sigma), noise, p.noise_std, p.holes, seed)


class CompiledAugment:
    """The torch backend on a CPU with its ops compiled: ``aug(x, g, index=None)`` like :class:`TorchAugment`.

    Parameters are made from ``TorchAugment.uniforms`` by the same function as ``TorchAugment.sample``
    (compiled), so the same generator state draws the same augmentations. The noise fields are made in
    the native kernel (``native.normals``) from one draw from ``g``: reproducible under a seed, the same
    distribution as ``torch.randn``'s, not the same numbers. The first call compiles (seconds; logged
    apart, ``compile_s``).
    """

    memory_format = torch.channels_last  # the fold stored so is read in place (no transposing copy)

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self.sampler = TorchAugment(cfg)  # its uniforms; the parameters are made from them by a compiled kernel
        self.compile_s: float | None = None

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """Augment ``x (B, C, H, W)``, or the batch ``x[index]`` of a fold ``x`` (gathered in the kernel)."""
        t0 = time.perf_counter()
        fresh = not _KERNELS  # this process compiles on this call
        h, w = x.shape[2:]
        b = x.shape[0] if index is None else index.shape[0]
        p = _kernel("params")(self.sampler.uniforms(b, g, x.device), self.cfg, h, w)
        seed = int(torch.randint(-2**63, 2**63 - 1, (), generator=g))  # drawn every call: g's stream stays fixed
        out = apply_compiled(x, p, index=index, seed=seed)
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
