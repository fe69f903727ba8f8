"""The training step's speed features: eager/graphed TrainStep, AMP, compile, refusals, DALI in the loop."""
from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from landslide.augment import dali_available
from landslide.bands import BandLayout
from landslide.config import make_config
from landslide.device import compile_toolchain, ieee_fp32, resolve_runtime
from landslide.errors import ConfigError
from landslide.losses import focal_loss
from landslide.model import LandslideModel, ModelConfig
from landslide.step import TrainStep, check_cuda_graphs, make_optimizer
from landslide.train import main
from landslide.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model(device: str = "cpu") -> LandslideModel:
    torch.manual_seed(0)
    # dropout 0: graph replay and eager draw dropout masks from different RNG offsets
    return LandslideModel(ModelConfig(dropout=0.0), BandLayout()).to(device)


def _batch(device: str = "cpu", b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 12, 64, 64, generator=g)
    y = (torch.arange(b) % 2).float()
    return x.to(device), y.to(device), torch.rand(b, generator=g).to(device)


def _step(model, rt, graphs=False, compiled=False, alpha=0.25, gamma=2.0):
    opt = make_optimizer(model, 1e-3, 1e-4, rt, graphs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
    fwd = torch.compile(model) if compiled else model
    return TrainStep(fwd, model, opt, sched, scaler, rt, alpha, gamma, graphs=graphs)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 0.5)])  # the second: not focal_loss's defaults
def test_eager_step_is_a_plain_adamw_step(alpha, gamma):
    rt = resolve_runtime("cpu")
    model, ref = _model(), _model()
    step = _step(model, rt, alpha=alpha, gamma=gamma)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for s in range(2):
        x, y, c = _batch(seed=s)
        loss = step(x, y, c)
        ref_loss = focal_loss(ref(x, c), y, alpha, gamma)
        opt.zero_grad()
        ref_loss.backward()
        opt.step()
        sched.step()
        assert loss.ndim == 0 and not loss.requires_grad
        torch.testing.assert_close(loss, ref_loss.detach())
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert step.sched.last_epoch == 2  # the step advances the schedule too


def _adamw_run(fused: bool, channels_last: bool, steps: int, state: dict | None = None, load=None):
    """A conv weight trained ``steps`` AdamW steps on fixed grads; optionally resumed from ``state``."""
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3)
    grads = [torch.randn_like(w) for _ in range(4)]
    p = torch.nn.Parameter(w.contiguous(memory_format=torch.channels_last) if channels_last else w.clone())
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=1e-2, fused=fused)
    done = 0
    if state is not None:
        with torch.no_grad():
            p.copy_(state["weight"])
        load(opt, state["optimizer"])
        done = state["steps"]
    for k in range(done, done + steps):
        p.grad = torch.empty_like(p).copy_(grads[k])  # autograd gives grads the parameter's layout
        opt.step()
    return p, opt


@pytest.mark.parametrize("saved_fused,saved_cl", [(True, True), (False, False)])
def test_resumed_optimizer_keeps_this_runs_implementation_and_layout(saved_fused, saved_cl):
    """A GPU run (fused AdamW, channels-last moments) resumed on the CPU and the reverse: the optimizer
    keeps the implementation and parameter layout this run chose, and continues the saved trajectory."""
    from landslide.step import load_optimizer_state

    ref, _ = _adamw_run(saved_fused, saved_cl, steps=4)  # uninterrupted, in the saved run's setup
    p, opt = _adamw_run(saved_fused, saved_cl, steps=2)
    state = {"weight": p.detach().clone(), "optimizer": copy.deepcopy(opt.state_dict()), "steps": 2}
    resumed, opt2 = _adamw_run(not saved_fused, not saved_cl, steps=2, state=state, load=load_optimizer_state)
    group = opt2.param_groups[0]
    assert bool(group["fused"]) is (not saved_fused)  # plain load_state_dict would keep the saved choice
    st = opt2.state[resumed]
    for name in ("exp_avg", "exp_avg_sq"):
        assert st[name].stride() == resumed.stride(), name
    assert st["step"].dtype == torch.float32 and st["step"].device.type == "cpu"
    torch.testing.assert_close(resumed.detach().contiguous(), ref.detach().contiguous(), atol=1e-6, rtol=1e-5)


