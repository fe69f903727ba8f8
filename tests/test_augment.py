"""Augmentation invariants: exact geometry, label following for Mixup/CutMix, determinism."""
import pytest
import torch

from landslide.augment import resolve_backend
from landslide.augment.mix import MixConfig, Mixer
from landslide.augment.torch import (
    AugmentConfig,
    AugmentParams,
    TorchAugment,
    apply,
    apply_batched,
    apply_host,
    dense_noise,
    draw_noise,
    geometric_theta,
)
from landslide.errors import ConfigError


def params(b, h=False, v=False, k=0, angle=0.0, scale=1.0, dx=0.0, dy=0.0, blur=0.0, noise=0.0):
    B = torch.full((b,), 1)
    theta = geometric_theta(B.bool() & h, B.bool() & v, B * k, B * angle, B * scale, B * dx, B * dy)
    holes = torch.zeros(b, 1, 4, dtype=torch.long)
    return AugmentParams(theta.float(), holes, torch.full((b,), noise), torch.full((b,), blur))


def test_flips_and_rot90_are_exact():
    x = torch.randn(2, 12, 64, 64)
    assert torch.allclose(apply(x, params(2, h=True)), x.flip(3), atol=1e-4)
    assert torch.allclose(apply(x, params(2, v=True)), x.flip(2), atol=1e-4)
    r = apply(x, params(2, k=1))
    assert any(torch.allclose(r, torch.rot90(x, s, (2, 3)), atol=1e-4) for s in (1, -1))


def test_shift_moves_along_its_own_axis():
    """``dx`` shifts along the width, ``dy`` along the height, by that fraction of the patch (the matrix
    maps output to input, so a positive shift moves the content towards index 0)."""
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 10, 20] = 1.0
    for kw, want in (({"dx": 0.25}, [10, 12]), ({"dy": 0.25}, [2, 20]), ({"dx": -0.125, "dy": 0.125}, [6, 24])):
        out = apply(x, params(1, **kw))[0, 0]
        assert (out > 0.5).nonzero().tolist() == [want], kw


def test_a_flip_twice_is_identity():
    x = torch.randn(3, 12, 64, 64)
    p = params(3, h=True)
    assert torch.allclose(apply(apply(x, p), p), x, atol=1e-4)
    p = params(3, k=2)
    assert torch.allclose(apply(apply(x, p), p), x, atol=1e-4)


def test_random_batches_keep_shape_dtype_and_are_seeded():
    aug = TorchAugment(AugmentConfig(p_blur=0.5, p_noise=0.5, p_dropout=0.5))
    x = torch.randn(16, 12, 64, 64)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b) and not torch.equal(a, c)


def test_coarse_dropout_zeroes_its_holes_only():
    x = torch.ones(1, 2, 8, 8)
    p = params(1)
    p.holes = torch.tensor([[[2, 3, 4, 6]]])
    y = apply(x, p)
    assert y[0, :, 2:4, 3:6].abs().sum() == 0 and y.sum() == 2 * 64 - 2 * 6


def test_blur_preserves_constants_and_smooths():
    x = torch.full((1, 1, 16, 16), 5.0)
    assert torch.allclose(apply(x, params(1, blur=1.0)), x, atol=1e-4)
    spike = torch.zeros(1, 1, 16, 16)
    spike[0, 0, 8, 8] = 1.0
    out = apply(spike, params(1, blur=1.0))
    assert out.max() < 0.5 and out.sum().item() == pytest.approx(1.0, abs=1e-4)


def test_mixup_labels_follow_the_mixing_weight():
    mixer = Mixer(MixConfig(mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0), seed=1)
    # Image i is the constant 10*i + 1; its label and cloud score are derived from i too.
    x = torch.stack([torch.full((1, 4, 4), 10.0 * i + 1) for i in range(8)])
    y = (torch.arange(8) % 2).float()
    cloud = torch.arange(8).float() / 8
    xm, ym, cm = mixer(x, y, cloud, torch.Generator().manual_seed(0))
    v = xm[:, 0, 0, 0]
    assert torch.allclose(xm, v.view(8, 1, 1, 1).expand_as(xm))  # mixup keeps images constant
    # Recover (lam, partner) from the pixel values and check labels/clouds used the same pair and lam.
    found = 0
    for i in range(8):
        for j in range(8):
            if i == j:
                continue
            lam = (v[i] - (10.0 * j + 1)) / (10.0 * (i - j))
            if 0 <= lam <= 1 and torch.isclose(ym[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5) \
                    and torch.isclose(cm[i], lam * cloud[i] + (1 - lam) * cloud[j], atol=1e-5):
                found += 1
                break
    assert found >= 7  # a sample paired with itself by the permutation is unmixed (i == j above)


def test_cutmix_label_equals_pasted_area():
    mixer = Mixer(MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0), seed=5)
    x = torch.cat([torch.zeros(4, 1, 16, 16), torch.ones(4, 1, 16, 16)])
    y = torch.cat([torch.zeros(4), torch.ones(4)])
    xm, ym, _ = mixer(x, y, y.clone(), torch.Generator().manual_seed(1))
    # Label = share of pixels that come from a positive image.
    assert torch.allclose(ym, xm.mean((1, 2, 3)), atol=1e-6)


