"""Where the training fold lives: the placement rule, and the host-resident fold giving the same batches."""
import pytest
import torch

from landslide.errors import ConfigError
from landslide.fold import DeviceFold, HostFold, choose_placement, make_fold

GIB = 2**30
CUDA = torch.device("cuda", 0)


def test_placement_rule():
    assert choose_placement("auto", CUDA, 1 * GIB, 10 * GIB) == "device"
    assert choose_placement("auto", CUDA, 6 * GIB, 10 * GIB) == "host"  # over half the free memory
    assert choose_placement("host", CUDA, 1 * GIB, 10 * GIB) == "host"
    assert choose_placement("auto", torch.device("cpu"), 50 * GIB, None) == "device"  # one memory on a CPU
    with pytest.raises(ConfigError, match="needs 6.00 GiB") as e:
        choose_placement("device", CUDA, 6 * GIB, 10 * GIB)
    assert "--fold-on host" in str(e.value)
    with pytest.raises(ConfigError, match="unknown"):
        choose_placement("disk", CUDA, 1, 1)


def test_host_fold_gives_the_device_fold_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 8, 8, generator=g)
    y = (torch.arange(40) % 3 == 0).float()
    norm = lambda t: (t * 2, t.mean((1, 2, 3)))  # noqa: E731 - stands in for LandslideNet.normalize
    dev = make_fold(norm, x, y, torch.device("cpu"), torch.float32, "auto", 8)
    host = make_fold(norm, x, y, torch.device("cpu"), torch.float32, "host", 8)
    assert isinstance(dev, DeviceFold) and isinstance(host, HostFold)
    kept = []
    for s in range(5):  # more steps than buffers: a refill must not change a batch already handed out
        idx = torch.randint(0, 40, (8,), generator=g)
        a, b = dev.batch(idx), host.batch(idx)
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)
        kept.append((b[0], a[0]))
    assert all(torch.equal(u, v) for u, v in kept)
    assert torch.equal(dev.batch(torch.tensor([3]))[0], x[3:4] * 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pinned_host_fold_matches_the_device_fold_on_cuda():
    x = torch.randn(64, 12, 16, 16)
    y = (torch.arange(64) % 2).float()
    norm = lambda t: (t * 2, t.mean((1, 2, 3)))  # noqa: E731
    dev = make_fold(norm, x, y, CUDA, torch.float16, "device", 16)
    host = make_fold(norm, x, y, CUDA, torch.float16, "host", 16)
    assert host.x.is_pinned() and host.labels.device.type == "cpu"
    for s in range(6):
        idx = torch.randint(0, 64, (16,))
        a, b = dev.batch(idx.to(CUDA)), host.batch(idx)
        assert b[0].device.type == "cuda" and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