def test_resumed_optimizer_keeps_this_runs_lr_type():
    """A run started eagerly (float lr) resumed with --cuda-graphs (tensor lr, read by the captured step)
    keeps its tensor, and the schedule moves that same tensor; plain load_state_dict put the saved float
    back, which a capture bakes in, so the lr froze at its resume-time value. And the reverse."""
    from landslide.step import load_optimizer_state

    def setup(lr):
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.AdamW([p], lr=lr, foreach=False)
        return p, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.0)

    p, opt, sched = setup(0.1)
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    saved, saved_sched = copy.deepcopy(opt.state_dict()), sched.state_dict()
    assert not torch.is_tensor(saved["param_groups"][0]["lr"])

    _, opt2, sched2 = setup(torch.tensor(0.1))
    lr_tensor = opt2.param_groups[0]["lr"]
    load_optimizer_state(opt2, copy.deepcopy(saved))
    sched2.load_state_dict(saved_sched)
    group = opt2.param_groups[0]
    assert group["lr"] is lr_tensor  # the very tensor a captured step reads
    assert float(lr_tensor) == pytest.approx(sched.get_last_lr()[0])
    sched.step()
    sched2.step()
    assert group["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(float(opt.param_groups[0]["lr"]))
    assert float(lr_tensor) < saved["param_groups"][0]["lr"]  # the schedule moved it

    _, opt3, _ = setup(0.1)  # a graph-run state resumed eagerly: the lr is a float again
    load_optimizer_state(opt3, copy.deepcopy(opt2.state_dict()))
    assert isinstance(opt3.param_groups[0]["lr"], float)
    assert opt3.param_groups[0]["lr"] == pytest.approx(float(lr_tensor))


def test_scaler_state_from_a_bf16_run_resumes_under_fp16():
    from landslide.step import load_scaler_state

    off, on = torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    with pytest.raises(RuntimeError, match="empty"):  # what a plain load did with a bf16 run's state
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict(off.state_dict())
    fresh = torch.amp.GradScaler("cpu", enabled=True)
    load_scaler_state(fresh, off.state_dict())
    assert fresh.get_scale() == 2.0**16  # a fresh scale: the bf16 run never had one
    load_scaler_state(fresh, on.state_dict())
    assert fresh.get_scale() == 8.0
    load_scaler_state(off, on.state_dict())  # fp16 run resumed in bf16: nothing to restore
    assert not off.is_enabled()


def test_cuda_graphs_refused_on_cpu():
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as e:
        check_cuda_graphs(resolve_runtime("cpu"), ddp=False)
    assert "drop --cuda-graphs" in str(e.value)
    cfg = make_config(TrainConfig, {"data": "unused", "device": "cpu", "cuda_graphs": True})
    with pytest.raises(ConfigError, match="cuda-graphs"):
        main(cfg)
    # A compile mode that captures graphs itself conflicts on any host, so it is named first (after the
    # compiler check of --compile on, which a host without g++ fails first).
    if compile_toolchain("cpu"):
        return
    cfg = make_config(TrainConfig, {"data": "unused", "device": "cpu", "cuda_graphs": True, "compile": "on",
                                    "compile_mode": "reduce-overhead"})
    with pytest.raises(ConfigError, match="compile-mode reduce-overhead") as e:
        main(cfg)
    assert "--compile-mode default" in str(e.value)


def test_cuda_graphs_refuse_fp16_and_ddp_on_a_gpu_runtime():
    """The GPU-side refusals are logic on the runtime's description, so they are checked here too."""
    from landslide.device import Runtime

    check_cuda_graphs(Runtime(torch.device("cuda"), "bf16", True, True), ddp=False)  # the supported case
    with pytest.raises(ConfigError, match="grad scaler") as e:
        check_cuda_graphs(Runtime(torch.device("cuda"), "fp16", True, True), ddp=False)
    assert "--precision bf16" in str(e.value)
    with pytest.raises(ConfigError, match="DDP") as e:
        check_cuda_graphs(Runtime(torch.device("cuda"), "bf16", True, True), ddp=True)
    assert "--fold-parallel" in str(e.value)


def test_compile_without_a_toolchain_is_refused_or_turned_off_with_a_warning(monkeypatch, caplog):
    """torch.compile needs a compiler on the host (C++ for Inductor's CPU backend, C + Python.h for
    Triton): asked for, its absence is an error naming the fix; under auto on a GPU, compile is off
    and a warning says why, instead of a crash inside the first training step."""
    import landslide.device as device

    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(ConfigError, match=r"C\+\+ compiler") as e:
        resolve_runtime("cpu", "fp32", "off", "on")
    assert "--compile off" in str(e.value)
    assert "C compiler" in device.compile_toolchain("cuda")
    # A GPU host as resolve_runtime sees it (no CUDA call is made on the way to the compile decision).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with caplog.at_level("WARNING", logger="landslide.device"):
        rt = resolve_runtime("auto")
    assert rt.device.type == "cuda" and rt.precision == "bf16" and not rt.compile
    assert "compile auto -> off: Triton needs a C compiler" in caplog.text
    with pytest.raises(ConfigError, match="--compile on: Triton"):
        resolve_runtime("auto", compile="on")
    monkeypatch.setenv("CC", "/usr/bin/cc")
    assert resolve_runtime("auto").compile == (device.compile_toolchain("cuda") is None)


def test_auto_precision_counts_only_native_bf16(monkeypatch):
    """A V100 or T4 emulates bf16 (torch's is_bf16_supported says True unless asked about hardware):
    auto picks fp16 there, and an explicit bf16 is refused naming fp16; an sm >= 80 GPU gets bf16."""
    import landslide.device as device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device, "compile_toolchain", lambda _: None)
    emulated = lambda including_emulation=True: including_emulation  # noqa: E731 - torch's signature
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated)
    assert resolve_runtime("auto").precision == "fp16"
    with pytest.raises(ConfigError, match="no native bf16") as e:
        resolve_runtime("auto", "bf16")
    assert "--precision fp16" in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_runtime("auto").precision == "bf16"


