"""torchrun with two gloo processes on the CPU: DDP and fold-parallel keep the single-process run folder."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landslide.errors import ConfigError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
# Two tiny folds, one short epoch: the point is the contract, not the model.
BATCH = 8
FLAGS = ["--preset", "tiny", "--epochs", "1", "--max-steps", "2", "--batch-size", str(BATCH), "--eval-batch-size", "32",
         "--device", "cpu"]  # gloo on the CPU: on a GPU host auto would give rank k cuda:k
RUN_FILES = ("config.json", "contract.json", "folds.csv", "metrics.csv", "oof.csv", "calibration.json",
             "plots/training_curves.png", "plots/oof_pr_confusion.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # One thread per rank: two ranks on a 2-core machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(ROOT)}


def _train(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "train.py", *args]
    else:
        cmd = [str(TORCHRUN), f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    from landslide.synth import SynthConfig, write_dataset

    d = write_dataset(SynthConfig(str(tmp_path_factory.mktemp("synth") / "d"), n_train=40, n_test=4, seed=3))
    return d, tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    d, cache = data
    run = tmp_path_factory.mktemp("runs") / "single"
    r = _train("--data", str(d), "--out", str(run), "--cache-dir", str(cache), *FLAGS)
    assert r.returncode == 0, r.stderr
    return run


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        rd = csv.DictReader(f)
        return list(rd.fieldnames or []), list(rd)


def _same_contract(run: Path, ref: Path) -> None:
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    for name in ("metrics.csv", "oof.csv", "folds.csv"):
        (cols, rows), (ref_cols, ref_rows) = _rows(run / name), _rows(ref / name)
        assert cols == ref_cols, name
        assert len(rows) == len(ref_rows), name
    assert [r["ID"] for r in _rows(run / "oof.csv")[1]] == [r["ID"] for r in _rows(ref / "oof.csv")[1]]
    assert all(0 <= float(r["prob_test_efficientnet"]) <= 1 for r in _rows(run / "oof.csv")[1])
    cal, ref_cal = (json.loads((p / "calibration.json").read_text()) for p in (run, ref))
    assert set(cal) == set(ref_cal) and set(cal["per_fold_f1"]) == {"0", "1"}
    assert set(json.loads((run / "config.json").read_text())) == set(json.loads((ref / "config.json").read_text()))
    for fold in (0, 1):
        ck = torch.load(run / f"fold{fold}" / "test_efficientnet.pt", weights_only=False)
        ref_ck = torch.load(ref / f"fold{fold}" / "test_efficientnet.pt", weights_only=False)
        assert ck["format"] == ref_ck["format"] and set(ck) == set(ref_ck)
        assert set(ck["state_dict"]) == set(ref_ck["state_dict"])  # unwrapped: no DDP "module." prefix
        st = torch.load(run / f"fold{fold}" / "test_efficientnet.state.pt", weights_only=False)
        assert st["done"] and set(st) == set(torch.load(ref / f"fold{fold}" / "test_efficientnet.state.pt",
                                                        weights_only=False))
    leftovers = [p.name for p in run.rglob(".*.tmp")]
    assert not leftovers, leftovers


def test_ddp_two_gloo_ranks_write_one_run_folder(data, single, tmp_path):
    d, cache = data
    run = tmp_path / "ddp"
    r = _train("--data", str(d), "--out", str(run), "--cache-dir", str(cache), *FLAGS, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_contract(run, single)
    dist = json.loads((run / "config.json").read_text())["distributed"]
    lr = json.loads((single / "config.json").read_text())["config"]["lr"]
    assert dist == {"world_size": 2, "mode": "ddp", "global_batch": 2 * BATCH, "lr": pytest.approx(lr * 2 ** 0.5)}
    assert "global batch" in r.stderr
    assert "rank 0/2 (DDP)" in r.stderr  # the start-up line, logged once (rank 1 is quiet)
    assert "rank 1/2" not in r.stderr


def test_fold_parallel_matches_the_single_process_run(data, single, tmp_path):
    d, cache = data
    run = tmp_path / "fp"
    r = _train("--data", str(d), "--out", str(run), "--cache-dir", str(cache), *FLAGS, "--fold-parallel", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_contract(run, single)
    # Each fold trained alone on some rank with the same seeds: the same OOF predictions as one process.
    got = np.array([float(r["prob_test_efficientnet"]) for r in _rows(run / "oof.csv")[1]])
    want = np.array([float(r["prob_test_efficientnet"]) for r in _rows(single / "oof.csv")[1]])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_fold_parallel_without_torchrun_is_refused(data, tmp_path):
    d, cache = data
    r = _train("--data", str(d), "--out", str(tmp_path / "x"), "--cache-dir", str(cache), *FLAGS, "--fold-parallel")
    assert r.returncode != 0 and "torchrun" in r.stderr and "Traceback" not in r.stderr


def test_an_error_on_rank0_stops_every_rank(data, single):
    d, cache = data
    # The run folder already holds a run: rank 0 refuses, and rank 1 must exit too, not hang.
    r = _train("--data", str(d), "--out", str(single), "--cache-dir", str(cache), *FLAGS, nproc=2)
    assert r.returncode != 0 and "already holds a run" in r.stderr


def test_lr_scales_with_the_global_batch():
    from landslide.train import lr_multiplier

    assert lr_multiplier(4, "sqrt") == 2.0 and lr_multiplier(4, "linear") == 4.0 and lr_multiplier(4, "none") == 1.0
    assert lr_multiplier(1, "linear") == 1.0  # a single process trains as configured
    with pytest.raises(ConfigError, match="cube"):
        lr_multiplier(2, "cube")


def _ddp_step_worker(rank: int, world: int, port: int, out: str) -> None:
    """One training step per rank on different batches, through train.step_module; rank 0 saves every
    rank's parameters after it."""
    import torch.distributed as dist
    from test_train_speed import _model

    from landslide.device import resolve_runtime
    from landslide.distributed import DistEnv
    from landslide.step import TrainStep, make_optimizer
    from landslide.train import step_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model().train()  # the same initial weights on every rank
        rt = resolve_runtime("cpu")
        opt = make_optimizer(model, 1e-2, 0.0, rt, graphs=False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        step = TrainStep(step_module(model, DistEnv(rank, world), rt, "default"), model, opt, sched,
                         torch.amp.GradScaler("cuda", enabled=False), rt, 0.25, 2.0)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own batch, as the sampler gives
        step(torch.randn(4, 12, 64, 64, generator=g), torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.rand(4, generator=g))
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        every = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(every, flat)
        if rank == 0:
            torch.save(every, out)
    finally:
        dist.destroy_process_group()


def test_ddp_step_applies_the_same_update_on_every_rank(tmp_path):
    """Under DDP the gradients are all-reduced: after a step on different batches both ranks hold the same
    weights (without the wrap each rank would step on its own batch's gradient)."""
    import torch.multiprocessing as mp

    out = tmp_path / "params.pt"
    mp.spawn(_ddp_step_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    from test_train_speed import _model

    first, second = torch.load(out)
    init = torch.cat([p.detach().flatten() for p in _model().parameters()])
    assert not torch.equal(first, init)  # the step moved the weights
    assert torch.equal(first, second)
