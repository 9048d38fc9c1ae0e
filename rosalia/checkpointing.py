"""Training checkpoints: everything a run needs to resume exactly, in one folder.

Layout (ranks write into the same folder; Ray Train merges the ranks' folders):

    state.json          rank 0: LoopState (step, epoch, position, val gIoU), engine kind, world,
                        and a digest of the epoch's data order (a resume with another order is refused)
    trainable.pt        rank 0: the trainable parameters (and buffers) by name; used for export
    optim.pt            rank 0, torch/DDP engine: optimizer + scheduler state
    ds/                 DeepSpeed engine: its own checkpoint, one ZeRO partition per rank
    rng_rank{r}.pt      every rank: python, numpy, torch (and CUDA) RNG states

The frozen weights are not saved: they come from the model config (its seed or its base
checkpoint), so a checkpoint of a LoRA run stays small.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rosalia.train_loop import DeepSpeedEngine, LoopState, TorchEngine

log = logging.getLogger(__name__)

STATE = "state.json"
TRAINABLE = "trainable.pt"
OPTIM = "optim.pt"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing a file or does not fit the model."""


def rng_state() -> dict[str, Any]:
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers, detached on the CPU."""
    out = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    out.update({f"buffer:{n}": b.detach().cpu().clone() for n, b in model.named_buffers()})
    return out


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            target = buffers.get(name[len("buffer:") :]) if name.startswith("buffer:") else params.get(name)
            if target is None:
                raise CheckpointError(f"checkpoint tensor {name!r} is not in the model")
            if target.shape != value.shape:
                raise CheckpointError(f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(target.shape)}")
            target.copy_(value.to(target.device, target.dtype))


def order_digest(order: Sequence[int]) -> str:
    """A short fingerprint of one epoch's sample order."""
    return hashlib.sha1(np.asarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


def save_train_state(folder: str | Path, engine: TorchEngine | DeepSpeedEngine, state: LoopState, rank: int = 0, world: int = 1,
                     order: Callable[[int], Sequence[int]] | None = None) -> Path:
    """Write this rank's part of a checkpoint into `folder` (collective for DeepSpeed).

    `order(epoch)`: the run's sample order; its digest for `state.epoch` is kept so a resume
    can check that it continues the same order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(engine, DeepSpeedEngine):
        engine.save(str(folder))
    if rank == 0:
        torch.save(trainable_state(engine.module), folder / TRAINABLE)
        if isinstance(engine, TorchEngine):
            torch.save(engine.state_dict(), folder / OPTIM)
        meta = {"loop": state.to_dict(), "engine": engine.kind, "world": world}
        if order is not None:
            meta["order_digest"] = order_digest(order(state.epoch))
        (folder / STATE).write_text(json.dumps(meta, indent=1))
    torch.save(rng_state(), folder / f"rng_rank{rank}.pt")
    return folder


def read_loop_state(folder: str | Path) -> tuple[LoopState, dict]:
    path = Path(folder) / STATE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {STATE}: not a training checkpoint")
    meta = json.loads(path.read_text())
    return LoopState.from_dict(meta["loop"]), meta


def load_train_state(folder: str | Path, engine: TorchEngine | DeepSpeedEngine, rank: int = 0, world: int = 1,
                     order: Callable[[int], Sequence[int]] | None = None) -> LoopState:
    """Restore model, optimizer, scheduler, RNG and loop state written by `save_train_state`.

    With `order`, a checkpoint whose epoch order differs from this run's is refused: its data
    position would point into another order and batches would repeat or be skipped."""
    folder = Path(folder)
    state, meta = read_loop_state(folder)
    if meta.get("engine") != engine.kind:
        raise CheckpointError(f"checkpoint was written by the {meta.get('engine')} engine, this run uses {engine.kind}")
    if int(meta.get("world", world)) != world:
        raise CheckpointError(f"checkpoint was written by {meta.get('world')} workers, this run has {world}: the data position would differ")
    if order is not None and meta.get("order_digest") and meta["order_digest"] != order_digest(order(state.epoch)):
        raise CheckpointError(
            f"the data order of epoch {state.epoch} differs from the checkpoint's (changed pairs, train.seed, "
            "train.negative_ratio, train.pairs_per_image or train.global_positive_repeat?): resuming would repeat "
            "or skip batches; restore those settings, train to another --out, or start over with train.resume=fresh"
        )
    if isinstance(engine, DeepSpeedEngine):
        engine.load(str(folder))
    else:
        load_trainable_state(engine.module, torch.load(folder / TRAINABLE, map_location="cpu", weights_only=False))
        engine.load_state_dict(torch.load(folder / OPTIM, map_location="cpu", weights_only=False))
    rng = folder / f"rng_rank{rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))
    else:
        log.warning("checkpoint has no RNG state for rank %d; dropout masks will differ", rank)
    log.info("resumed at step %d (epoch %d, position %d)", state.step, state.epoch, state.position)
    return state
