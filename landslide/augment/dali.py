"""The seed's augmentations as an NVIDIA DALI pipeline (GPU, or DALI's CPU-only mode without one).

Same interface as :class:`~landslide.augment.torch.TorchAugment`: ``aug(x, generator) -> x`` for a
``(B, C, H, W)`` float batch on the training device. DALI only does the pixel work; the randomness
comes from torch, so both backends draw parameters with :meth:`TorchAugment.sample`:

* on the CPU the caller's generator draws the parameters and the noise exactly as ``TorchAugment``
  does, so for one generator state the two backends give the same output (tested);
* on a GPU DALI's per-sample arguments (matrix, sigma, erase boxes) must be host tensors. Drawing
  them on the device would cost a device->host copy, i.e. a host sync, every step. Instead they are
  drawn on the host by a CPU generator seeded from the device generator's (seed, offset) state,
  which the host reads without waiting for the device. Parameters then differ from the torch
  backend's (another random stream, same distributions) but stay reproducible from the device
  generator — a resumed run reseeds it per epoch and gets the same augmentations.

Pixel pipeline, in the torch backend's order: ``warp_affine`` (bilinear, no fill value = replicate
the border, as ``grid_sample(padding_mode="border")``) -> ``gaussian_blur`` (5-tap window) -> add
noise (a torch-drawn normal field scaled per sample, fed in) -> ``erase`` (coarse dropout, fill 0).
Batches travel as ``(B, H, W, C)`` because DALI's image ops want channel-last; the result is handed
back as a ``(B, C, H, W)`` view of that memory, i.e. already channels-last for the model.
"""
from __future__ import annotations

import hashlib

import torch

from landslide.augment.torch import BLUR_K, MIN_SIGMA, AugmentConfig, AugmentParams, TorchAugment, dense_noise, draw_noise
from landslide.errors import ConfigError


def theta_to_pixel_matrix(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``affine_grid`` matrices ``(B, 2, 3)`` -> DALI ``warp_affine`` matrices ``(B, 2, 3)`` float32.

    Both map output -> input with rows (x, y). ``affine_grid(align_corners=False)`` works in
    normalised coordinates ``u = 2 * p / W - 1`` where ``p`` is DALI's pixel coordinate (pixel ``i``
    spans ``[i, i + 1)``, centre ``i + 0.5``), so with ``S = diag(W/2, H/2)``:
    ``p_in = S A S^-1 p_out + S (t - A 1 + 1)``.
    """
    theta = theta.detach().double().cpu()
    a, t = theta[:, :, :2], theta[:, :, 2]
    s = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    lin = a * s.view(1, 2, 1) / s.view(1, 1, 2)
    shift = s * (t - a.sum(2) + 1)
    return torch.cat([lin, shift.unsqueeze(2)], 2).float()


def erase_args(holes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K, 4)`` half-open boxes -> ``erase``'s flat (anchor, shape) per sample, ``(B, 2K)`` float32.

    Empty holes become zero-sized regions, which ``erase`` accepts; so every sample keeps K regions.
    """
    holes = holes.detach().cpu()
    anchor = holes[..., :2]
    shape = (holes[..., 2:] - anchor).clamp_min(0)
    b = holes.shape[0]
    return anchor.reshape(b, -1).float(), shape.reshape(b, -1).float()


def host_seed(state: torch.Tensor) -> int:
    """A CPU generator seed from a CUDA generator's state bytes (seed, philox offset), hashed.

    Not the bytes read as one integer: modulo 2**63 - 1 that is ``seed + 2 * offset``, so epoch seed
    ``s + 8`` at offset ``o`` would repeat epoch ``s`` at offset ``o + 4`` (offsets step by 4, epoch
    seeds by 1), i.e. the same augmentation parameters drawn again in a later epoch.
    """
    digest = hashlib.blake2b(bytes(state.tolist()), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes < 2**63


def _import_dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
    except ImportError:
        raise ConfigError("the dali data backend needs NVIDIA DALI",
                          fix="pip install nvidia-dali-cuda120 or nvidia-dali-cuda130, matching the CUDA major "
                              "version (or use --data-backend torch)") from None
    return dali, fn, types


def build_pipeline(batch_size: int, device_id: int | None, num_threads: int = 2, seed: int = 0,
                   dynamic: bool | None = None):
    """The DALI pipeline: external inputs x/noise ``(H, W, C)``, per-sample matrix/sigma/anchor/shape.

    One feed, one run per training step, queue depth 1: the batch is already in memory, so there is
    nothing to prefetch. ``dynamic`` (default: on a GPU) picks DALI 2's dynamic executor, its default
    and the one whose ``run(cuda_stream)`` hands outputs over in stream order; on the CPU the simple
    synchronous executor is ~20 % faster per batch here. Both are tested on the CPU.
    """
    dali, fn, types = _import_dali()
    dev = "cpu" if device_id is None else "gpu"
    dynamic = device_id is not None if dynamic is None else dynamic

    @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                       prefetch_queue_depth=1, exec_pipelined=dynamic, exec_async=dynamic, exec_dynamic=dynamic)
    def pipe():
        x = fn.external_source(name="x", device=dev, layout="HWC", dtype=types.FLOAT)
        noise = fn.external_source(name="noise", device=dev, layout="HWC", dtype=types.FLOAT)
        matrix = fn.external_source(name="matrix", dtype=types.FLOAT)
        sigma = fn.external_source(name="sigma", dtype=types.FLOAT)
        anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
        shape = fn.external_source(name="shape", dtype=types.FLOAT)
        y = fn.warp_affine(x, matrix=matrix, interp_type=types.INTERP_LINEAR, dtype=types.FLOAT)
        y = fn.gaussian_blur(y, sigma=sigma, window_size=BLUR_K, dtype=types.FLOAT)
        y = y + noise
        return fn.erase(y, anchor=anchor, shape=shape, axis_names="HW", fill_value=0.0)

    p = pipe()
    p.build()
    return p


