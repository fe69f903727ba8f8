"""Stratified K-fold training: one fold's loop, the K-fold driver, checkpoints, resume, calibration.

Per (fold, architecture) the whole training fold lives on the device (when it fits: ``fold.py``),
standardised once; each step gathers a class-balanced index batch (``sampler.py``), augments it on
the device (``augment/``), mixes it (Mixup/CutMix), and runs one AMP step (``step.py``: eager, or a
replayed CUDA graph with ``--cuda-graphs``). Metrics are accumulated on the device so the step never
waits for the host; on a GPU with AMP the fold is stored fp16. Under ``torchrun`` the folds train with
DDP or are spread over the ranks (``--fold-parallel``); either way rank 0 writes one run folder
(``distributed.py``).

After every epoch the fold's state is written atomically (``fold<k>/<arch>.state.pt``): killed at
any moment, ``--resume`` continues from the last finished epoch (a finished fold's state keeps only its
OOF rows and metrics: its best weights are the checkpoint), and because every epoch's randomness
is seeded from (seed, fold, arch, epoch) a resumed run on the CPU ends with the same weights as an
uninterrupted one. An improving epoch's checkpoint is staged, the state written, then the checkpoint
promoted; a resume settles a staged one by the state, so checkpoint and state never name different
best epochs (on a GPU, where a replayed epoch can score otherwise, they would).
"""
from __future__ import annotations

import glob
import logging
import math
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from landslide import distributed as dist_
from landslide.augment import build_augment, resolve_backend
from landslide.augment.mix import MixConfig, Mixer
from landslide.augment.torch import AugmentConfig
from landslide.bands import BandLayout
from landslide.calibrate import best_threshold, calibrate, crossfit_f1
from landslide.contract import CHECKPOINT_FORMAT, checkpoint_path, data_contract, versions
from landslide.data import SPLITS, Split, load_split
from landslide.device import Runtime, enable_autotune, resolve_runtime, sync
from landslide.distributed import DistEnv
from landslide.errors import ConfigError, DataError
from landslide.fold import make_fold
from landslide.io import atomic_write, fsync_dir, write_json
from landslide.losses import focal_loss
from landslide.model import LandslideModel, LandslideNet, ModelConfig, tta_mean, tta_views
from landslide.preprocess import Normalize, fit_stats
from landslide.run_folder import start_run, write_metrics, write_oof
from landslide.sampler import BalancedSampler
from landslide.step import TrainStep, check_cuda_graphs, load_optimizer_state, load_scaler_state, make_optimizer
from landslide.train_config import TrainConfig, arch_model_config, check_config

log = logging.getLogger(__name__)


def stratified_folds(labels: np.ndarray, k: int, seed: int, csv: str | Path | None = None) -> np.ndarray:
    """Fold id ``(N,)`` per row: each class shuffled with ``seed`` and dealt round-robin into ``k`` folds.

    ``csv`` (the labels' file) is named in the error when a class is too small to stratify."""
    if k < 2:
        raise ConfigError(f"--folds {k}", fix="use at least 2 folds")
    counts = np.bincount(labels, minlength=2)
    if counts.min() < k:
        c = int(counts.argmin())
        what = f"label {c} ({'landslide' if c else 'no landslide'}) has {counts[c]} row(s), fewer than the {k} folds"
        add = f"add rows labelled {c}" + (f" to {csv}" if csv else "")
        # Each fold's validation rows need both classes: below 2 rows of one no --folds can do.
        raise DataError(what, file=csv, fix=add if counts[c] < 2 else f"use --folds {int(counts[c])} or fewer, or {add}")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # continue the deal so fold sizes stay within one of each other
    return fold


def epoch_seed(seed: int, fold: int, arch_i: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + arch_i * 101 + epoch) % (2**31 - 1)


def rank_seed(es: int, rank: int) -> int:
    """The epoch seed of DDP rank ``rank``: each rank draws its own batches (rank 0 keeps the epoch's)."""
    return (es + 1_000_003 * rank) % (2**31 - 1)


