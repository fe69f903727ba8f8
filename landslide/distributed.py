"""Multi-process training under ``torchrun``: process group set-up, rank roles, small collectives.

Two modes (``--fold-parallel`` picks the second):

* **DDP** — every rank trains every (fold, arch) together: each draws its own share of the balanced
  batches (its generator is seeded with its rank), gradients are all-reduced by
  ``DistributedDataParallel``; rank 0 validates, decides early stopping for all, and writes files.
* **fold-parallel** — folds are dealt round-robin to the ranks, each trains its folds alone and
  writes their ``fold<k>/`` folders; rank 0 gathers OOF predictions and metric rows and writes the
  run-level files.

Either way the run folder is the single-process one. NCCL on GPUs, gloo on CPUs. Without
``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op for one process.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from landslide.errors import ConfigError

OBJECT_TIMEOUT = datetime.timedelta(days=2)
_OBJECTS: dist.ProcessGroup | None = None  # the group broadcast/gather use; set by init()


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    fold_parallel: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        """Gradients are all-reduced across ranks inside each fold."""
        return self.enabled and not self.fold_parallel

    @property
    def replicas(self) -> int:
        """Copies of one fold's model training together: the world size under DDP, else 1."""
        return self.world_size if self.ddp else 1

    def describe(self) -> str:
        if not self.enabled:
            return "single process"
        return f"rank {self.rank}/{self.world_size} ({'fold-parallel' if self.fold_parallel else 'DDP'})"


def from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as ``torchrun`` exports them; (0, 1, 0) when run plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init(device: str, fold_parallel: bool) -> tuple[DistEnv, str]:
    """Join the process group when launched by torchrun; returns the env and the device string to use.

    On GPUs each rank takes ``cuda:<LOCAL_RANK>`` (an explicit ``--device cuda:N`` would put every
    rank on one GPU, so it is refused).
    """
    rank, world, local = from_env()
    if world <= 1:
        if fold_parallel:
            raise ConfigError("--fold-parallel needs several processes",
                              fix="launch with torchrun --nproc_per_node N train.py ... (or drop --fold-parallel)")
        return DistEnv(), device
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"--device {device} under torchrun: every rank would use the same device",
                          fix="use --device auto|cuda|cpu; each rank takes cuda:<LOCAL_RANK>")
    if cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s)",
                              fix="use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    global _OBJECTS
    # Python objects travel over their own CPU group with a long timeout: under --fold-parallel a rank
    # that finished its folds waits at the final gather for the slowest one, which can be hours, while
    # a stuck gradient all-reduce on the default group should still fail after 30 minutes.
    _OBJECTS = dist.new_group(backend="gloo", timeout=OBJECT_TIMEOUT)
    if rank != 0:  # one log, rank 0's: the other ranks report only warnings and errors
        logging.getLogger().setLevel(logging.WARNING)
    return DistEnv(rank, world, fold_parallel), device


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable Python object)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_OBJECTS)
    return box[0]


def gather(env: DistEnv, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; ``None`` elsewhere."""
    if not env.enabled:
        return [obj]
    out: list[Any] | None = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0, group=_OBJECTS)
    return out


def all_mean(env: DistEnv, t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over the ranks (DDP mode only; identity otherwise)."""
    if not env.ddp:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / env.world_size


def on_main(env: DistEnv, fn, *args, **kw):
    """Run ``fn`` on rank 0 only (its result there, ``None`` elsewhere).

    An error on rank 0 is re-raised on every rank instead of leaving the others waiting at the next
    collective.
    """
    err: BaseException | None = None
    out = None
    if env.is_main:
        try:
            out = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to every rank below
            err = e
    if env.enabled:
        err = broadcast(env, err)
    if err is not None:
        raise err
    return out


def run_on_main_first(env: DistEnv, fn, *args, **kw):
    """Run ``fn`` on rank 0, then on the others — for steps that fill a shared cache."""
    out = on_main(env, fn, *args, **kw)
    return out if env.is_main else fn(*args, **kw)
