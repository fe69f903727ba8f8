import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landslide.preprocess import Normalize, fit_stats, median3x3, median_filter_sar


def test_median3x3_matches_reference_median():
    x = torch.randn(3, 5, 17, 13)
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    ref = p.unfold(2, 3, 1).unfold(3, 3, 1).reshape(3, 5, 17, 13, 9).median(-1).values
    assert torch.equal(median3x3(x), ref)


def test_median_removes_isolated_speckle():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 100.0
    assert median3x3(x).abs().max() == 0


def test_median_filter_touches_sar_channels_only():
    x = torch.randn(4, 12, 16, 16)
    y = median_filter_sar(x, [4, 5, 6, 7, 8, 9, 10, 11], chunk=3)
    assert torch.equal(y[:, :4], x[:, :4]) and torch.equal(y[:, 4:], median3x3(x[:, 4:]))
    assert torch.equal(median_filter_sar(x, []), x)
    z = x.clone()
    assert median_filter_sar(z, [4, 5, 6, 7, 8, 9, 10, 11], chunk=3, inplace=True) is z and torch.equal(z, y)


def test_fit_stats_matches_numpy():
    x = torch.randn(10, 3, 8, 8) * torch.tensor([1.0, 5.0, 0.0]).view(1, 3, 1, 1) + 3
    mean, std = fit_stats(x, chunk=4)
    xn = x.numpy().astype(np.float64)
    assert np.allclose(mean.numpy(), xn.mean((0, 2, 3)), atol=1e-5)
    assert np.allclose(std[:2].numpy(), xn.std((0, 2, 3))[:2], rtol=1e-4)
    assert std[2] == 1.0  # a constant band is left centred, not divided by zero
    rows = np.array([7, 1, 2, 8, 5])  # a fold's rows, in any order, gathered a chunk at a time
    m_rows, s_rows = fit_stats(x, rows, chunk=2)
    m_ref, s_ref = fit_stats(x[torch.from_numpy(rows)])
    assert torch.allclose(m_rows, m_ref, atol=1e-6) and torch.allclose(s_rows, s_ref, atol=1e-6)
    assert not torch.allclose(m_rows, mean, atol=1e-3)  # the rows, not the whole set


def test_normalize_and_cloud_score():
    mean, std = torch.full((5,), 10.0), torch.full((5,), 2.0)
    norm = Normalize(mean, std, optical_idx=[0, 1])
    x = torch.full((2, 5, 4, 4), 10.0)
    x[1, :2] = 30.0  # bright optical bands: a cloud
    z, cloud = norm(x)
    assert torch.allclose(z[0], torch.zeros(5, 4, 4))
    assert z[1, 0, 0, 0] == 10.0 and z[1, 2, 0, 0] == 0.0  # (30 - 10) / 2: divided by std, not scaled by it
    assert cloud[0] == 0.5 and cloud[1] > 0.99
    z2, c2 = Normalize(mean, std, optical_idx=[])(x)
    assert torch.equal(c2, torch.full((2,), 0.5))


@pytest.mark.parametrize("bands", [None, ["red", "green", "blue"]])
def test_serving_preprocessing_equals_the_training_cache(tmp_path, bands):
    """What every exported artefact computes first (FusedEnsemble.preprocess: NHWC raw -> NCHW, SAR median
    filter) is exactly what training read from its cache, for the 12-band layout and an optical-only one."""
    from landslide.bands import BandLayout
    from landslide.data import load_split
    from landslide.ensemble import FusedEnsemble

    from conftest import write_zindi

    d = write_zindi(tmp_path / "d", n_train=5, n_test=1, channels=len(bands or range(12)), bands=bands)
    split = load_split(d, "train", cache_dir=tmp_path / "cache")
    raw = torch.from_numpy(np.stack([np.load(d / "train_data" / f"{i}.npy") for i in split.ids]).astype(np.float32))
    layout = BandLayout.from_dir(d)
    got = FusedEnsemble([[]], [1.0], layout.sar_idx, layout.n_channels).preprocess(raw)
    assert got.shape == split.x.shape
    torch.testing.assert_close(got, split.x, rtol=0, atol=0)


def test_serving_merge_puts_each_filtered_sar_band_back_in_its_place():
    """SAR bands anywhere in the layout (here 3 and 0, in that order): the merge equals index_copy's."""
    from landslide.ensemble import FusedEnsemble

    raw = torch.randn(2, 64, 64, 5)
    got = FusedEnsemble([[]], [1.0], [3, 0], 5).preprocess(raw)
    x = raw.permute(0, 3, 1, 2)
    idx = torch.tensor([3, 0])
    want = x.index_copy(1, idx, median3x3(x.index_select(1, idx)))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, x)  # the filter did change the SAR bands