def test_cudnn_autotune_and_fold_storage_follow_the_runtime(monkeypatch):
    """cuDNN's algorithm search is on for a GPU run, off on a CPU and under --deterministic; the fold is
    stored fp16 only under AMP on a GPU (the bench times that same storage)."""
    from landslide.device import Runtime, enable_autotune

    gpu = Runtime(torch.device("cuda"), "bf16", True, True)  # a descriptor: nothing here touches CUDA
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    assert enable_autotune(gpu) and torch.backends.cudnn.benchmark
    assert not enable_autotune(gpu, deterministic=True) and not torch.backends.cudnn.benchmark
    assert not enable_autotune(Runtime(torch.device("cpu"), "fp32", False, False))
    assert gpu.fold_dtype == torch.float16
    assert Runtime(torch.device("cuda"), "fp32", True, True).fold_dtype == torch.float32
    assert Runtime(torch.device("cpu"), "bf16", False, False).fold_dtype == torch.float32


@pytest.mark.slow
def test_train_with_dali_backend_and_a_host_resident_fold_on_cpu(tmp_path):
    from landslide.synth import SynthConfig, write_dataset

    pytest.importorskip("nvidia.dali", reason="nvidia-dali not installed")
    data = write_dataset(SynthConfig(str(tmp_path / "d"), n_train=30, n_test=4, seed=2))
    run = tmp_path / "run"
    cfg = make_config(TrainConfig, {"data": str(data), "out": str(run), "archs": ["test_efficientnet"],
                                    "folds": 2, "epochs": 1, "max_steps": 2, "batch_size": 8, "eval_batch_size": 32,
                                    "data_backend": "dali", "device": "cpu", "cache_dir": str(tmp_path / "cache"),
                                    "fold_on": "host"})
    cal = main(cfg)  # the backend's parity with torch is tested in test_dali.py; here: it trains end to end
    assert json.loads((run / "config.json").read_text())["data_backend"] == "dali"
    assert 0 < cal["threshold"] < 1 and (run / "oof.csv").is_file()


# ---- CUDA paths: written for the GPU machine (bench/gpu_check.sh), skipped here ----

@pytest.mark.gpu
@GPU
def test_bf16_step_has_no_host_sync():
    from landslide.augment.mix import MixConfig, Mixer
    from landslide.augment.torch import AugmentConfig, TorchAugment

    rt = resolve_runtime("cuda", "auto", "on", "off")
    model = _model("cuda").to(memory_format=torch.channels_last)
    step = _step(model, rt)
    aug, mixer = TorchAugment(AugmentConfig()), Mixer(MixConfig(), seed=0)
    g = torch.Generator(device="cuda").manual_seed(0)
    x, y, c = _batch("cuda", 16)
    x = x.half()  # the fold is stored fp16 under AMP
    step(x.float(), y, c)  # first step: lazy optimizer state, cuDNN autotune
    torch.cuda.synchronize()
    total = torch.zeros((), device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any device->host sync below raises
    try:
        for _ in range(3):
            xb = aug(x, g)
            xb, yb, cb = mixer(xb, y, c, g)
            total += step(xb.contiguous(memory_format=torch.channels_last), yb, cb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rt.precision in ("bf16", "fp16") and torch.isfinite(total)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=[pytest.mark.gpu, GPU])])
