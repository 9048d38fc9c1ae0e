"""The resumable ROSALIA step loop in plain torch (no Ray): optimizer, schedule, engines, steps.

- AdamW (betas 0.9/0.95, no weight decay) over the trainable parameters; warmup then linear
  decay to zero at the last step; gradient clipping; bf16 autocast where the device has it.
- Engines: `TorchEngine` (one process, or torch DDP when a process group has several ranks) and
  `DeepSpeedEngine` (ZeRO-2; on CPU over gloo, on GPUs over NCCL).
- Data order: `plan.order(epoch)` gives the dataset indices of an epoch (the 1:1
  positive:negative EpochPlan). Global batch b = per-rank batch x world; rank r takes the r-th
  slice of each global batch; the incomplete tail of an epoch is dropped. `LoopState` (step,
  epoch, position = samples of the epoch already consumed) pins the data position exactly, so a
  resumed loop neither repeats nor skips a batch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

BETAS = (0.9, 0.95)


class EpochOrder(Protocol):
    def order(self, epoch: int) -> Sequence[int]: ...


@dataclass
class LoopState:
    """Where a run stands: optimizer steps done, current epoch, samples of it consumed."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    val_giou: float = -1.0  # the last validation gIoU (-1: not evaluated yet)
    best_val_giou: float = -1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# -- optimizer, schedule, precision ---------------------------------------------------------


def make_optimizer(params: Sequence[nn.Parameter], lr: float) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, weight_decay=0.0)


