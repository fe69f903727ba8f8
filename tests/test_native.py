"""The hand-written kernels (``augment/native.py`` + ``gather.cpp``) against torch ops: the bilinear
gather, and blur + noise + holes.

Builds the real kernel (well under a second) with the host's C++ compiler, once per variant.
"""
import pytest
import torch

from landslide.augment import compiled as C
from landslide.augment import native
from landslide.augment.torch import _blur, gaussian_kernels

pytestmark = pytest.mark.skipif(native.cpp_compiler() is None, reason="no C++ compiler to build the kernel")


def reference(x, index, p00, frac):
    """The same bilinear sum in torch ops: rows of x (N, H, W, C), the four taps clamped into the image."""
    n, h, w, c = x.shape
    xf = x.reshape(n, h * w, c)[index]  # (B, HW, C)
    p = p00.reshape(len(index), -1).long()
    last = h * w - 1
    taps = [p, (p + 1).clamp(max=last), (p + w).clamp(max=last), (p + w + 1).clamp(max=last)]
    v = [torch.gather(xf, 1, t.unsqueeze(-1).expand(-1, -1, c)) for t in taps]
    fx, fy = frac[0].reshape(len(index), -1, 1), frac[1].reshape(len(index), -1, 1)
    out = (v[0] * ((1 - fx) * (1 - fy)) + v[1] * (fx * (1 - fy))) + (v[2] * ((1 - fx) * fy) + v[3] * (fx * fy))
    return out.view(len(index), h, w, c).permute(0, 3, 1, 2)


def case(n=9, b=6, c=12, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, w, c, generator=g)
    index = torch.randint(0, n, (b,), generator=g)
    theta = torch.eye(2, 3).expand(b, 2, 3) + 0.3 * torch.randn(b, 2, 3, generator=g)  # warps, some past the border
    p00, frac = C._taps(theta, h, w)
    return x, index, p00, frac


@pytest.mark.parametrize("c", [12, 4, 3, 21])  # the unrolled band layouts (one masked vector a tap here); any other
def test_matches_torch_for_every_channel_count(c):
    x, index, p00, frac = case(c=c, h=32, w=48)
    out = native.interpolate(x, index, p00, frac)
    assert out.shape == (6, c, 32, 48) and out.is_contiguous(memory_format=torch.channels_last)
    assert (out - reference(x, index, p00, frac)).abs().max() < 1e-5


@pytest.mark.parametrize("c", [12, 4, 3])  # 4-wide vectors (12, 4 bands), the channel loop (3)
def test_portable_build_matches(c):
    """The build without AVX-512 (what an AVX2 or Arm host runs) gives the same result."""
    x, index, p00, frac = case(c=c)
    portable = native.interpolate(x, index, p00, frac, lib=native.library("LS_NO_AVX512"))
    assert (portable - reference(x, index, p00, frac)).abs().max() < 1e-5


def test_pure_flips_are_exact_copies():
    x, index, _, _ = case(b=4)
    theta = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]], [[0, -1, 0], [1, 0, 0]], [[1, 0, 0], [0, -1, 0]], [[1, 0, 0], [0, 1, 0]]])
    p00, frac = C._taps(theta, 64, 64)
    out = native.interpolate(x, index, p00, frac)
    src = x[index].permute(0, 3, 1, 2)
    assert torch.equal(out[0], src[0].flip(-1)) and torch.equal(out[2], src[2].flip(-2)) and torch.equal(out[3], src[3])
    assert torch.equal(out[1], torch.rot90(src[1], 1, (-2, -1)))


