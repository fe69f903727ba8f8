"""The torch backend's compiled CPU path (``augment/compiled.py``) against the eager reference.

Compiles real Inductor C++ kernels (a few seconds, once per session: the kernels are module-level).
"""
import pytest
import torch

from landslide.augment import build_augment, resolve_backend
from landslide.augment import compiled as C
from landslide.augment.torch import AugmentConfig, TorchAugment, apply_host, draw_noise, params_from_uniforms
from landslide.errors import ConfigError

CPU = torch.device("cpu")
EVERY_OP = AugmentConfig(p_blur=0.5, p_noise=0.5, p_dropout=0.5)

pytestmark = pytest.mark.skipif(C.cpp_compiler() is None, reason="no C++ compiler for torch.compile's CPU backend")


def batch(b=16, c=12, seed=0):
    return torch.randn(b, c, 64, 64, generator=torch.Generator().manual_seed(seed))


def draw(cfg, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    p = TorchAugment(cfg).sample(b, 64, 64, g, CPU)
    return p, draw_noise(p, (b, 12, 64, 64), g, CPU)


def test_matches_the_eager_host_path():
    """Every op on: the same parameters and noise give the eager path's output. Warped pixels differ
    by float32 rounding of the sample position (grid_sample rounds it differently), which on
    unit-variance noise (the steepest data there is) moves values by ~2e-5; both are that far from
    a float64 warp."""
    x = batch(32)
    p, noise = draw(EVERY_OP, 32)
    ref = apply_host(x, p, noise)
    out = C.apply_compiled(x.contiguous(memory_format=torch.channels_last), p, noise)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max() < 1e-4
    assert torch.equal(out == 0, ref == 0)  # the same holes (nothing else of random data is exactly 0)


def test_flips_rot90_and_holes_are_exact():
    """No warp: flips/rot90 are pixel copies, and every sample's holes (up to 4 boxes, some cut by the
    border) zero exactly the eager path's pixels."""
    x = batch(48)
    p, noise = draw(AugmentConfig(p_ssr=0.0, p_blur=0.0, p_noise=0.0, p_dropout=1.0, holes=4, hole_size=12), 48)
    assert (p.holes[..., 2] >= 64).any() or (p.holes[..., 3] >= 64).any()  # some box reaches the border
    assert torch.equal(C.apply_compiled(x, p, noise), apply_host(x, p, noise))


def test_gathers_rows_of_the_fold_in_place_and_reads_any_layout():
    fold = batch(40).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([5, 0, 39, 5, 17, 2, 8, 30])
    p, noise = draw(EVERY_OP, 8)
    gathered = C.apply_compiled(fold, p, noise, index)
    assert torch.equal(gathered, C.apply_compiled(fold[index], p, noise))
    assert torch.equal(gathered, C.apply_compiled(fold[index].contiguous(), p, noise))  # NCHW: one copy first


def test_parameters_are_the_eager_samplers():
    cfg = EVERY_OP
    u = TorchAugment(cfg).uniforms(64, torch.Generator().manual_seed(3), CPU)
    a, b = C._kernel("params")(u, cfg, 64, 64), params_from_uniforms(u, cfg, 64, 64)
    assert torch.allclose(a.theta, b.theta, atol=1e-6) and torch.equal(a.holes, b.holes)
    assert torch.allclose(a.noise_std, b.noise_std) and torch.allclose(a.blur_sigma, b.blur_sigma)


def test_augmenter_is_seeded_and_gathers_like_every_backend():
    fold = batch(20).contiguous(memory_format=torch.channels_last)
    index = torch.arange(20).flip(0)[:12]
    aug = build_augment("torch-compiled", EVERY_OP, CPU, 12, 0)
    assert aug.memory_format == torch.channels_last
    a = aug(fold, torch.Generator().manual_seed(7), index=index)
    b = aug(fold[index], torch.Generator().manual_seed(7))
    c = aug(fold, torch.Generator().manual_seed(8), index=index)
    assert a.shape == (12, 12, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert aug.compile_s is not None and aug.compile_s > 0
    warm = build_augment("torch-compiled", EVERY_OP, CPU, 12, 0)
    warm.warm_up(fold, 12)  # what training does before epoch 1: the run's own streams are untouched
    assert torch.equal(warm(fold, torch.Generator().manual_seed(7), index=index), a)


def test_eager_backend_takes_the_same_index():
    x = batch(10)
    index = torch.tensor([3, 3, 9, 0])
    aug = TorchAugment(EVERY_OP)
    assert torch.equal(aug(x, torch.Generator().manual_seed(2), index=index),
                       aug(x[index], torch.Generator().manual_seed(2)))


def test_noise_level_follows_noise_std():
    x = torch.zeros(64, 12, 64, 64)
    aug = build_augment("torch-compiled", AugmentConfig(p_hflip=0, p_vflip=0, p_rot90=0, p_ssr=0, p_blur=0,
                                                        p_dropout=0, p_noise=1.0), CPU, 64, 0)
    g = torch.Generator().manual_seed(4)
    p = aug.sampler.sample(64, 64, 64, torch.Generator().manual_seed(4), CPU)
    out = aug(x, g)
    assert torch.allclose(out.flatten(1).std(1), p.noise_std, rtol=0.02, atol=1e-6)


def test_kernel_choice(monkeypatch):
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert C.resolve_kernel("auto", "torch", CPU) == "compiled"
    assert C.resolve_kernel("auto", "torch", cuda) == "eager" and C.resolve_kernel("auto", "dali", CPU) == "eager"
    assert resolve_backend("torch", CPU, "compiled") == "torch-compiled"
    assert resolve_backend("auto", CPU, "eager") == "torch" and resolve_backend("auto", CPU) == "torch"
    with pytest.raises(ConfigError, match="CPU path") as e:
        C.resolve_kernel("compiled", "torch", cuda)
    assert "--augment-kernel auto" in str(e.value)
    with pytest.raises(ConfigError, match="dali backend"):
        C.resolve_kernel("compiled", "dali", CPU)
    with pytest.raises(ConfigError, match="unknown"):
        C.resolve_kernel("numba", "torch", CPU)
    monkeypatch.setattr(C, "cpp_compiler", lambda: None)
    assert C.resolve_kernel("auto", "torch", CPU) == "eager"  # and the start-up line says so
    with pytest.raises(ConfigError, match="C\\+\\+ compiler") as e:
        C.resolve_kernel("compiled", "torch", CPU)
    assert "g++" in str(e.value) and "--augment-kernel eager" in str(e.value)


def test_a_kernel_build_failure_is_a_config_error(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("C++ compile error: cannot find Python.h\n...")

    monkeypatch.setattr(C, "apply_compiled", broken)
    aug = build_augment("torch-compiled", EVERY_OP, CPU, 4, 0)
    with pytest.raises(ConfigError, match="failed to build or run: RuntimeError: C\\+\\+ compile error") as e:
        aug.warm_up(batch(4), 4)
    assert "--augment-kernel eager" in str(e.value)