def warmup_linear(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    warmup = max(0, int(warmup_steps))
    total = max(1, int(total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def make_scheduler(opt: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(warmup_steps, total_steps))


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast dtype, or None for fp32. `auto` uses bf16 only on GPUs that support it."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else None  # CPU bf16 only when asked for


def total_steps(max_steps: int, epochs: int, steps_per_epoch: int) -> int:
    """max_steps when > 0, else epochs x steps per epoch."""
    if max_steps > 0:
        return int(max_steps)
    if epochs <= 0 or steps_per_epoch <= 0:
        raise ValueError("set train.max_steps > 0, or train.epochs > 0 with at least one full global batch of data")
    return int(epochs * steps_per_epoch)


# -- engines --------------------------------------------------------------------------------


class TorchEngine:
    """Plain torch (or DDP when a process group with several ranks exists)."""

    kind = "torch"

    def __init__(self, model: nn.Module, lr: float, warmup: int, total: int, grad_clip: float, autocast: Optional[torch.dtype] = None, ddp: bool = False, device: Optional[torch.device] = None):
        self.module = model
        self.device = device or next(model.parameters()).device
        self.optimizer = make_optimizer(list(model.parameters()), lr)
        self.scheduler = make_scheduler(self.optimizer, warmup, total)
        self.grad_clip = grad_clip
        self.autocast = autocast
        self.wrapped: nn.Module = model
        if ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DDP(model, device_ids=ids, find_unused_parameters=True)

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def train(self, mode: bool = True) -> None:
        self.wrapped.train(mode)

    def forward(self, batch: Any) -> dict:
        with self._autocast():
            return self.wrapped(batch)

    def step(self, loss: torch.Tensor) -> float:
        """backward, clip, optimizer and scheduler step; returns the gradient norm."""
        loss.backward()
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip) if self.grad_clip > 0 else torch.tensor(0.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedEngine:
    """A DeepSpeed ZeRO engine around the same AdamW and schedule (collective save/load)."""

    kind = "deepspeed"

    def __init__(self, model: nn.Module, lr: float, warmup: int, total: int, grad_clip: float, micro_batch: int, zero_stage: int = 2, bf16: bool = False):
        import deepspeed

        from rosalia.deepspeed_config import deepspeed_config

        opt = make_optimizer(list(model.parameters()), lr)
        sched = make_scheduler(opt, warmup, total)
        conf = deepspeed_config(micro_batch, zero_stage=zero_stage, grad_clip=grad_clip, bf16=bf16)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=conf, dist_init_required=False
        )
        self.module = self.engine.module
        self.device = self.engine.device
        self.autocast = None

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def forward(self, batch: Any) -> dict:
        return self.engine(batch)

    def step(self, loss: torch.Tensor) -> float:
        self.engine.backward(loss)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, folder: str) -> None:
        """Collective: every rank writes its ZeRO partition under `folder/ds`."""
        self.engine.save_checkpoint(folder, tag="ds")

    def load(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(folder, tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint under {folder}")


Engine = TorchEngine | DeepSpeedEngine


# -- batches --------------------------------------------------------------------------------


def rank_batches(order: Sequence[int], position: int, per_rank: int, world: int, rank: int) -> list[list[int]]:
    """This rank's batches of the epoch from `position` on (incomplete global batches dropped)."""
    gb = per_rank * world
    full = (len(order) // gb) * gb
    return [list(order[s + rank * per_rank : s + (rank + 1) * per_rank]) for s in range(position, full, gb)]


def steps_per_epoch(n_samples: int, per_rank: int, world: int) -> int:
    return n_samples // (per_rank * world)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# -- the loop -------------------------------------------------------------------------------


@dataclass
class LoopConfig:
    per_rank_batch: int
    total_steps: int
    checkpoint_every: int = 100
    eval_every: int = 200
    log_every: int = 10
    max_seconds: float = 0.0  # 0: no time limit
    loader_workers: int = 0
    snapshot_every: int = 0  # 0: no snapshots (hooks.snapshot)


@dataclass
class LoopHooks:
    """Callbacks that keep the loop free of Ray and storage details."""

    checkpoint: Callable[[LoopState, dict], None] = lambda state, metrics: None
    validate: Optional[Callable[[], float]] = None  # returns validation gIoU
    trace: Optional[Callable[[int, list[int]], None]] = None  # (step, dataset indices)
    snapshot: Optional[Callable[[int], None]] = None  # (step): export a scoreable model (train.keep_snapshots)
    log: Callable[[dict], None] = field(default=lambda m: log.info("%s", m))


def run_loop(
    engine: Engine,
    dataset: Any,
    collate: Callable[[list], Any],
    plan: EpochOrder,
    state: LoopState,
    cfg: LoopConfig,
    hooks: LoopHooks,
    rank: int = 0,
    world: int = 1,
) -> LoopState:
    """Train from `state` until `cfg.total_steps` (or the time limit); returns the final state.

    Checkpoints (through hooks.checkpoint) every `checkpoint_every` steps and at the end; the
    state passed to it already points at the next batch to train on.
    """
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    t_first, first_step = 0.0, 0  # steady-state throughput: from the end of the first step on
    window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
    engine.train(True)
    while state.step < cfg.total_steps:
        order = plan.order(state.epoch)
        batches = rank_batches(order, state.position, cfg.per_rank_batch, world, rank)
        if not batches:
            if state.position == 0:
                raise ValueError(f"epoch {state.epoch} has fewer samples ({len(order)}) than one global batch ({cfg.per_rank_batch * world})")
            state.epoch, state.position = state.epoch + 1, 0
            continue
        # Own generator: a DataLoader iterator otherwise draws from the global torch RNG, and a
        # resumed run (which starts a new iterator mid-epoch) would get other dropout masks.
        gen = torch.Generator().manual_seed(state.epoch)
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=cfg.loader_workers, generator=gen)
        for idx, batch in zip(batches, loader):
            out = engine.forward(to_device(batch, engine.device))
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {state.step}")
            grad_norm = engine.step(loss)
            if hooks.trace:
                hooks.trace(state.step, idx)
            state.step += 1
            state.position += cfg.per_rank_batch * world
            if state.position >= steps_per_epoch(len(order), cfg.per_rank_batch, world) * cfg.per_rank_batch * world:
                state.epoch, state.position = state.epoch + 1, 0
            window_loss += float(loss.detach())
            window_n += 1
            if not t_first:
                t_first, first_step = time.perf_counter(), state.step
            done = state.step >= cfg.total_steps or (cfg.max_seconds > 0 and time.perf_counter() - t0 >= cfg.max_seconds)
            metrics = {"step": state.step, "epoch": state.epoch, "loss": window_loss / window_n, "lr": engine.lr(), "grad_norm": grad_norm}
            if state.step > first_step:
                metrics["throughput"] = (state.step - first_step) * cfg.per_rank_batch * world / (time.perf_counter() - t_first)
            if state.step % max(1, cfg.log_every) == 0:
                dt = time.perf_counter() - window_t
                metrics["samples_per_s"] = window_n * cfg.per_rank_batch * world / max(dt, 1e-9)
                hooks.log(dict(metrics))
            if hooks.validate and (state.step % max(1, cfg.eval_every) == 0 or done):
                engine.train(False)
                with torch.no_grad():
                    state.val_giou = float(hooks.validate())
                engine.train(True)
                state.best_val_giou = max(state.best_val_giou, state.val_giou)
            if state.step % max(1, cfg.checkpoint_every) == 0 or done:
                metrics.update(val_giou=state.val_giou, best_val_giou=state.best_val_giou)
                hooks.checkpoint(state, metrics)
            if hooks.snapshot and cfg.snapshot_every > 0 and (state.step % cfg.snapshot_every == 0 or done):
                hooks.snapshot(state.step)
            if state.step % max(1, cfg.log_every) == 0:
                window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
            if done:
                return state
            if state.position == 0:  # the epoch rolled over: rebuild the order
                break
    return state


def mean_giou(pred_masks: torch.Tensor, target_masks: torch.Tensor, positive: torch.Tensor) -> tuple[float, int]:
    """(sum of per-sample IoU over positives, number of positives) for boolean (N, H, W) masks."""
    pos = positive.bool()
    if not bool(pos.any()):
        return 0.0, 0
    p, t = pred_masks[pos].flatten(1).bool(), target_masks[pos].flatten(1).bool()
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.sum()), int(pos.sum())

