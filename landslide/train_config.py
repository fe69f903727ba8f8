"""``train.py``'s config: one field per flag, the named presets, and the checks that need no data."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from landslide.config import field

if TYPE_CHECKING:  # the model (torch, timm) is imported when a config is checked, not when flags are parsed
    from landslide.model import ModelConfig


@dataclass
class RuntimeFields:
    """Where and how the step runs: shared by ``train.py`` and ``bench/train.py`` so their flags agree."""

    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    precision: str = field("auto", "auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16",
                           choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: str = field("auto", "auto (on for GPU) | on | off", choices=("auto", "on", "off"))
    compile: str = field("auto", "torch.compile: auto (on for GPU) | on | off", choices=("auto", "on", "off"))
    compile_mode: str = field("default", "torch.compile mode", choices=("default", "reduce-overhead", "max-autotune"))
    data_backend: str = field("auto", "augmentation backend: auto (dali on GPU when installed) | torch | dali",
                              choices=("auto", "torch", "dali"))
    augment_kernel: str = field("auto", "the torch backend's ops on a CPU: auto (compiled when a C++ compiler is "
                                "found) | eager | compiled (Inductor C++ + native gather kernels)",
                                choices=("auto", "eager", "compiled"))


@dataclass
class TrainConfig(RuntimeFields):
    data: str = field("", "Zindi-layout folder with Train.csv and train_data/")
    out: str = field("runs/train", "run folder to write")
    archs: list[str] = field(["test_efficientnet"], "timm backbones as NAME[@SIZE]; SIZE upsamples the optical input")
    pretrained: list[str] = field([], "local timm checkpoint per arch (same order); empty = random init")
    fusion: str = field("attention", "how branch features meet", choices=("attention", "concat"))
    modalities: str = field("both", "branches to use (ablation)", choices=("both", "optical", "sar"))
    dropout: float = field(0.3, "dropout before the classifier")
    folds: int = field(5, "stratified K-fold splits")
    only_folds: list[int] = field([], "train these folds only (default: all)")
    epochs: int = field(35, "maximum epochs per fold")
    max_steps: int = field(0, "cap on steps per epoch (0 = a full pass over the fold)")
    batch_size: int = field(16, "training batch size per process (under torchrun the global batch is N times it)")
    eval_batch_size: int = field(256, "validation/inference batch size")
    lr: float = field(1e-4, "AdamW learning rate")
    min_lr: float = field(1e-6, "cosine schedule floor")
    lr_scale: str = field("sqrt", "under DDP, scale --lr/--min-lr by the world size: sqrt (timm's rule for "
                          "Adam-family optimisers) | linear | none", choices=("sqrt", "linear", "none"))
    weight_decay: float = field(1e-5, "AdamW weight decay")
    focal_alpha: float = field(0.25, "focal loss alpha (<0 disables class weighting)")
    focal_gamma: float = field(2.0, "focal loss gamma")
    pos_fraction: float = field(0.5, "share of positives in each balanced batch")
    mixup_alpha: float = field(0.2, "Mixup Beta(alpha, alpha); 0 disables")
    cutmix_alpha: float = field(1.0, "CutMix Beta(alpha, alpha); 0 disables")
    mix_prob: float = field(0.5, "chance a batch is mixed")
    patience: int = field(7, "early stopping: epochs without validation F1 improvement")
    seed: int = field(42, "seed for folds, sampling, augmentation and init")
    deterministic: bool = field(False, "deterministic algorithms (CPU runs are then bit-reproducible)")
    cuda_graphs: bool = field(False, "capture the training step as a CUDA graph and replay it (GPU, bf16/fp32)")
    fold_on: str = field("auto", "where the training fold lives: auto (the device when it fits in half its free "
                         "memory) | device | host (pinned; batches gathered on the host, copied per step)",
                         choices=("auto", "device", "host"))
    fold_parallel: bool = field(False, "under torchrun: spread folds across ranks instead of DDP within each fold")
    cache_dir: str = field("", "preprocessed-tensor cache folder (default ~/.cache/landslide or $LANDSLIDE_CACHE)")
    resume: bool = field(False, "continue an interrupted run in --out from its last finished epoch")
    preset: str = field("", "the preset this config started from (set by --preset)")


PRESETS: dict[str, dict] = {
    # The seed recipe on a real Zindi download (GPU).
    "full": dict(archs=["tf_efficientnetv2_l@224", "efficientnet_b5@384"], folds=5, epochs=35, batch_size=16,
                 lr=1e-4, weight_decay=1e-5, min_lr=1e-6, focal_alpha=0.25, focal_gamma=2.0,
                 mixup_alpha=0.2, cutmix_alpha=1.0, patience=7),
    # The quick-start demo: minutes on a 2-core CPU. test_efficientnet is timm's tiny EfficientNet config.
    # channels-last is on because it is ~25 % faster for these convolutions on x86 CPUs too.
    "demo": dict(archs=["test_efficientnet"], folds=5, epochs=8, batch_size=64, lr=3e-3, min_lr=1e-5,
                 weight_decay=1e-4, patience=4, eval_batch_size=512, channels_last="on"),
    # Tests: seconds.
    "tiny": dict(archs=["test_efficientnet"], folds=2, epochs=2, batch_size=16, max_steps=3, lr=1e-3,
                 patience=2, eval_batch_size=64),
}


def arch_model_config(cfg: TrainConfig, arch_i: int) -> ModelConfig:
    from landslide.model import ModelConfig, parse_arch

    name, size = parse_arch(cfg.archs[arch_i])
    pretrained = cfg.pretrained[arch_i] if arch_i < len(cfg.pretrained) else ""
    return ModelConfig(backbone=name, img_size=size, fusion=cfg.fusion, modalities=cfg.modalities,
                       dropout=cfg.dropout, pretrained=pretrained)


def check_config(cfg: TrainConfig) -> None:
    """What the data need not be read for, checked before anything is written (every architecture
    buildable, the folds asked for existing): a typo must not leave a run folder behind."""
    from landslide.bands import BandLayout
    from landslide.contract import arch_stem
    from landslide.errors import ConfigError, refuse_files_as_folders
    from landslide.model import check_model_config, check_pretrained

    # Each would crash minutes in (a traceback from range() or torch) or train nothing and then look for
    # a checkpoint no epoch wrote: refused here, with the flag named.
    for flag, value, ok, want in (("--epochs", cfg.epochs, cfg.epochs >= 1, "1 or more"),
                                  ("--folds", cfg.folds, cfg.folds >= 2, "2 or more"),
                                  ("--patience", cfg.patience, cfg.patience >= 1, "1 or more"),
                                  ("--max-steps", cfg.max_steps, cfg.max_steps >= 0, "0 (a full pass) or more"),
                                  # A balanced batch holds at least one sample of each class.
                                  ("--batch-size", cfg.batch_size, cfg.batch_size >= 2, "2 or more"),
                                  ("--eval-batch-size", cfg.eval_batch_size, cfg.eval_batch_size >= 1, "1 or more"),
                                  ("--lr", cfg.lr, cfg.lr > 0, "above 0"),
                                  ("--min-lr", cfg.min_lr, 0 <= cfg.min_lr <= cfg.lr,
                                   f"from 0 up to --lr ({cfg.lr:g}): it is the floor the cosine schedule decays to"),
                                  ("--weight-decay", cfg.weight_decay, cfg.weight_decay >= 0, "0 or more"),
                                  ("--dropout", cfg.dropout, 0 <= cfg.dropout < 1, "from 0 up to (not including) 1"),
                                  ("--focal-alpha", cfg.focal_alpha, cfg.focal_alpha <= 1,
                                   "from 0 to 1 (the positives' weight), or below 0 for no class weighting"),
                                  ("--focal-gamma", cfg.focal_gamma, cfg.focal_gamma >= 0, "0 (plain BCE) or more"),
                                  ("--pos-fraction", cfg.pos_fraction, 0 < cfg.pos_fraction < 1, "between 0 and 1, e.g. 0.5"),
                                  ("--mixup-alpha", cfg.mixup_alpha, cfg.mixup_alpha >= 0, "0 (off) or more"),
                                  ("--cutmix-alpha", cfg.cutmix_alpha, cfg.cutmix_alpha >= 0, "0 (off) or more"),
                                  ("--mix-prob", cfg.mix_prob, 0 <= cfg.mix_prob <= 1, "from 0 to 1"),
                                  # numpy's generators (the fold split) take no negative seed.
                                  ("--seed", cfg.seed, cfg.seed >= 0, "0 or more"),
                                  ("--archs", ",".join(cfg.archs), bool(cfg.archs) and all(cfg.archs),
                                   "at least one timm name, comma-separated")):
        if not ok:
            raise ConfigError(f"{flag} {value}: out of range", fix=f"pass {flag} {want}")
    refuse_files_as_folders(out=cfg.out, cache_dir=cfg.cache_dir)
    if cfg.resume and not (Path(cfg.out) / "config.json").is_file():
        # Else a mistyped --out with --resume (and --data) trains a new run from scratch, for hours, elsewhere.
        raise ConfigError(f"--resume: {cfg.out} holds no run to continue (no config.json)", file=cfg.out,
                          fix="check --out (the folder train.py was started with), or drop --resume to start a new run there")
    bad = sorted({k for k in cfg.only_folds if not 0 <= k < cfg.folds} | {k for k in cfg.only_folds
                                                                          if cfg.only_folds.count(k) > 1})
    if bad:
        raise ConfigError(f"--only-folds {','.join(map(str, cfg.only_folds))}: fold(s) {bad} are out of range or "
                          f"repeated", fix=f"pass each fold once, from 0 to {cfg.folds - 1} (--folds {cfg.folds})")
    # Checkpoints, OOF columns and calibrated weights are keyed by the architecture's file stem: an entry
    # listed twice would overwrite the other's checkpoint and share one weight (a silently broken ensemble).
    stems = [arch_stem(a) for a in cfg.archs]
    if dup := sorted({a for a, s in zip(cfg.archs, stems) if stems.count(s) > 1}):
        raise ConfigError(f"--archs {','.join(cfg.archs)}: {', '.join(dup)} listed more than once (or as NAME@SIZE "
                          f"and NAME_SIZE); each architecture's checkpoints and ensemble weight are kept by its name",
                          fix="list each architecture once (for a second seed of one backbone, train a second run)")
    if len(cfg.pretrained) > len(cfg.archs):
        raise ConfigError(f"{len(cfg.pretrained)} --pretrained files for {len(cfg.archs)} --archs",
                          fix="pass at most one checkpoint per architecture, in --archs order")
    for i in range(len(cfg.archs)):
        check_model_config(arch_model_config(cfg, i))
    if any(cfg.pretrained) and cfg.data:
        layout = BandLayout.from_dir(cfg.data)  # bands.txt alone: the patches are read later
        for i in range(len(cfg.archs)):
            check_pretrained(arch_model_config(cfg, i), layout)