def build_net(mcfg: ModelConfig, layout: BandLayout, mean: torch.Tensor, std: torch.Tensor,
              announce: bool = True) -> LandslideNet:
    return LandslideNet(LandslideModel(mcfg, layout, announce), Normalize(mean, std, layout.optical_idx))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[LandslideNet, dict]:
    """A fold checkpoint -> (``LandslideNet`` in eval mode on ``device``, its metadata).

    The file is read to host memory and the built net moved afterwards: ``torch.load``'s
    ``map_location`` alone would place the tensors on ``device`` and then ``load_state_dict`` would copy
    them into the net's CPU parameters, leaving the net (and its band statistics) on the host."""
    from landslide.errors import ContractError

    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        fold = path.parent.name
        again = (f"delete it and train that fold again: python train.py --out {shlex.quote(str(path.parent.parent))} "
                 f"--resume --only-folds {fold[4:]}") if fold[4:].isdigit() and fold.startswith("fold") else \
            "re-run training, or point at a run folder written by train.py"
        raise ContractError(f"cannot read checkpoint ({type(e).__name__}: {e})", file=path, fix=again) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ContractError(f"not a {CHECKPOINT_FORMAT} checkpoint", file=path, fix="re-train with this version")
    mcfg = ModelConfig(**{**ck["model_cfg"], "pretrained": ""})  # weights come from the checkpoint
    layout = BandLayout(tuple(ck["contract"]["bands"]))
    net = build_net(mcfg, layout, torch.tensor(ck["mean"]), torch.tensor(ck["std"]), announce=False)
    net.load_state_dict(ck["state_dict"])
    return net.to(device).eval(), ck


