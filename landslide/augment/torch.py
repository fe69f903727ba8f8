"""The seed's augmentations as batched torch ops on the training device (the reference backend).

Parameters are drawn per sample in one shot (:meth:`TorchAugment.sample`) and applied in one shot
(:func:`apply`), so the DALI backend and the tests can apply the very same parameters. All geometric
ops (h/v flip, rot90, shift-scale-rotate) compose into one 2x3 affine matrix per sample. Two ways to
apply them, same result (tested):

* :func:`apply_batched` (GPU): every op on the whole batch, one ``grid_sample``, nothing that needs
  the host to look at values, so a step never waits; pure flips/rot90 land on pixel centres.
* :func:`apply_host` (CPU, ``--augment-kernel eager``; ``compiled.py`` has the default CPU kernels):
  the host sees the parameters for free, so each op runs only on the samples
  that drew it, and flip/rot90-only samples are an exact pixel permutation instead of a warp.

Borders replicate the edge pixel (DALI's ``warp_affine`` does the same without a fill value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLUR_K = 5  # Gaussian blur kernel width (sigma up to ~1.2 px fits in it)
MIN_SIGMA = 1e-3  # "no blur": the 5-tap kernel is then exactly [0, 0, 1, 0, 0] (DALI is fed the same floor)


@dataclass
class AugmentConfig:
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.5
    p_ssr: float = 0.5          # shift-scale-rotate
    shift: float = 0.0625       # fraction of the patch
    scale: float = 0.1          # +- relative
    rotate: float = 45.0        # +- degrees
    p_dropout: float = 0.3      # coarse dropout
    holes: int = 4              # up to this many holes
    hole_size: int = 8          # up to this many pixels a side
    p_noise: float = 0.2
    noise_std: float = 0.1      # up to this std, in standardised units
    p_blur: float = 0.1
    blur_sigma: float = 1.0     # up to this sigma, in pixels


@dataclass
class AugmentParams:
    """Per-sample parameters for a batch of ``B``: all tensors have leading dim ``B``."""

    theta: torch.Tensor      # (B, 2, 3) affine matrix in normalised coordinates (output -> input)
    holes: torch.Tensor      # (B, K, 4) y0, x0, y1, x1 in pixels (half-open); empty holes have y1 <= y0
    noise_std: torch.Tensor  # (B,) 0 = off
    blur_sigma: torch.Tensor # (B,) 0 = off


# The per-sample uniforms ``TorchAugment.sample`` draws, one column each; the hole boxes follow them.
_COLUMNS = ("hflip", "vflip", "rot90", "quarters", "ssr", "angle", "scale", "dx", "dy", "dropout", "holes",
            "noise", "noise_std", "blur", "blur_sigma")


def geometric_theta(hflip: torch.Tensor, vflip: torch.Tensor, rot_k: torch.Tensor, angle_deg: torch.Tensor,
                    scale: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Compose flips, rot90 (k quarter turns), rotation/scale and shift into ``(B, 2, 3)``.

    ``dx``/``dy`` are fractions of the patch; the matrix maps output to input coordinates in
    ``affine_grid``'s normalised [-1, 1] space.
    """
    b = hflip.shape[0]
    dev = hflip.device
    eye = torch.eye(2, device=dev).expand(b, 2, 2)
    fx = torch.where(hflip, -1.0, 1.0)
    fy = torch.where(vflip, -1.0, 1.0)
    flip = torch.diag_embed(torch.stack([fx, fy], 1))
    a = rot_k.float() * (math.pi / 2) + angle_deg * (math.pi / 180)
    c, s = torch.cos(a), torch.sin(a)
    # Snap exact quarter turns so rot90 stays lossless (cos(pi/2) is 6e-17, not 0).
    c = torch.where(c.abs() < 1e-6, torch.zeros_like(c), c)
    s = torch.where(s.abs() < 1e-6, torch.zeros_like(s), s)
    rot = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1) / scale.view(b, 1, 1)
    m = rot @ flip @ eye
    t = torch.stack([dx * 2, dy * 2], 1).unsqueeze(2)
    return torch.cat([m, t], 2)