def test_mix_and_switch_probabilities():
    """``prob`` is the share of batches mixed at all, ``switch_prob`` the share of those that get CutMix."""
    mixer = Mixer(MixConfig(mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.3, switch_prob=0.8), seed=2)
    consts = torch.arange(8.0) * 10 + 1  # image i is the constant 10*i + 1
    x = consts.view(8, 1, 1, 1).expand(8, 1, 16, 16).contiguous()
    y = torch.zeros(8)
    g = torch.Generator().manual_seed(0)
    kinds = {"none": 0, "cutmix": 0, "mixup": 0}
    for _ in range(600):
        xm, _, _ = mixer(x, y, y, g)
        if xm is x:
            kinds["none"] += 1
        elif torch.isin(xm, consts).all():  # CutMix pastes whole pixels: only the original constants remain
            kinds["cutmix"] += 1
        else:
            kinds["mixup"] += 1
    mixed = kinds["cutmix"] + kinds["mixup"]
    assert mixed / 600 == pytest.approx(0.3, abs=0.06)
    assert kinds["cutmix"] / mixed == pytest.approx(0.8, abs=0.1)


def test_unmixed_when_prob_zero():
    mixer = Mixer(MixConfig(prob=0.0), seed=0)
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0.0, 1.0, 0.0, 1.0])
    xm, ym, _ = mixer(x, y, y)
    assert xm is x and ym is y


def test_backend_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ConfigError):
        resolve_backend("opencv", cpu)


@pytest.mark.parametrize("cfg", [
    AugmentConfig(p_blur=0.5, p_noise=0.5, p_dropout=0.5),              # every op on a mix of samples
    AugmentConfig(p_ssr=0.0, p_blur=0.0, p_noise=0.0, p_dropout=0.0),   # flips/rot90 only: all exact
    AugmentConfig(p_ssr=1.0, p_blur=1.0, p_noise=1.0, p_dropout=1.0),   # every sample warped, blurred, noised
])
def test_host_path_equals_the_batched_gpu_path(cfg):
    """The CPU path splits the batch per op; the GPU path runs every op on the whole batch. Same result."""
    x = torch.randn(24, 12, 32, 32, generator=torch.Generator().manual_seed(0))
    aug = TorchAugment(cfg)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        p = aug.sample(24, 32, 32, g, x.device)
        noise = draw_noise(p, x.shape, g, x.device)
        assert noise.shape[0] == int((p.noise_std > 0).sum())  # the CPU draws noise for noisy samples only
        got = apply_host(x, p, noise)
        torch.testing.assert_close(got, apply_batched(x, p, noise), atol=1e-6, rtol=0)
        torch.testing.assert_close(got, apply_batched(x, p, dense_noise(noise, p)), atol=1e-6, rtol=0)


def test_flip_rot90_samples_are_copied_bit_exactly_on_the_host():
    x = torch.randn(8, 3, 16, 16)
    for k in range(4):
        for h in (False, True):
            got = apply_host(x, params(8, h=h, k=k))
            want = [torch.rot90(x.flip(3) if h else x, s, (2, 3)) for s in range(4)]
            assert any(torch.equal(got, w) for w in want)


def test_noise_rows_must_match_the_noisy_samples():
    x = torch.randn(4, 2, 8, 8)
    p = params(4, noise=0.1)
    p.noise_std[:2] = 0
    with pytest.raises(ValueError, match="noise has 3 rows"):
        apply_host(x, p, torch.randn(3, 2, 8, 8))


def test_parameters_reach_the_ends_of_their_ranges():
    """Uniforms at the ends give the configured extremes (the torch, compiled and DALI backends share this
    sampler, so their parity tests cannot see a wrong range): a +45 degree rotation at scale 1, no shift, no
    flip; noise std 0.1; blur sigma 1.0; 4 holes of 8 pixels a side."""
    import math

    from landslide.augment.torch import _COLUMNS, params_from_uniforms

    cfg = AugmentConfig()
    u = torch.full((1, len(_COLUMNS) + 4 * cfg.holes), 0.999999)
    col = {name: i for i, name in enumerate(_COLUMNS)}
    for name, v in {"ssr": 0.0, "angle": 1.0, "scale": 0.5, "dx": 0.5, "dy": 0.5, "dropout": 0.0,
                    "noise": 0.0, "noise_std": 1.0, "blur": 0.0, "blur_sigma": 1.0}.items():
        u[0, col[name]] = v
    u[0, len(_COLUMNS):].view(cfg.holes, 4)[:, 2:] = 0.0  # holes at the corner, so none is clipped
    p = params_from_uniforms(u, cfg, 64, 64)
    c = math.cos(math.radians(45))
    torch.testing.assert_close(p.theta[0], torch.tensor([[c, -c, 0.0], [c, c, 0.0]]))
    torch.testing.assert_close(p.noise_std, torch.tensor([0.1]))
    torch.testing.assert_close(p.blur_sigma, torch.tensor([1.0]))
    assert p.holes[0].tolist() == [[0, 0, 8, 8]] * 4
    # And at the other end: a -45 degree rotation, scale 0.9, a shift of -1/16 of the patch each way.
    u[0, col["angle"]], u[0, col["scale"]], u[0, col["dx"]], u[0, col["dy"]] = 0.0, 0.0, 0.0, 0.0
    theta = params_from_uniforms(u, cfg, 64, 64).theta[0]
    torch.testing.assert_close(theta, torch.tensor([[c, c, -0.125], [-c, c, -0.125]]) / torch.tensor([0.9, 0.9, 1.0]))
