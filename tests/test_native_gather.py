"""The hand-written bilinear gather (``augment/native.py`` + ``gather.cpp``) against torch ops.

Builds the real kernel (well under a second) with the host's C++ compiler, once per variant.
"""
import pytest
import torch

from landslide.augment import compiled as C
from landslide.augment import native

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


@pytest.mark.parametrize("c", [12, 4, 3, 20, 21])  # unrolled layouts; the 4-wide vector loop; the scalar loop
def test_matches_torch_for_every_channel_count(c):
    x, index, p00, frac = case(c=c, h=32, w=48)
    out = native.interpolate(x, index, p00, frac)
    assert out.shape == (6, c, 32, 48) and out.is_contiguous(memory_format=torch.channels_last)
    assert (out - reference(x, index, p00, frac)).abs().max() < 1e-5


def test_portable_vector_path_matches():
    """The build without AVX-512 (what an AVX2 or Arm host runs for 12 bands) gives the same result."""
    x, index, p00, frac = case()
    portable = native.interpolate(x, index, p00, frac, lib=native.library("LS_NO_AVX512"))
    assert (portable - native.interpolate(x, index, p00, frac)).abs().max() < 1e-5


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