@torch.no_grad()
def predict(net: torch.nn.Module, x: torch.Tensor, rt: Runtime, batch_size: int, tta: bool) -> np.ndarray:
    """Probabilities ``(N,)`` for raw patches ``(N, C, H, W)`` (any device); TTA = 4 flips in one batch."""
    out = []
    bs = max(1, batch_size // 4) if tta else batch_size
    for s in range(0, x.shape[0], bs):
        xb = x[s:s + bs].to(rt.device, non_blocking=True)
        xb = tta_views(xb) if tta else xb
        if rt.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            logits = net(xb)
        out.append(tta_mean(logits) if tta else torch.sigmoid(logits.float()))
    return torch.cat(out).cpu().numpy()


class FoldTrainer:
    """Trains one architecture on one fold; resumable from ``<run>/fold<k>/<arch>.state.pt``."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, split: Split, fold_of: np.ndarray, fold: int,
                 arch_i: int, run_dir: Path, backend: str, env: DistEnv | None = None,
                 on_epoch: Callable[[list[dict]], None] | None = None) -> None:
        """``env``: the DDP group training this fold together (default: this process alone); ``on_epoch``:
        called with this fold's metric rows so far once each epoch's state is written."""
        self.cfg, self.rt, self.fold, self.arch_i = cfg, rt, fold, arch_i
        self.on_epoch = on_epoch
        self.env = env or DistEnv()
        self.arch = cfg.archs[arch_i]
        self.mcfg = arch_model_config(cfg, arch_i)
        self.layout = split.layout
        self.tr_idx = np.flatnonzero(fold_of != fold)
        self.va_idx = np.flatnonzero(fold_of == fold)
        self.split = split
        self.state_path = checkpoint_path(run_dir, fold, self.arch, ".state.pt")
        self.ckpt_path = checkpoint_path(run_dir, fold, self.arch)
        self.backend = backend

    def saved(self) -> tuple[np.ndarray | None, list[dict]] | None:
        """What an earlier invocation left of this fold: (OOF probabilities, or None while it is unfinished,
        and the metric rows of its finished epochs), or None when it never finished an epoch."""
        if not self.state_path.is_file():
            return None
        # mmap: an unfinished fold's state holds the weights and optimizer (GBs for the full preset), read
        # here only for its "done" flag and rows.
        state = self._read_state(mmap=True)
        return (state["oof"] if state["done"] and self.ckpt_path.is_file() else None), state["rows"]

    def _read_state(self, mmap: bool = False) -> dict:
        from landslide.errors import ContractError

        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - written atomically, so a bad one came from outside (disk, a copy)
            state = e
        if not isinstance(state, dict) or not {"done", "epoch", "rows"} <= state.keys():
            said = f"{type(state).__name__}: {state}" if isinstance(state, Exception) else "not a fold state"
            raise ContractError(f"cannot read fold {self.fold}'s training state ({said})", file=self.state_path,
                                fix=f"delete it, and {self.ckpt_path.name} beside it, then train that fold again from "
                                    f"epoch 1: python train.py --out {shlex.quote(self.cfg.out)} --resume "
                                    f"--only-folds {self.fold}")
        return state

    def run(self) -> tuple[np.ndarray, list[dict]]:
        """Train (or resume) to completion; returns (OOF probabilities for the val rows, metric rows)."""
        cfg, rt = self.cfg, self.rt
        state = self._read_state() if cfg.resume and self.state_path.is_file() else None
        if self.env.is_main:
            self._settle_staged(state)
        if state is not None and state.get("done"):
            if self.ckpt_path.is_file():
                log.info("fold %d %s: finished earlier, reusing its checkpoint", self.fold, self.arch)
                return state["oof"], state["rows"]
            # Its OOF rows alone would calibrate an ensemble that has lost a member: train it again.
            log.warning("fold %d %s: finished earlier, but its checkpoint %s is missing: training the fold again",
                        self.fold, self.arch, self.ckpt_path)
            state = None

        env = self.env
        x_all = self.split.x
        y_all = torch.as_tensor(self.split.labels, dtype=torch.float32)
        mean, std = fit_stats(x_all, self.tr_idx)
        torch.manual_seed(epoch_seed(cfg.seed, self.fold, self.arch_i, -1))  # model init
        net = build_net(self.mcfg, self.layout, mean, std).to(rt.device)
        if rt.channels_last:
            net = net.to(memory_format=torch.channels_last)
        # Standardise the training fold once and keep it where the steps read it (``fold.py``: the device
        # when it fits); per-step work is then gather + augment. Stored as ``rt.fold_dtype`` (fp16 under
        # AMP on a GPU: 7,147x12x64x64 is ~0.7 GB).
        store = rt.fold_dtype
        augment = build_augment(self.backend, AugmentConfig(), rt.device, cfg.batch_size, cfg.seed)
        train_fold = make_fold(net.normalize, x_all, y_all, rt.device, store, cfg.fold_on, cfg.batch_size,
                               rows=self.tr_idx, memory_format=augment.memory_format)
        if hasattr(augment, "warm_up"):  # a compiled augmentation compiles here, so epoch 1 times the steady state
            augment.warm_up(train_fold.x, cfg.batch_size)
        x_val = x_all[self.va_idx]
        y_val = self.split.labels[self.va_idx]

        model = net.model
        lr_mult = lr_multiplier(env.replicas, cfg.lr_scale)
        opt = make_optimizer(model, cfg.lr * lr_mult, cfg.weight_decay, rt, cfg.cuda_graphs)
        gen = torch.Generator(device=rt.device)
        # Indices are drawn where the fold lives: on the device, or on the host for a host-resident fold.
        idx_gen = gen if train_fold.labels.device.type == rt.device.type else torch.Generator()
        sampler = BalancedSampler(train_fold.labels, cfg.batch_size, cfg.pos_fraction, generator=idx_gen)
        steps = sampler.steps_per_epoch if cfg.max_steps <= 0 else min(cfg.max_steps, sampler.steps_per_epoch)
        steps = -(-steps // env.world_size) if env.ddp else steps  # each rank takes its share of the batches
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps * cfg.epochs),
                                                           eta_min=cfg.min_lr * lr_mult)
        scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
        mixer = Mixer(MixConfig(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob), seed=0)
        train_step = TrainStep(step_module(model, env, rt, cfg.compile_mode), model, opt, sched, scaler, rt,
                               cfg.focal_alpha, cfg.focal_gamma, graphs=cfg.cuda_graphs)

        rows: list[dict] = []
        start_epoch, best, best_epoch, bad = 0, (-1.0, 0.0), -1, 0
        if state is not None:
            model.load_state_dict(state["model"])
            load_optimizer_state(opt, state["optimizer"])  # this run's device and flags, not the saved ones
            sched.load_state_dict(state["scheduler"])
            load_scaler_state(scaler, state["scaler"])  # --precision may change on resume
            start_epoch, best, best_epoch, bad, rows = (state["epoch"] + 1, tuple(state["best"]),
                                                        state["best_epoch"], state["bad"], state["rows"])
            log.info("fold %d %s: resuming after epoch %d/%d", self.fold, self.arch, state["epoch"] + 1, cfg.epochs)

        # A run killed after its early stop (but before its OOF pass) must not train on.
        end_epoch = cfg.epochs if bad < cfg.patience else start_epoch
        for epoch in range(start_epoch, end_epoch):
            es = epoch_seed(cfg.seed, self.fold, self.arch_i, epoch)
            es = rank_seed(es, env.rank) if env.ddp else es
            gen.manual_seed(es)
            idx_gen.manual_seed(es)
            torch.manual_seed(es)  # dropout
            mixer.reseed(es)
            model.train()
            t0 = time.perf_counter()
            idx = train_fold.indices(sampler.epoch(steps))
            loss_sum = torch.zeros((), device=rt.device)
            bar = tqdm(range(steps), desc=f"fold {self.fold} {self.arch} ep {epoch + 1}/{cfg.epochs}",
                       leave=False, disable=None)
            compile_s = 0.0
            for s in bar:
                xs, xi, yb, cb = train_fold.rows(idx[s])  # the batch is xs[xi]: the augmentation gathers
                xb, yb, cb = mixer(augment(xs, gen, index=xi), yb, cb, gen)
                if rt.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                first = epoch == start_epoch and s == 0 and (rt.compile or cfg.cuda_graphs)
                if first:
                    sync(rt.device)
                    ts = time.perf_counter()
                loss_sum += train_step(xb, yb, cb)
                if first:  # compile / graph capture timed apart and kept out of samples/s
                    sync(rt.device)
                    compile_s = time.perf_counter() - ts
                    log.info("compile/capture + first step: %.1f s", compile_s)
            loss_sum = dist_.all_mean(env, loss_sum)
            train_loss = float(loss_sum) / steps  # the one host sync of the epoch
            train_s = time.perf_counter() - t0 - compile_s
            model.eval()
            p_val = predict(net, x_val, rt, cfg.eval_batch_size, tta=False)
            val_loss = float(focal_loss(torch.logit(torch.from_numpy(p_val).clamp(1e-6, 1 - 1e-6)),
                                        torch.from_numpy(y_val).float(), cfg.focal_alpha, cfg.focal_gamma))
            thr, f1 = best_threshold(y_val, p_val)
            dt = time.perf_counter() - t0
            row = {"fold": self.fold, "arch": self.arch, "epoch": epoch + 1,
                   "lr": float(sched.get_last_lr()[0]),  # a CUDA tensor under --cuda-graphs
                   "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6), "val_f1": round(f1, 6),
                   "val_thr": round(thr, 6), "epoch_s": round(dt, 3),
                   "samples_per_s": round(steps * cfg.batch_size * env.replicas / train_s, 1)}
            rows.append(row)
            improved = (f1, -val_loss) > best
            log.info("fold %d %s epoch %d/%d: loss %.4f val_loss %.4f val_f1 %.4f%s (%.1fs, %.0f samples/s)",
                     self.fold, self.arch, epoch + 1, cfg.epochs, train_loss, val_loss, f1,
                     " *" if improved else "", dt, row["samples_per_s"])
            if env.ddp:  # rank 0's validation decides for all, so ranks never disagree on stopping
                improved = dist_.broadcast(env, improved)
            if improved:
                best, best_epoch, bad = (f1, -val_loss), epoch, 0
                if env.is_main:
                    self._save_checkpoint(net, epoch, f1, mean, std)
            else:
                bad += 1
            stop = bad >= cfg.patience or epoch + 1 == cfg.epochs
            if env.is_main:
                self._save_state(model, opt, sched, scaler, epoch, best, best_epoch, bad, rows)
                if improved:
                    self._promote(epoch)
                if self.on_epoch is not None:
                    self.on_epoch(rows)
            if stop:
                if bad >= cfg.patience:
                    log.info("fold %d %s: early stop (no improvement for %d epochs)", self.fold, self.arch, bad)
                break

        if not env.is_main:  # DDP: rank 0 holds the checkpoint and predicts the OOF rows
            return np.full(len(self.va_idx), np.nan), rows
        best_net, _ = load_checkpoint(self.ckpt_path, rt.device)
        if rt.channels_last:
            best_net = best_net.to(memory_format=torch.channels_last)
        oof = predict(best_net, x_val, rt, cfg.eval_batch_size, tta=True)
        self._save_state(model, opt, sched, scaler, best_epoch, best, best_epoch, bad, rows, oof=oof)
        return oof, rows

    def _save_checkpoint(self, net: LandslideNet, epoch: int, f1: float, mean: torch.Tensor, std: torch.Tensor) -> None:
        ck = {"format": CHECKPOINT_FORMAT, "arch": self.arch, "fold": self.fold, "epoch": epoch + 1, "val_f1": f1,
              "model_cfg": self.mcfg.to_dict(), "contract": data_contract(self.layout),
              "mean": mean.tolist(), "std": std.tolist(),
              "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
              "versions": versions()}
        with atomic_write(self._staged(epoch), "wb") as f:  # promoted once the state names this epoch best
            torch.save(ck, f)

    def _staged(self, epoch: int) -> Path:
        return self.ckpt_path.with_name(f"{self.ckpt_path.stem}.epoch{epoch + 1}.staged")

    def _promote(self, epoch: int) -> None:
        fsync_dir(self.ckpt_path.parent)  # the state's rename first: a power cut must not keep only the promote
        os.replace(self._staged(epoch), self.ckpt_path)

    def _settle_staged(self, state: dict | None) -> None:
        """A kill after the state write promotes the staged checkpoint the state names best; one before
        it (the state never saw that epoch, which the resume replays) or from a start over is dropped."""
        pat = re.compile(re.escape(self.ckpt_path.stem) + r"\.epoch(\d+)\.staged")
        for p in self.ckpt_path.parent.glob(f"{glob.escape(self.ckpt_path.stem)}.epoch*.staged"):
            m = pat.fullmatch(p.name)
            if m and state is not None and int(m.group(1)) == state["best_epoch"] + 1:
                os.replace(p, self.ckpt_path)
            else:
                p.unlink()

    def _save_state(self, model, opt, sched, scaler, epoch, best, best_epoch, bad, rows, oof=None) -> None:
        st = {"epoch": epoch, "best": list(best), "best_epoch": best_epoch, "bad": bad, "rows": rows,
              "done": oof is not None, "oof": oof}
        if oof is None:
            # A finished fold resumes from its OOF rows alone and its best weights are the checkpoint, so
            # only an unfinished one keeps the last weights and optimizer moments: for the full preset's
            # tf_efficientnetv2_l that is 1.4 GB a fold the finished run folder no longer carries.
            st |= {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "scaler": scaler.state_dict()}
        with atomic_write(self.state_path, "wb") as f:
            torch.save(st, f)


def lr_multiplier(world_size: int, rule: str) -> float:
    """The lr factor for a global batch ``world_size`` times ``--batch-size`` (DDP keeps the per-process
    batch, so each step sees N times the samples and an epoch has 1/N the steps)."""
    if rule == "none" or world_size <= 1:
        return 1.0
    if rule == "sqrt":
        return math.sqrt(world_size)
    if rule == "linear":
        return float(world_size)
    raise ConfigError(f"--lr-scale {rule!r} unknown", fix="use sqrt, linear or none")


def step_module(model: torch.nn.Module, env: DistEnv, rt: Runtime, compile_mode: str) -> torch.nn.Module:
    """What the training step calls: the model, wrapped in DDP under DDP (its backward all-reduces the
    gradients, so every rank applies the same update), then compiled when ``rt`` says so."""
    fn = model
    if env.ddp:
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        fn = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(fn, mode=compile_mode) if rt.compile else fn


def _start_run(cfg: TrainConfig, rt: Runtime, backend: str, env: DistEnv, split: Split,
               fold_of: np.ndarray) -> Path:
    """Create the run folder and write its config, contract and folds (rank 0 only)."""
    return start_run(cfg, split, fold_of, {
        "runtime": rt.describe(), "data_backend": backend,
        "distributed": {"world_size": env.world_size,
                        "mode": "fold-parallel" if env.fold_parallel else ("ddp" if env.enabled else "single"),
                        "global_batch": cfg.batch_size * env.replicas,
                        "lr": cfg.lr * lr_multiplier(env.replicas, cfg.lr_scale)}})


def main(cfg: TrainConfig) -> dict:
    """Train every fold and architecture, calibrate on OOF, write the run folder; returns calibration.

    Under ``torchrun`` every rank calls this; rank 0 writes the run-level files and returns the
    calibration, the other ranks return ``{}`` (see ``distributed.py``).
    """
    if not cfg.data:
        raise ConfigError("no data given", fix="pass --data DIR (Zindi layout), e.g. make a set with python -m landslide.synth")
    env, device = dist_.init(cfg.device, cfg.fold_parallel)
    try:
        return _main(cfg, env, device)
    finally:
        dist_.shutdown(env)


def _main(cfg: TrainConfig, env: DistEnv, device: str) -> dict:
    from landslide import plots
    from landslide.utils import set_determinism

    if cfg.deterministic:
        set_determinism()
    check_config(cfg)
    rt = resolve_runtime(device, cfg.precision, cfg.channels_last, cfg.compile)
    autotune = enable_autotune(rt, cfg.deterministic)
    if cfg.cuda_graphs:
        check_cuda_graphs(rt, env.ddp, cfg.compile_mode)
    backend = resolve_backend(cfg.data_backend, rt.device, cfg.augment_kernel)
    log.info("train: %s data_backend=%s cuda_graphs=%s cudnn_autotune=%s %s archs=%s folds=%d", rt.describe(),
             backend, "on" if cfg.cuda_graphs else "off", "on" if autotune else "off", env.describe(),
             ",".join(cfg.archs), cfg.folds)
    if env.ddp and env.is_main:
        log.info("DDP: global batch %d (%d per rank), lr %.3g -> %.3g (--lr-scale %s)", cfg.batch_size * env.replicas,
                 cfg.batch_size, cfg.lr, cfg.lr * lr_multiplier(env.replicas, cfg.lr_scale), cfg.lr_scale)
    # Rank 0 fills the preprocessed cache first, so the other ranks read it instead of racing to write it.
    split = dist_.run_on_main_first(env, load_split, cfg.data, "train", cache_dir=cfg.cache_dir or None)
    labels = split.labels
    assert labels is not None
    fold_of = stratified_folds(labels, cfg.folds, cfg.seed, csv=Path(cfg.data) / SPLITS["train"][0])
    dist_.on_main(env, _start_run, cfg, rt, backend, env, split, fold_of)
    run = Path(cfg.out)

    folds = cfg.only_folds or list(range(cfg.folds))
    mine = folds[env.rank::env.world_size] if env.fold_parallel else folds
    fold_env = env if env.ddp else DistEnv()  # fold-parallel ranks train their folds alone
    results: list[tuple[int, int, np.ndarray, list[dict]]] = []
    # Folds this process does not train that an earlier invocation finished (--only-folds): read once,
    # for metrics.csv from its first write and for the calibration at the end.
    earlier: dict[tuple[int, int], tuple[np.ndarray, list[dict]]] = {}
    unfinished: list[dict] = []  # the epochs of folds another invocation left half-trained: kept in metrics.csv
    if env.is_main:
        for fold in (f for f in range(cfg.folds) if f not in mine):
            for ai in range(len(cfg.archs)):
                if got := FoldTrainer(cfg, rt, split, fold_of, fold, ai, run, backend).saved():
                    if got[0] is None:
                        unfinished += got[1]
                    else:
                        earlier[fold, ai] = got
    elsewhere = [row for _, rs in earlier.values() for row in rs] + unfinished

    def live_metrics(current: list[dict]) -> None:  # after every epoch: metrics.csv is never behind the log
        write_metrics(run / "metrics.csv", elsewhere + [row for *_, rs in results for row in rs] + current)

    for fold in mine:
        for ai in range(len(cfg.archs)):
            p, r = FoldTrainer(cfg, rt, split, fold_of, fold, ai, run, backend, env=fold_env,
                               on_epoch=live_metrics if env.is_main else None).run()
            results.append((fold, ai, p, r))
            if env.is_main:
                live_metrics([])
                log.info("fold %d %s: OOF F1 %.4f (at this fold's own best threshold; the calibrated one is fitted "
                         "on all folds at the end)", fold, cfg.archs[ai], best_threshold(labels[fold_of == fold], p)[1])
    if env.fold_parallel:
        gathered = dist_.gather(env, results)
        if not env.is_main:
            return {}
        results = [item for part in gathered for item in part]
    elif not env.is_main:
        return {}

    have = {(fold, ai) for fold, ai, *_ in results}  # fold-parallel ranks return earlier-finished folds too
    results += [(fold, ai, *got) for (fold, ai), got in earlier.items() if (fold, ai) not in have]
    have |= set(earlier)
    todo = sorted({fold for fold in range(cfg.folds) for ai in range(len(cfg.archs)) if (fold, ai) not in have})
    oof = np.full((len(labels), len(cfg.archs)), np.nan)
    rows: list[dict] = []
    for fold, ai, p, r in sorted(results, key=lambda t: (t[0], t[1])):
        oof[fold_of == fold, ai] = p
        rows.extend(r)
    # Under --fold-parallel another rank may have finished one of them meanwhile: its rows are in results.
    trained = {(fold, cfg.archs[ai]) for fold, ai, *_ in results}
    unfinished = [r for r in unfinished if (r["fold"], r["arch"]) not in trained]
    write_metrics(run / "metrics.csv", rows + unfinished)
    plots.training_curves(rows + unfinished, run / "plots" / "training_curves.png")
    if todo:
        log.info("trained folds %s; fold(s) %s still to train (calibration needs every fold's OOF predictions): "
                 "python train.py --out %s --resume (every unfinished fold; add --only-folds to pick)", folds, todo, run)
        return {}
    write_oof(run / "oof.csv", split.ids, labels, fold_of, oof, cfg.archs)
    cal = calibrate(labels, oof, cfg.archs)
    ens = oof @ np.array([cal["weights"][a] for a in cfg.archs])  # the calibrated ensemble's OOF probability
    cal["per_fold_f1"] = {str(k): best_threshold(labels[fold_of == k], ens[fold_of == k])[1] for k in range(cfg.folds)}
    cal["oof_f1_crossfit"] = crossfit_f1(labels, oof, fold_of)
    write_json(run / "calibration.json", cal)
    plots.pr_and_confusion(labels, ens, cal["threshold"], run / "plots" / "oof_pr_confusion.png")
    log.info("OOF F1 %.4f at threshold %.4f (fitted on these rows: an upper bound); %.4f with each fold called at "
             "the weights and threshold fitted on the other folds; weights %s; per fold %s", cal["oof_f1"],
             cal["threshold"], cal["oof_f1_crossfit"], cal["weights"], {k: round(v, 4) for k, v in cal["per_fold_f1"].items()})
    log.info("run folder %s complete; next: python infer.py %s --data DIR (Test.csv + test_data/), or "
             "python export.py %s", run, run, run)
    return cal