def params_from_uniforms(u: torch.Tensor, cfg: AugmentConfig, h: int, w: int) -> AugmentParams:
    """A batch's parameters from its uniforms ``u (B, U)`` (``TorchAugment.uniforms``): a pure function,
    so the compiled CPU path compiles it into one kernel instead of ~50 tiny ops."""
    b = u.shape[0]
    device = u.device
    k = max(cfg.holes, 1)
    c = dict(zip(_COLUMNS, u.unbind(1), strict=False))
    sym = lambda name, r: (c[name] * 2 - 1) * r  # noqa: E731 - uniform on [-r, r]
    hflip = c["hflip"] < cfg.p_hflip
    vflip = c["vflip"] < cfg.p_vflip
    rot_k = torch.where(c["rot90"] < cfg.p_rot90, (c["quarters"] * 3).long() + 1, 0)  # 1-3 quarter turns
    ssr = c["ssr"] < cfg.p_ssr
    angle = torch.where(ssr, sym("angle", cfg.rotate), 0.0)
    scale = torch.where(ssr, 1 + sym("scale", cfg.scale), 1.0)
    dx = torch.where(ssr, sym("dx", cfg.shift), 0.0)
    dy = torch.where(ssr, sym("dy", cfg.shift), 0.0)
    theta = geometric_theta(hflip, vflip, rot_k, angle, scale, dx, dy)
    n_holes = (c["holes"] * k).long().unsqueeze(1) + 1  # 1..k
    on = (c["dropout"] < cfg.p_dropout).unsqueeze(1) & (torch.arange(k, device=device) < n_holes)
    box = u[:, len(_COLUMNS):].view(b, k, 4)
    size = (box[..., :2] * cfg.hole_size).long() + 1  # 1..hole_size a side
    y0, x0 = (box[..., 2] * h).long(), (box[..., 3] * w).long()
    y1 = torch.where(on, (y0 + size[..., 0]).clamp(max=h), y0)
    x1 = torch.where(on, (x0 + size[..., 1]).clamp(max=w), x0)
    holes = torch.stack([y0, x0, y1, x1], 2)
    noise = torch.where(c["noise"] < cfg.p_noise, c["noise_std"] * cfg.noise_std, 0.0)
    blur = torch.where(c["blur"] < cfg.p_blur, 0.1 + c["blur_sigma"] * (cfg.blur_sigma - 0.1), 0.0)
    return AugmentParams(theta, holes, noise, blur)