def test_thread_count_does_not_change_the_result():
    x, index, p00, frac = case(b=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.interpolate(x, index, p00, frac)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(one, native.interpolate(x, index, p00, frac))
    finally:
        torch.set_num_threads(threads)


def test_bad_input_is_refused_before_the_kernel_reads_it():
    x, index, p00, frac = case(n=5)
    with pytest.raises(IndexError, match="out of range \\[.*5\\].*fold of 5"):
        native.interpolate(x, torch.tensor([0, 5, 1, 2, 3, 4]), p00, frac)
    with pytest.raises(IndexError, match="-1"):
        native.interpolate(x, torch.tensor([0, -1, 1, 2, 3, 4]), p00, frac)
    with pytest.raises(ValueError, match="float32"):
        native.interpolate(x.double(), index, p00, frac)
    with pytest.raises(ValueError, match="contiguous"):
        native.interpolate(x.transpose(1, 2), index, p00, frac)
    with pytest.raises(ValueError, match="do not fit"):
        native.interpolate(x, index[:3], p00, frac)
    assert native.interpolate(x, index[:0], p00[:0], frac[:, :0]).shape == (0, 12, 64, 64)


def test_a_failed_build_names_the_compiler_error(monkeypatch, tmp_path):
    broken = tmp_path / "gather.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.raises(RuntimeError, match="building gather.cpp failed .*error"):
        native.library.__wrapped__()


def finish_case(b=8, c=12, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    sigma = torch.where(torch.rand(b, generator=g) < 0.5, 0.2 + torch.rand(b, generator=g), 0.0)
    std = torch.where(torch.rand(b, generator=g) < 0.5, 0.1 * torch.rand(b, generator=g), 0.0)
    y0, x0 = torch.randint(-2, h, (b, 3), generator=g), torch.randint(-2, w, (b, 3), generator=g)
    holes = torch.stack([y0, x0, y0 + torch.randint(0, 9, (b, 3), generator=g), x0 + 9], -1)  # some empty, some past the border
    noise = torch.randn(int((std > 0).sum()), c, h, w, generator=g)
    return x, sigma, std, holes, noise


def finish_reference(x, sigma, std, holes, noise):
    """Blur, noise and holes in torch ops, in the eager paths' order."""
    out = x.clone()
    on = sigma > 0
    if on.any():
        out[on] = _blur(out[on], sigma[on])
    sel = torch.nonzero(std > 0).flatten()
    out[sel] += noise * std[sel].view(-1, 1, 1, 1)
    for s, boxes in enumerate(holes.tolist()):
        for y0, x0, y1, x1 in boxes:
            out[s, :, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 0
    return out


@pytest.mark.parametrize("c", [12, 3, 21])
def test_finish_matches_torch(c):
    x, sigma, std, holes, noise = finish_case(c=c)
    assert (sigma > 0).any() and (std > 0).any() and ((sigma > 0) & (std > 0)).any()  # blur then noise on one sample
    ref = finish_reference(x, sigma, std, holes, noise)
    out = x.clone(memory_format=torch.channels_last)
    assert native.finish(out, sigma > 0, gaussian_kernels(sigma), noise, std, holes) is out  # in place
    assert (out - ref).abs().max() < 1e-5
    assert torch.equal(out == 0, ref == 0)  # the same holes, to the pixel


def test_finish_takes_a_field_per_sample_or_per_noisy_sample():
    x, sigma, std, holes, noise = finish_case()
    dense = torch.zeros(8, *noise.shape[1:])
    dense[std > 0] = noise
    a, b = x.clone(memory_format=torch.channels_last), x.clone(memory_format=torch.channels_last)
    native.finish(a, sigma > 0, gaussian_kernels(sigma), noise, std, holes)
    native.finish(b, sigma > 0, gaussian_kernels(sigma), dense.contiguous(memory_format=torch.channels_last), std, holes)
    assert torch.equal(a, b)
    none = x.clone(memory_format=torch.channels_last)
    native.finish(none, torch.zeros(8, dtype=torch.bool), gaussian_kernels(sigma), None, std, holes[:, :0])
    assert torch.equal(none, x)  # nothing drawn: untouched


def test_finish_refuses_what_does_not_fit():
    x, sigma, std, holes, noise = finish_case()
    out = x.clone(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="noise has 1 rows; expected 8 .* or"):
        native.finish(out, sigma > 0, gaussian_kernels(sigma), noise[:1], std, holes)
    with pytest.raises(ValueError, match="channels-last"):
        native.finish(x.contiguous(), sigma > 0, gaussian_kernels(sigma), noise, std, holes)
    with pytest.raises(ValueError, match="one row per sample"):
        native.finish(out, sigma[:4] > 0, gaussian_kernels(sigma), noise, std, holes)


# SplitMix64's constants as signed int64 (torch has no uint64; products wrap the same way)
GAMMA, MIX1, MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def reference_normals(seed, rows, h, w, c):
    """What ``gather.cpp`` computes, in torch ops and float64 trigonometry: pair ``i`` of the
    ``(rows, H, W, pairs)`` counters is SplitMix64's ``i``-th output after ``seed``; its top and middle
    24 bits are Box-Muller's uniforms; cosines fill channels ``0..pairs-1``, sines the rest."""
    srl = lambda z, k: (z >> k) & ((1 << (64 - k)) - 1)  # noqa: E731 - logical shift of int64
    pairs = (c + 1) // 2
    i = torch.arange(rows * h * w * pairs, dtype=torch.int64).view(rows, h, w, pairs)
    z = seed + (i + 1) * GAMMA
    z = (z ^ srl(z, 30)) * MIX1
    z = (z ^ srl(z, 27)) * MIX2
    z = z ^ srl(z, 31)
    u1 = (srl(z, 40) + 1).double() * 2.0**-24
    u2 = ((z >> 16) & 0xFFFFFF).double() * 2.0**-24
    r, a = torch.sqrt(-2 * torch.log(u1)), 2 * torch.pi * u2
    out = torch.cat([r * torch.cos(a), r * torch.sin(a)], -1)[..., :c]
    return out.permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("c,h,w", [(12, 16, 24), (3, 16, 24), (21, 16, 24), (2051, 2, 3)])  # last: a pixel a chunk
def test_normals_are_the_formula(c, h, w):
    seed = -1234567890123456789
    z = native.normals(seed, 3, h, w, c)
    assert z.shape == (3, c, h, w) and z.is_contiguous(memory_format=torch.channels_last)
    assert (z - reference_normals(seed, 3, h, w, c)).abs().max() < 2e-6


def test_normals_are_standard_normal_and_seeded():
    """N(0, 1) moments and tail shares, no correlation between neighbours (pairs share a hash,
    channels j and pairs + j), reproducible per seed and different across seeds."""
    z = native.normals(12345, 16, 64, 64, 12).permute(0, 2, 3, 1)
    assert torch.isfinite(z).all()
    f = z.flatten().double()  # 786,432 draws: the bounds below are > 5 standard errors wide
    assert abs(f.mean()) < 0.006 and abs(f.std() - 1) < 0.005
    assert abs((f ** 4).mean() / f.var() ** 2 - 3) < 0.03
    assert abs((f.abs() < 1).double().mean() - 0.6827) < 0.003
    assert abs((f.abs() > 2).double().mean() - 0.0455) < 0.0015
    for a, b in ((z[..., :6], z[..., 6:]), (z[..., :-1], z[..., 1:]), (z[:, :, :-1], z[:, :, 1:])):
        assert abs((a * b).mean()) < 0.006
    assert torch.equal(z, native.normals(12345, 16, 64, 64, 12).permute(0, 2, 3, 1))
    other = native.normals(12346, 16, 64, 64, 12).permute(0, 2, 3, 1)
    assert abs((z * other).double().mean()) < 0.006


@pytest.mark.parametrize("c", [12, 3, 21])
def test_noise_made_in_the_kernel_is_the_seeds_rows(c):
    """finish(seed=...) adds, to the r-th noisy sample, row r of normals(seed): as if given those rows."""
    x, sigma, std, holes, _ = finish_case(c=c)
    rows = native.normals(77, int((std > 0).sum()), 32, 40, c)
    a, b = x.clone(memory_format=torch.channels_last), x.clone(memory_format=torch.channels_last)
    native.finish(a, sigma > 0, gaussian_kernels(sigma), None, std, holes, seed=77)
    native.finish(b, sigma > 0, gaussian_kernels(sigma), rows, std, holes)
    assert (a - b).abs().max() < 1e-6 and not torch.equal(a, x)
    with pytest.raises(ValueError, match="not both"):
        native.finish(a, sigma > 0, gaussian_kernels(sigma), rows, std, holes, seed=77)
