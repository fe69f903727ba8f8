"""Where a training fold lives while it trains: on the device when it fits, else in pinned host memory.

The fold is standardised once (``LandslideNet.normalize``) and stored; each step gathers an index
batch from it. On the device (``--fold-on auto`` whenever the fold takes at most half the device's
free memory) a step is a device gather with no host work at all. When it does not fit, or with
``--fold-on host``, the fold stays in pinned host memory: a step gathers on the host into one of two
pinned buffers and copies it to the device asynchronously. A buffer is refilled two steps later,
after waiting on its copy's event (long finished by then): the one host wait this mode adds.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from landslide.errors import ConfigError

log = logging.getLogger(__name__)

PLACEMENTS = ("auto", "device", "host")
FIT_FRACTION = 0.5  # of the free device memory; the rest is for weights, activations and optimizer state


def choose_placement(requested: str, device: torch.device, need_bytes: int, free_bytes: int | None) -> str:
    """``device`` or ``host`` for a fold of ``need_bytes``; ``free_bytes`` None = unknown (a CPU)."""
    if requested not in PLACEMENTS:
        raise ConfigError(f"--fold-on {requested!r} unknown", fix=f"use one of {PLACEMENTS}")
    if requested == "host" or device.type == "cpu":  # on a CPU both are the same memory
        return requested if requested != "auto" else "device"
    fits = free_bytes is None or need_bytes <= FIT_FRACTION * free_bytes
    if requested == "device" and not fits:
        raise ConfigError(f"the training fold needs {need_bytes / 2**30:.2f} GiB on {device}, and only "
                          f"{free_bytes / 2**30:.2f} GiB is free (at most {FIT_FRACTION:.0%} of it is used for data)",
                          fix="use --fold-on host (pinned host memory, batches copied per step) or --fold-on auto")
    return "device" if fits else "host"


def free_memory(device: torch.device) -> int | None:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


def standardise(normalize, x: torch.Tensor, rows: np.ndarray, device: torch.device, dtype: torch.dtype,
                placement: str, memory_format: torch.memory_format = torch.contiguous_format
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``normalize`` ``x[rows]`` in 1,024-row chunks on ``device`` (no host copy of the whole fold first);
    keep the result there or bring it back to the host, stored in ``memory_format``."""
    out, cs = None, []
    with torch.no_grad():
        for s in range(0, len(rows), 1024):
            z, c = normalize(x[rows[s:s + 1024]].to(device))
            if out is None:  # filled in place: chunks + a final cat would need twice the fold's memory
                # A host fold for a GPU is pinned from the start (HostFold's pin_memory() is then a no-op):
                # pinning it afterwards would copy it, twice the fold in host memory at the peak.
                pin = placement == "host" and device.type == "cuda"
                out = torch.empty((len(rows), *z.shape[1:]), dtype=dtype, device=device if placement == "device"
                                  else "cpu", memory_format=memory_format, pin_memory=pin)
            out[s:s + len(z)] = z.to(dtype)
            cs.append(c)
    return out, torch.cat(cs)


class DeviceFold:
    """The fold on the training device; ``batch(idx)`` is a device gather (``idx`` on the device)."""

    def __init__(self, x: torch.Tensor, cloud: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.cloud, self.y = x, cloud, y.to(x.device)
        self.labels = self.y  # what the sampler draws from: indices then live where the data does

    def indices(self, idx: torch.Tensor) -> torch.Tensor:
        """An epoch's ``(steps, batch)`` index table, ready for :meth:`batch`: already on the device."""
        return idx

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx], self.cloud[idx]

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``(source, index, y, cloud)``: the batch is ``source[index]``, left for the augmentation to
        gather (``aug(source, g, index=index)``), so a backend whose first kernel gathers reads the fold
        in place instead of from a gathered copy."""
        return self.x, idx, self.y[idx], self.cloud[idx]


class HostFold:
    """The fold in (pinned) host memory; ``batch(idx)`` gathers on the host (``idx`` on the CPU), copies async."""

    def __init__(self, x: torch.Tensor, cloud: torch.Tensor, y: torch.Tensor, device: torch.device,
                 batch_size: int) -> None:
        self.device = device
        self.pin = device.type == "cuda"
        self.x = x.pin_memory() if self.pin else x  # returns x itself when already pinned
        self.cloud, self.y = cloud.to(device), y.to(device)
        self.labels = y.cpu()
        self.bufs = [torch.empty((batch_size, *x.shape[1:]), dtype=x.dtype, pin_memory=self.pin) for _ in range(2)]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.k = 0

    def indices(self, idx: torch.Tensor) -> torch.Tensor:
        """An epoch's ``(steps, batch)`` index table (host), pinned once so each step's copy of its row
        to the device is asynchronous (from pageable memory it may wait for the stream)."""
        return idx.pin_memory() if self.pin else idx

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, self.k = self.k, self.k ^ 1
        if self.events[k] is not None:
            self.events[k].synchronize()  # its copy, queued two steps ago, has finished reading the buffer
        buf = self.bufs[k][:len(idx)]
        torch.index_select(self.x, 0, idx, out=buf)
        if not self.pin:
            xb = buf.clone()  # the caller may keep it past the next refill
        else:
            xb = buf.to(self.device, non_blocking=True)
            self.events[k] = torch.cuda.Event()
            self.events[k].record()
        idx_dev = idx.to(self.device, non_blocking=True)
        return xb, self.y[idx_dev], self.cloud[idx_dev]

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor]:
        """As :meth:`DeviceFold.rows`; here the batch is gathered on the host already (index None)."""
        xb, y, cloud = self.batch(idx)
        return xb, None, y, cloud


def make_fold(normalize, x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: torch.dtype,
              requested: str, batch_size: int, rows: np.ndarray | None = None,
              memory_format: torch.memory_format = torch.contiguous_format) -> DeviceFold | HostFold:
    """Standardise the fold ``x[rows]`` (labels ``y[rows]``; default: all rows) and place it (logged once),
    stored in ``memory_format`` (channels-last for the compiled CPU augmentation, which reads it in place)."""
    rows = np.arange(len(x)) if rows is None else rows
    y = y[rows]
    need = x[:1].numel() * len(rows) * torch.empty((), dtype=dtype).element_size()
    placement = choose_placement(requested, device, need, free_memory(device))
    if device.type == "cuda":
        log.info("training fold: %.2f GiB %s on the %s", need / 2**30, str(dtype).removeprefix("torch."),
                 "device" if placement == "device" else "host (pinned; batches copied per step)")
    x, cloud = standardise(normalize, x, rows, device, dtype, placement, memory_format)
    if placement == "device":
        return DeviceFold(x, cloud, y)
    return HostFold(x, cloud, y, device, batch_size)