class TorchAugment:
    memory_format = torch.contiguous_format  # how the training fold is best stored for this backend

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def sample(self, b: int, h: int, w: int, g: torch.Generator | None, device: torch.device) -> AugmentParams:
        """Every random number of the batch comes from one ``rand`` call: on a GPU each draw is a kernel
        launch, and this runs every step."""
        return params_from_uniforms(self.uniforms(b, g, device), self.cfg, h, w)

    def uniforms(self, b: int, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """The ``(B, U)`` uniforms one batch's parameters are made of (:func:`params_from_uniforms`)."""
        return torch.rand(b, len(_COLUMNS) + 4 * max(self.cfg.holes, 1), generator=g, device=device)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """Augment the batch ``x (B, C, H, W)``, or ``x[index]`` when ``index`` is given (the interface's
        gather, which the compiled CPU path's native gather does in place)."""
        x = x if index is None else x[index]
        p = self.sample(x.shape[0], x.shape[2], x.shape[3], g, x.device)
        return apply(x, p, draw_noise(p, x.shape, g, x.device, x.dtype))


def draw_noise(p: AugmentParams, shape, g: torch.Generator | None, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit normal noise for :func:`apply`: a field per noisy sample on the CPU, for all ``B`` elsewhere.

    On the CPU the ~``p_noise`` share of samples that get noise is known to the host for free, and
    drawing normals is the costliest op there (single-threaded), so only those rows are drawn, in
    sample order. On a GPU the noisy samples' count would need a host sync, and the draw is cheap.
    """
    b, c, h, w = shape
    rows = int((p.noise_std > 0).sum()) if torch.device(device).type == "cpu" else b
    return torch.randn((rows, c, h, w), generator=g, device=device, dtype=dtype)


def dense_noise(noise: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """``noise`` as ``(B, C, H, W)``: rows given only for the noisy samples are scattered into zeros."""
    b = p.noise_std.shape[0]
    if noise.shape[0] == b:
        return noise
    rows = torch.nonzero(p.noise_std > 0).flatten().to(noise.device)
    if noise.shape[0] != rows.numel():
        raise ValueError(f"noise has {noise.shape[0]} rows; expected {b} (all samples) or {rows.numel()} "
                         "(one per sample with noise_std > 0)")
    return torch.zeros((b, *noise.shape[1:]), dtype=noise.dtype, device=noise.device).index_copy_(0, rows, noise)


def gaussian_kernels(sigma: torch.Tensor, k: int = BLUR_K) -> torch.Tensor:
    """``(B, k)`` normalised 1-D Gaussian kernels; sigma 0 gives a delta (no blur)."""
    r = torch.arange(k, device=sigma.device, dtype=torch.float32) - (k - 1) / 2
    s = sigma.float().clamp_min(MIN_SIGMA).unsqueeze(1)
    w = torch.exp(-0.5 * (r / s) ** 2)
    return w / w.sum(1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with per-sample ``sigma (B,)``: a depthwise conv.

    Reflect-101 borders (torch's "reflect"): what the seed's cv2 GaussianBlur and DALI's gaussian_blur use.
    """
    b, c, h, w = x.shape
    kern = gaussian_kernels(sigma).to(x.dtype).repeat_interleave(c, 0)  # (B*C, k)
    pad = BLUR_K // 2
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kern.view(b * c, 1, 1, BLUR_K), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kern.view(b * c, 1, BLUR_K, 1), groups=b * c)
    return y.view(b, c, h, w)


def apply(x: torch.Tensor, p: AugmentParams, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``p`` to ``(B, C, H, W)``: geometry, blur, noise, then coarse dropout (fill 0 = band mean).

    ``noise`` is unit normal, either ``(B, C, H, W)`` or one row per sample with ``noise_std > 0``
    (what :func:`draw_noise` gives on the CPU). A GPU batch takes the batched path, whose every op
    covers the whole batch so nothing waits on the host; a CPU batch takes the host path, which
    splits the batch by what each sample needs (same result, tested against the batched path).
    """
    if x.device.type == "cpu":
        return apply_host(x, p, noise)
    return apply_batched(x, p, noise)


def apply_batched(x: torch.Tensor, p: AugmentParams, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Whole-batch ops with no host syncs: one ``grid_sample``, blur where sigma > 0, masks for holes."""
    b, c, h, w = x.shape
    dtype = x.dtype
    x = x.float()
    x = _warp(x, p.theta.float())
    on = (p.blur_sigma > 0).view(b, 1, 1, 1)  # sigma 0 would be an identity kernel; the where keeps it exact
    x = torch.where(on, _blur(x, p.blur_sigma), x)
    if noise is not None:
        x = x + p.noise_std.view(b, 1, 1, 1).float() * dense_noise(noise, p).float()
    yy = torch.arange(h, device=x.device).view(1, 1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, 1, w)
    hb = p.holes.view(b, -1, 4, 1, 1)
    inside = (yy >= hb[:, :, 0]) & (yy < hb[:, :, 2]) & (xx >= hb[:, :, 1]) & (xx < hb[:, :, 3])
    x = x.masked_fill(inside.any(1, keepdim=True), 0.0)
    return x.to(dtype)


def _dihedral(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B,)`` True where ``theta`` is a pure flip/rot90 (a signed permutation, no shift) of the pixel grid."""
    lin, t = theta[:, :, :2], theta[:, :, 2]
    unit = (lin == 0) | (lin.abs() == 1)
    nz = lin != 0
    ok = (t == 0).all(1) & unit.all((1, 2)) & (nz.sum(1) == 1).all(1) & (nz.sum(2) == 1).all(1)
    return ok if h == w else ok & (lin[:, 0, 1] == 0)  # an axis swap maps pixel centres only when square


def _centres(n: int, device: torch.device) -> torch.Tensor:
    """Pixel centres in ``affine_grid``'s normalised coordinates (align_corners=False): exact in float32."""
    return (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1


def _permute_pixels(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Exact flips/rot90: each output pixel copies the input pixel ``theta`` maps it to (one ``gather``)."""
    s, c, h, w = x.shape
    u, v = _centres(w, x.device).view(1, 1, w), _centres(h, x.device).view(1, h, 1)
    su = theta[:, 0, 0].view(s, 1, 1) * u + theta[:, 0, 1].view(s, 1, 1) * v
    sv = theta[:, 1, 0].view(s, 1, 1) * u + theta[:, 1, 1].view(s, 1, 1) * v
    col = (((su + 1) * w - 1) / 2).round().long()
    row = (((sv + 1) * h - 1) / 2).round().long()
    index = (row * w + col).view(s, 1, h * w).expand(s, c, h * w)
    return x.reshape(s, c, h * w).gather(2, index).view(s, c, h, w)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear affine warp, replicate border. The grid is ``affine_grid``'s (to ~5e-7) built with two
    ``addcmul``: its batched matmul costs 2x that on a CPU."""
    s, c, h, w = x.shape
    u, v = _centres(w, x.device).view(1, 1, w, 1), _centres(h, x.device).view(1, h, 1, 1)
    grid = torch.addcmul(theta[:, :, 2].view(s, 1, 1, 2), u, theta[:, :, 0].view(s, 1, 1, 2))
    grid = grid.addcmul(v, theta[:, :, 1].view(s, 1, 1, 2))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).flatten()


def apply_host(x: torch.Tensor, p: AugmentParams, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The CPU path: each op touches only the samples that need it, which the host knows for free.

    Flip/rot90-only samples (half the batch by default) take an exact pixel permutation instead of a
    bilinear warp; blur and noise run on their ~10-20 % of samples; holes are slice assignments.
    """
    b, c, h, w = x.shape
    dtype = x.dtype
    x = x.float()
    theta = p.theta.float()
    exact = _dihedral(theta, h, w)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for sel, op in ((_rows(exact), _permute_pixels), (_rows(~exact), _warp)):
        if len(sel) == b:
            out = op(x, theta)
        elif len(sel):
            out.index_copy_(0, sel, op(x.index_select(0, sel), theta.index_select(0, sel)))
    sel = _rows(p.blur_sigma > 0)
    if len(sel):
        out.index_copy_(0, sel, _blur(out.index_select(0, sel), p.blur_sigma.index_select(0, sel)))
    sel = _rows(p.noise_std > 0)
    if noise is not None and len(sel):
        rows = noise if noise.shape[0] == len(sel) else dense_noise(noise, p).index_select(0, sel)
        out.index_add_(0, sel, rows.float() * p.noise_std.index_select(0, sel).float().view(-1, 1, 1, 1))
    for i, boxes in enumerate(p.holes.tolist()):
        for y0, x0, y1, x1 in boxes:
            if y1 > y0 and x1 > x0:
                out[i, :, y0:y1, x0:x1] = 0.0
    return out.to(dtype)
