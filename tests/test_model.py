import pytest
import torch

from landslide.bands import BandLayout
from landslide.errors import ConfigError
from landslide.model import LandslideModel, ModelConfig, parse_arch, tta_mean, tta_views


@pytest.mark.parametrize("fusion", ["attention", "concat"])
@pytest.mark.parametrize("modalities", ["both", "optical", "sar"])
def test_shapes_for_fusions_and_modalities(fusion, modalities):
    m = LandslideModel(ModelConfig(fusion=fusion, modalities=modalities), BandLayout()).eval()
    out = m(torch.randn(3, 12, 64, 64), torch.rand(3))
    assert out.shape == (3,)
    assert hasattr(m, "optical") == (modalities != "sar")
    assert hasattr(m, "sar") == (modalities != "optical")
    assert (m.gate is not None) == (fusion == "attention")


def test_optical_only_data_trains_the_optical_branch_alone():
    m = LandslideModel(ModelConfig(), BandLayout(("red", "green", "blue"))).eval()
    assert m.use_optical and not m.use_sar
    assert m(torch.randn(2, 3, 64, 64), torch.rand(2)).shape == (2,)


def test_sar_only_request_on_optical_data_is_refused():
    with pytest.raises(ConfigError, match="modalities"):
        LandslideModel(ModelConfig(modalities="sar"), BandLayout(("red", "green", "blue")))


def test_upsampling_happens_inside_forward():
    seen = {}
    m = LandslideModel(ModelConfig(img_size=96), BandLayout()).eval()

    def hook(mod, args):
        seen["shape"] = tuple(args[0].shape)

    m.optical.register_forward_pre_hook(hook)
    m(torch.randn(2, 12, 64, 64), torch.rand(2))
    assert seen["shape"] == (2, 4, 96, 96)


def test_branches_get_the_callers_memory_format():
    """A channels-last batch reaches both branches channels-last (index_select alone would hand them NCHW,
    for cuDNN to transpose against channels-last weights), the upsampled optical input too; an NCHW batch
    stays NCHW; the logits are the same either way."""
    torch.manual_seed(0)
    m = LandslideModel(ModelConfig(img_size=96), BandLayout()).eval()
    seen = {}
    for name in ("optical", "sar"):
        getattr(m, name).register_forward_pre_hook(
            lambda mod, args, name=name: seen.__setitem__(name, args[0].is_contiguous(memory_format=torch.channels_last)))
    x, cloud = torch.randn(2, 12, 64, 64), torch.rand(2)
    with torch.no_grad():
        ref = m(x, cloud)
        assert seen == {"optical": False, "sar": False}
        got = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), cloud)
    assert seen == {"optical": True, "sar": True}
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_gate_reads_the_cloud_score():
    torch.manual_seed(0)
    m = LandslideModel(ModelConfig(dropout=0.0), BandLayout()).eval()
    x = torch.randn(2, 12, 64, 64)
    assert not torch.allclose(m(x, torch.zeros(2)), m(x, torch.ones(2)))


def test_parse_arch():
    assert parse_arch("efficientnet_b5@384") == ("efficientnet_b5", 384)
    assert parse_arch("test_efficientnet") == ("test_efficientnet", 0)
    with pytest.raises(ConfigError):
        parse_arch("x@big")
    for spec, says in (("x@0", "SIZE 0 px is below 32"), ("x@-224", "SIZE -224 px"), ("x@16", "SIZE 16 px"),
                       ("@224", "no backbone name")):
        with pytest.raises(ConfigError, match=says) as e:
            parse_arch(spec)
        assert e.value.fix.startswith("write ")
    assert parse_arch("x@32") == ("x", 32)


def test_unknown_backbone_names_the_fix():
    with pytest.raises(ConfigError, match="timm.list_models"):
        LandslideModel(ModelConfig(backbone="not_a_model"), BandLayout())


def test_missing_pretrained_file_is_an_error_not_random_weights(tmp_path):
    with pytest.raises(ConfigError, match="pretrained checkpoint not found"):
        LandslideModel(ModelConfig(pretrained=str(tmp_path / "nope.pth")), BandLayout())


def test_weights_of_another_backbone_are_refused_naming_the_file(tmp_path):
    import timm

    path = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), path)
    with pytest.raises(ConfigError) as e:
        LandslideModel(ModelConfig(pretrained=str(path)), BandLayout())
    msg = str(e.value)
    assert msg.startswith(f"file {path}: cannot load it as test_efficientnet weights (RuntimeError: Error(s) in loading")
    assert "\n" not in msg and "of test_efficientnet itself" in msg


def test_pretrained_local_checkpoint_is_loaded_with_adapted_stem(tmp_path):
    import timm

    src = timm.create_model("test_efficientnet", pretrained=False)  # 3-channel, like a hub checkpoint
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    m = LandslideModel(ModelConfig(pretrained=str(path)), BandLayout())
    stem = m.optical.conv_stem.weight
    assert stem.shape[1] == 4
    # Every weight after the stem is copied verbatim; the classifier is dropped (num_classes=0).
    got, want = m.optical.state_dict(), src.state_dict()
    shared = [k for k in got if k != "conv_stem.weight"]
    assert shared and all(torch.equal(got[k], want[k]) for k in shared)
    # timm's adapt_input_conv: RGB filters repeated to 4 inputs and scaled by 3/4.
    w = want["conv_stem.weight"]
    assert torch.allclose(stem[:, :3], w * 0.75) and torch.allclose(stem[:, 3], w[:, 0] * 0.75)


def test_tta_views_and_mean():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    v = tta_views(x)
    assert v.shape == (8, 1, 2, 2)
    assert torch.equal(v[:2], x) and torch.equal(v[2:4], x.flip(3))
    assert torch.equal(v[4:6], x.flip(2)) and torch.equal(v[6:], x.flip((2, 3)))
    logits = torch.tensor([0.0, 2.0] * 4)
    assert torch.allclose(tta_mean(logits), torch.sigmoid(torch.tensor([0.0, 2.0])))


def test_a_mistyped_backbone_is_refused_with_close_names():
    from landslide.model import check_model_config

    with pytest.raises(ConfigError, match=r"did you mean efficientnet_b0(,| or) .*timm.list_models\(\)"):
        check_model_config(ModelConfig(backbone="efficientnet_b0x"))
    with pytest.raises(ConfigError) as e:
        check_model_config(ModelConfig(backbone="resnet_bogus_zz"))
    assert "did you mean" not in str(e.value) and "timm.list_models()" in str(e.value)
