"""One optimisation step — eager, or captured once as a CUDA graph and replayed (``--cuda-graphs``).

The step never waits for the host: the loss stays a device tensor (the trainer sums it and reads it
once per epoch), the fused CUDA AdamW takes the grad scaler's inf check on the device, and the
learning rate the scheduler sets is a device tensor when graphed, so replay sees each new value.

Graph capture follows PyTorch's whole-network recipe: a few warm-up steps on a side stream (lazy
optimizer state, cuDNN autotuning), then one captured step over static input buffers; each later
step copies the batch into those buffers and replays. Warm-up steps really update the weights, so
weights and optimizer state are snapshotted before and copied back after, in place (the graph
holds their addresses) — the first graphed step then starts from the same state as the eager one.
"""
from __future__ import annotations

import torch

from landslide.device import Runtime
from landslide.errors import ConfigError
from landslide.losses import focal_loss

WARMUP_STEPS = 3


def check_cuda_graphs(rt: Runtime, ddp: bool, compile_mode: str = "default") -> None:
    """Refuse ``--cuda-graphs`` where it cannot work, naming the fix."""
    if rt.compile and compile_mode != "default":
        # Those modes capture CUDA graphs of their own (cudagraph trees), which would then run inside
        # this step's capture: nested capture is unsupported. A default-mode compiled step captures fine.
        raise ConfigError(f"--cuda-graphs with --compile-mode {compile_mode}: that mode captures its own CUDA graphs",
                          fix="use --compile-mode default with --cuda-graphs (or drop --cuda-graphs)")
    if rt.device.type != "cuda":
        raise ConfigError("--cuda-graphs needs a CUDA GPU", fix="drop --cuda-graphs on this host")
    if rt.precision == "fp16":
        raise ConfigError("--cuda-graphs with --precision fp16: the grad scaler's update is not capturable",
                          fix="use --precision bf16 (or fp32) with --cuda-graphs")
    if ddp:
        raise ConfigError("--cuda-graphs is not supported with DDP (gradient all-reduce is not captured here)",
                          fix="drop --cuda-graphs, or use --fold-parallel")


class TrainStep:
    """``step(x, y, cloud) -> loss`` (0-d device tensor): forward, focal loss, backward, optimizer, schedule."""

    def __init__(self, fwd, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, scaler,
                 rt: Runtime, focal_alpha: float, focal_gamma: float, graphs: bool = False) -> None:
        self.fwd, self.model, self.opt, self.sched, self.scaler = fwd, model, opt, sched, scaler
        self.rt, self.alpha, self.gamma, self.graphs = rt, focal_alpha, focal_gamma, graphs
        self.graph: torch.cuda.CUDAGraph | None = None

    def _loss(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with self.rt.autocast():
            logits = self.fwd(x, c)
        return focal_loss(logits, y, self.alpha, self.gamma)

    def _eager(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        loss = self._loss(x, y, c)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not self.graphs:
            loss = self._eager(x, y, c)
        else:
            if self.graph is None:
                loss = self._capture(x, y, c)  # the first warm-up step is this batch's step
            else:
                if x.shape != self.sx.shape:
                    raise ValueError(f"CUDA graph captured for batch {tuple(self.sx.shape)}, got {tuple(x.shape)}")
                self.sx.copy_(x)
                self.sy.copy_(y)
                self.sc.copy_(c)
                self.graph.replay()
                loss = self.sloss.clone()  # the static loss is overwritten by the next replay
        self.sched.step()
        return loss

    def _state_tensors(self) -> list[torch.Tensor]:
        ts = [p for p in self.model.parameters()] + [b for b in self.model.buffers()]
        for st in self.opt.state.values():
            ts.extend(v for v in st.values() if torch.is_tensor(v))
        return ts

    def _capture(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Warm up, capture, restore the state after the first warm-up step; returns that step's loss."""
        # The graph reads (and the scheduler fills) the lr tensor make_optimizer put on the device; a
        # resume keeps that tensor (load_optimizer_state), or a replay would never see the schedule.
        for group in self.opt.param_groups:
            if not (torch.is_tensor(group["lr"]) and group["lr"].device == x.device):
                raise RuntimeError(f"a captured step needs the lr as a tensor on {x.device}, got {group['lr']!r}: "
                                   "build the optimizer with make_optimizer(..., graphs=True)")
        # Static buffers keep the layout of the first batch (channels-last when that is on).
        self.sx, self.sy, self.sc = x.clone(), y.clone(), c.clone()
        snapshot = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(WARMUP_STEPS):
                loss = self._eager(self.sx, self.sy, self.sc)
                if i == 0:  # optimizer state exists from here on; snapshot the state after step 1
                    snapshot = [t.detach().clone() for t in self._state_tensors()]
                    first_loss = loss.clone()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)  # grads get allocated from the graph's private pool
        # thread_local: a CUDA call from another thread (DALI's executor) must not invalidate the capture.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            loss = self._loss(self.sx, self.sy, self.sc)
            loss.backward()
            self.opt.step()
        self.sloss = loss.detach()
        # Back to the state after one step on this batch: the warm-up counted as the first step.
        assert snapshot is not None
        with torch.no_grad():
            for t, s in zip(self._state_tensors(), snapshot, strict=True):
                t.copy_(s)
        return first_loss


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, rt: Runtime,
                   graphs: bool) -> torch.optim.Optimizer:
    """AdamW: fused on CUDA (one kernel, device-side AMP inf checks); capturable with a tensor lr for graphs."""
    if not graphs:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                                 fused=rt.device.type == "cuda")
    return torch.optim.AdamW(model.parameters(), lr=torch.tensor(lr, device=rt.device), weight_decay=weight_decay,
                             fused=True, capturable=True)


IMPL_FLAGS = ("fused", "capturable", "foreach", "differentiable")


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping this run's implementation and the parameters' layout.

    ``load_state_dict`` replaces each param group with the saved one, so a run resumed on another
    device or with other flags would inherit the saved ``fused``/``capturable``/``foreach`` choice (a
    CPU run resumed on a GPU: not fused; a GPU run on the CPU: fused with channels-last moments beside
    contiguous parameters, which the fused CPU kernel updates element-misaligned without an error).
    The choice ``make_optimizer`` just made is put back, the moments take their parameter's layout,
    and ``step`` goes where that implementation reads it (the device when fused or capturable).

    The lr keeps this run's type too: a captured step reads a device tensor, and an lr loaded as a
    Python float (a run started without ``--cuda-graphs``) would be baked into the graph at capture, so
    the schedule's later values (assigned to the group, never read by a replay) would not apply.
    """
    keep = [{k: g[k] for k in IMPL_FLAGS if k in g} for g in opt.param_groups]
    lrs = [g["lr"] for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, flags, lr in zip(opt.param_groups, keep, lrs, strict=True):
        group.update(flags)
        saved = float(group["lr"])
        group["lr"] = lr.fill_(saved) if torch.is_tensor(lr) else saved  # filled in place: no host sync, same tensor
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            st = opt.state.get(p, {})
            for name, v in list(st.items()):
                if not torch.is_tensor(v):
                    continue
                if name == "step":
                    st[name] = v.to(dtype=torch.float32, device=p.device if on_device else "cpu")
                elif v.shape == p.shape:
                    st[name] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Resume the grad scaler; a run started in bf16/fp32 (disabled scaler, empty state) resumed with
    ``--precision fp16`` starts a fresh scale instead of failing in ``GradScaler.load_state_dict``."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