def test_compiled_step_matches_eager(device):
    """torch.compile of the model inside the real TrainStep: same losses as eager, one graph, no breaks.

    On the CPU Inductor emits C++ (~45 s here): CI compiles the very forward the GPU compiles.
    """
    from torch._dynamo.utils import counters

    if missing := compile_toolchain(device):  # --compile on is refused there (test_compile_without_a_toolchain_...)
        pytest.skip(missing)
    torch._dynamo.reset()
    counters.clear()
    rt = resolve_runtime(device, "fp32", "off", "on")
    a, b = _model(device), _model(device)
    eager, compiled = _step(a, rt), _step(b, rt, compiled=True)
    with ieee_fp32(device):  # cuDNN's TF32 default would let the two pick differently rounded convolutions
        for s in range(2):
            x, y, c = _batch(device, seed=s)
            torch.testing.assert_close(compiled(x, y, c), eager(x, y, c), atol=1e-4, rtol=1e-4)
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.gpu
@GPU
def test_cuda_graph_step_matches_eager():
    rt = resolve_runtime("cuda", "fp32", "off", "off")
    a = _model("cuda")
    b = copy.deepcopy(a)
    eager, graphed = _step(a, rt), _step(b, rt, graphs=True)
    with ieee_fp32("cuda"):  # as above: TF32 rounding would differ between the two
        for s in range(4):  # step 0 captures (warm-up stands for it), steps 1-3 replay
            x, y, c = _batch("cuda", seed=s)
            torch.testing.assert_close(graphed(x, y, c), eager(x, y, c), atol=1e-4, rtol=1e-4)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
    assert graphed.opt.param_groups[0]["lr"].item() == pytest.approx(eager.opt.param_groups[0]["lr"])
    with pytest.raises(ConfigError, match="fp16"):
        check_cuda_graphs(resolve_runtime("cuda", "fp16"), ddp=False)


@pytest.mark.gpu
@GPU
def test_cuda_graph_step_resumed_from_an_eager_state_follows_the_schedule():
    """An eager run's state (float lr) resumed into a graphed step: replays must see each new lr (the
    saved float, baked in at capture, froze it), so parameters track an eager run on the same schedule."""
    from landslide.step import load_optimizer_state

    rt = resolve_runtime("cuda", "fp32", "off", "off")
    a = _model("cuda")
    eager = _step(a, rt)
    with ieee_fp32("cuda"):
        for s in range(2):
            eager(*_batch("cuda", seed=s))
        b = copy.deepcopy(a)
        graphed = _step(b, rt, graphs=True)
        buf = io.BytesIO()  # as a resume reads it: saved, then loaded onto the CPU
        torch.save(eager.opt.state_dict(), buf)
        buf.seek(0)
        load_optimizer_state(graphed.opt, torch.load(buf, map_location="cpu"))
        graphed.sched.load_state_dict(eager.sched.state_dict())
        for s in range(2, 6):  # step 2 captures, 3-5 replay while the cosine schedule moves
            x, y, c = _batch("cuda", seed=s)
            torch.testing.assert_close(graphed(x, y, c), eager(x, y, c), atol=1e-4, rtol=1e-4)
    assert graphed.opt.param_groups[0]["lr"].item() == pytest.approx(eager.opt.param_groups[0]["lr"])
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@GPU
# Compile (auto: on for CUDA) only where the case is about it: each compiling run costs tens of seconds.
@pytest.mark.parametrize("extra", [
    pytest.param(["--data-backend", "dali", "--compile", "off"],
                 marks=pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")),
    ["--cuda-graphs"],  # the graphed compiled step, fed by the default backend (DALI where installed)
    ["--precision", "fp16", "--compile", "off"],  # the compiled step is the case above
    ["--fold-on", "host", "--compile", "off"]])
def test_gpu_training_end_to_end(tmp_path, extra):
    from landslide.synth import SynthConfig, write_dataset

    data = write_dataset(SynthConfig(str(tmp_path / "d"), n_train=40, n_test=4, seed=2))
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", "--data", str(data), "--out", str(run), "--preset", "tiny",
                        "--device", "cuda", "--cache-dir", str(tmp_path / "cache"), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "calibration.json").is_file()


def test_ieee_fp32_turns_tf32_off_on_cuda_only_and_restores_it():
    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)  # noqa: E731
    before = flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with ieee_fp32("cpu"):
            assert flags() == (True, True)
        with ieee_fp32(torch.device("cuda")):  # setting the flags needs no GPU
            assert flags() == (False, False)
        assert flags() == (True, True)
        with pytest.raises(RuntimeError), ieee_fp32("cuda"):
            raise RuntimeError
        assert flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_runtime_description_says_when_fp32_convolutions_run_in_tf32(monkeypatch):
    """On CUDA cuDNN runs fp32 convolutions in TF32 by default: the start-up line and the benchmarks'
    baseline description say so beside "fp32" instead of implying IEEE fp32."""
    from landslide.device import Runtime

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")  # no GPU needed
    cuda = lambda p: Runtime(torch.device("cuda"), p, True, False)  # noqa: E731
    with ieee_fp32("cuda"):
        assert "precision=fp32 channels_last" in cuda("fp32").describe()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert "precision=fp32 (convolutions in TF32" in cuda("fp32").describe()
    assert "precision=bf16 channels_last" in cuda("bf16").describe()
    assert "TF32" not in resolve_runtime("cpu").describe()