class DaliAugment:
    """``aug(x (B, C, H, W), generator, index=None) -> x``: the torch backend's augmentations run by DALI."""

    memory_format = torch.contiguous_format  # the training fold's storage (the GPU path is unchanged by it)

    def __init__(self, cfg: AugmentConfig, device: torch.device | str, batch_size: int, seed: int,
                 dynamic: bool | None = None) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.sampler = TorchAugment(cfg)
        if self.device.type == "cuda":
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        elif self.device.type == "cpu":
            device_id = None  # DALI's CPU-only mode: same operators, no GPU needed
        else:
            raise ConfigError(f"the dali backend cannot run on {self.device}", fix="use --data-backend torch")
        self.pipe = build_pipeline(batch_size, device_id, seed=seed, dynamic=dynamic)
        self._host_gen = torch.Generator()

    def params(self, b: int, h: int, w: int, g: torch.Generator | None) -> AugmentParams:
        """Per-sample parameters, drawn where DALI needs them (host) without a device sync."""
        if g is None or g.device.type == "cpu":
            return self.sampler.sample(b, h, w, g, torch.device("cpu"))
        # A CUDA generator's state (seed, philox offset) lives on the host: reading it does not
        # wait for the device, and it advances with every draw, so each step gets a fresh seed.
        self._host_gen.manual_seed(host_seed(g.get_state()))
        return self.sampler.sample(b, h, w, self._host_gen, torch.device("cpu"))

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        x = x if index is None else x[index]  # the interface's gather (TorchAugment.__call__)
        b, _, h, w = x.shape
        if b > self.batch_size:
            raise ValueError(f"batch of {b} exceeds the DALI pipeline's batch size {self.batch_size}")
        if x.device != self.device and not (x.device.type == self.device.type == "cuda"):
            raise ValueError(f"batch on {x.device}, pipeline built for {self.device}")
        p = self.params(b, h, w, g)
        return self.apply(x, p, draw_noise(p, x.shape, g, x.device, x.dtype))

    def apply(self, x: torch.Tensor, p: AugmentParams, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Apply host-side parameters ``p`` to ``x (B, C, H, W)`` — the DALI twin of ``torch.apply``."""
        b, c, h, w = x.shape
        dtype = x.dtype
        xf = x.float().permute(0, 2, 3, 1).contiguous()
        std = p.noise_std.float().cpu()
        if noise is None:
            field = torch.zeros_like(xf)
        else:
            if xf.is_cuda:  # pinned, so the copy is asynchronous: no host sync
                std = std.pin_memory().to(xf.device, non_blocking=True)
            field = (std.view(b, 1, 1, 1) * dense_noise(noise, p).float().permute(0, 2, 3, 1)).contiguous()
        mat = theta_to_pixel_matrix(p.theta, h, w).numpy()
        sigma = p.blur_sigma.float().cpu().clamp_min(MIN_SIGMA).numpy()
        anchor, shape = (t.numpy() for t in erase_args(p.holes))
        feeds = {"matrix": list(mat), "sigma": list(sigma), "anchor": list(anchor), "shape": list(shape)}
        if xf.is_cuda:
            stream = torch.cuda.current_stream(xf.device)
            self.pipe.feed_input("x", xf, layout="HWC", cuda_stream=stream)
            self.pipe.feed_input("noise", field, layout="HWC", cuda_stream=stream)
            for k, v in feeds.items():
                self.pipe.feed_input(k, v)
            (out,) = self.pipe.run(stream)
            from nvidia.dali.plugin.pytorch import feed_ndarray

            y = torch.empty((b, h, w, c), dtype=torch.float32, device=xf.device)
            feed_ndarray(out.as_tensor(), y, cuda_stream=stream)
        else:
            self.pipe.feed_input("x", xf.numpy(), layout="HWC")
            self.pipe.feed_input("noise", field.numpy(), layout="HWC")
            for k, v in feeds.items():
                self.pipe.feed_input(k, v)
            (out,) = self.pipe.run()
            y = torch.from_numpy(out.as_array())
        return y.permute(0, 3, 1, 2).to(dtype)
