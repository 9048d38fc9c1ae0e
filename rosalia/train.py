"""ROSALIA fine-tuning on Ray Train (V2): the Ray edge around the plain-torch `run_loop`.

- `fit(cfg, data_uri, out_uri)` builds a `TorchTrainer` (workers from `cfg.train`), runs it
  with `RunConfig(name=<run name>, storage_path=..., storage_filesystem=...)` so checkpoints
  land in the store (local folder or s3://), keeps the best checkpoints by validation gIoU, and
  exports the best model as an HF-format folder at `out_uri`.
- Every worker (`train_worker`) builds the model with the same seed, reads the pairs from the
  store with `rosalia.data.PairDataset` (not Ray Data: an exact mid-epoch resume needs a
  deterministic, indexable order, which `EpochPlan` gives), wraps it in torch DDP or a DeepSpeed
  ZeRO-2 engine, restores from `ray.train.get_checkpoint()` and reports a checkpoint from every
  rank every `train.checkpoint_every` steps. `train.keep_snapshots=N` (default off) also exports
  the model every N steps to `<out>-snapshots/step_NNNNNNNN` (rank 0), for learning curves that
  score intermediate models (bench/real_transfer.py).
- Resume: run `fit` again with the same output (the run is keyed by it, `rosalia.train_run`) or
  the same `train.name`; Ray Train hands the latest checkpoint to the workers, which restore step,
  epoch, data position, optimizer, scheduler and RNG. `train.resume=fresh` starts over.

CPU: torch DDP and DeepSpeed ZeRO-2 both run over gloo (tests, demo). GPU: NCCL, bf16 autocast
(or DeepSpeed bf16); the `7b` model needs GPUs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ils.config import Config
from ils.errors import UserError
from rosalia.train_run import RunPlan, plan_run, run_name
from rosalia.train_loop import (
    DeepSpeedEngine,
    LoopConfig,
    LoopHooks,
    LoopState,
    TorchEngine,
    mean_giou,
    resolve_precision,
    steps_per_epoch,
    to_device,
    total_steps,
)

log = logging.getLogger(__name__)

#: Test-only fault injection: the worker raises right after reporting the checkpoint at this step.
FAIL_ENV = "ILS_TRAIN_FAIL_AT_STEP"
#: Test/bench-only: a folder where each rank appends the dataset indices of every step (JSONL).
TRACE_ENV = "ILS_TRAIN_TRACE_DIR"


class TrainError(UserError, RuntimeError):
    """Training could not start or finish; the message says why."""


@dataclass
class Components:
    """What a worker trains: built by a factory so tests can swap in a small test double."""

    model: nn.Module
    train_set: Any  # indexable; dataset[i] -> sample
    collate: Callable[[list], Any]
    plan: Any  # .order(epoch) -> dataset indices (1:1 positive:negative)
    val_set: Any = None
    val_collate: Optional[Callable[[list], Any]] = None
    export: Optional[Callable[[nn.Module, str], str]] = None  # (model, uri) -> written uri


# -- the real components --------------------------------------------------------------------


class PlanOrder:
    """`rosalia.data.EpochPlan` as one index order per epoch."""

    def __init__(self, seed: int, presence: Sequence[bool], repeats: Sequence[int] | None = None,
                 negative_ratio: float = 1.0, groups: Sequence[int] | None = None, pairs_per_image: int = 1):
        self.seed, self.presence, self.repeats, self.negative_ratio = seed, list(presence), repeats, negative_ratio
        self.groups, self.pairs_per_image = groups, pairs_per_image
        self._cache: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            from rosalia.data import EpochPlan

            self._cache = {epoch: [int(i) for i in EpochPlan(
                self.seed, epoch, self.presence, self.repeats, self.negative_ratio, self.groups, self.pairs_per_image).order]}
        return self._cache[epoch]


def training_pairs(cfg: Config, run: Any, size: int, mask: int):
    """The train split of `run`, joined with the train split of every `train.extra_data` run; a
    study that an extra run holds is trained on that run's pairs only (e.g. the exact truth of the
    studies on real radiographs, where ilsgen's own masks are weak: docs/training.md)."""
    from ils.store import Store
    from rosalia.data import DataError, PairDataset

    extras, root = [], Store.from_config(cfg.store)
    for uri in cfg.train.extra_data or []:
        extra = Store.from_config(cfg.store, root.uri(uri))  # relative to the store, like --data
        try:
            extras.append(PairDataset.from_run(extra, split="train", image_size=size, mask_size=mask))
        except DataError as exc:
            raise DataError(f"train.extra_data {uri!r}: {exc}") from exc
    taken = {r["study_id"] for e in extras for r in e.rows}
    main = PairDataset.from_run(run, split="train", image_size=size, mask_size=mask, exclude_studies=taken)
    if extras:
        log.info("training pairs: %d from %s, %d from train.extra_data (%d studies taken from the extra runs)",
                 len(main), run.root_uri, sum(len(e) for e in extras), len(taken))
    return PairDataset.concat([main, *extras]) if extras else main


def rosalia_components(cfg: Config, data_uri: str, rank: int = 0, world: int = 1, with_data: bool = True) -> Components:
    """The ROSALIA model (seeded by train.seed) and the pairs of a generated run at `data_uri`."""
    from ils.store import Store
    from rosalia.model import build_model, save_checkpoint

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.train)
    root = Store.from_config(cfg.store)

    def export(module: nn.Module, uri: str) -> str:
        return save_checkpoint(module, uri, store=root)

    if not with_data:
        return Components(model, None, None, None, export=export)
    from rosalia.data import DataError, PairDataset, collate_for

    run = Store.from_config(cfg.store, data_uri)
    size, mask = int(model.spec["image_size"]), int(model.mask_size)
    train_set = training_pairs(cfg, run, size, mask)
    try:
        val_set = PairDataset.from_run(run, split="val", image_size=size, mask_size=mask)
    except DataError as exc:  # a run without a val split trains without validation
        log.warning("no validation pairs (%s): the best checkpoint is the latest", exc)
        val_set = None
    collate = collate_for(model)
    repeats = train_set.repeats(cfg.train.global_positive_repeat)
    groups = train_set.image_index  # pairs of one image may share a SAM pass (train.pairs_per_image)
    if cfg.train.augment:
        train_set = train_set.augmented()  # jittered per pair: nothing to share, the grouping only orders
    if cfg.train.paraphrase_prob > 0:
        from rosalia.paraphrased import ParaphrasedPairs

        train_set = ParaphrasedPairs(train_set, cfg.train.paraphrase_prob)
    plan = PlanOrder(cfg.train.seed, train_set.presence, repeats, cfg.train.negative_ratio, groups, cfg.train.pairs_per_image)
    return Components(model, train_set, collate, plan, val_set, collate, export)


# -- validation -----------------------------------------------------------------------------


def validation_giou(module: nn.Module, dataset: Any, collate: Callable, batch_size: int, device: torch.device, max_batches: int = 0) -> float:
    """Mean IoU over positive validation samples of the teacher-forced masks (logit > 0)."""
    total, n = 0.0, 0
    idx = list(range(len(dataset)))
    for b, start in enumerate(range(0, len(idx), batch_size)):
        if max_batches and b >= max_batches:
            break
        batch = to_device(collate([dataset[i] for i in idx[start : start + batch_size]]), device)
        out = module(batch)
        logits, target = out["mask_logits"].float(), batch["masks"].float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        s, k = mean_giou(logits > 0, target > 0.5, batch["presence"] > 0.5)
        total, n = total + s, n + k
    return total / n if n else 0.0


# -- the worker -----------------------------------------------------------------------------


def _resolve_factory(spec: Any) -> Callable[..., Components]:
    if callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    import importlib

    return getattr(importlib.import_module(module), name)


def _config_from(d: dict) -> Config:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d))  # type: ignore[return-value]


def make_engine(model: nn.Module, cfg: Config, steps: int, world: int, device: torch.device):
    tc = cfg.train
    amp = resolve_precision(tc.precision, device)
    if tc.deepspeed:
        return DeepSpeedEngine(model, tc.lr, tc.warmup_steps, steps, tc.grad_clip, tc.batch_size, tc.zero_stage, bf16=amp is not None)
    return TorchEngine(model, tc.lr, tc.warmup_steps, steps, tc.grad_clip, autocast=amp, ddp=world > 1, device=device)


def cpu_threads(tc) -> int:
    """Intra-op torch threads of one CPU worker: train.torch_threads, else its CPU reservation."""
    return max(1, int(tc.torch_threads or tc.cpus_per_worker))


def train_worker(config: dict) -> None:
    """Ray Train worker loop (every rank): build, restore, train, checkpoint + report."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from rosalia.checkpointing import load_train_state, save_train_state

    cfg = _config_from(config["cfg"])
    if not cfg.train.use_gpu:  # train.torch_threads, else one intra-op thread per reserved CPU
        torch.set_num_threads(cpu_threads(cfg.train))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    comps = _resolve_factory(config["factory"])(cfg, config["data"], rank, world)
    model = comps.model.to(device)
    per_epoch = steps_per_epoch(len(comps.plan.order(0)), cfg.train.batch_size, world)
    steps = total_steps(cfg.train.max_steps, cfg.train.epochs, per_epoch)
    engine = make_engine(model, cfg, steps, world, device)

    state = LoopState()
    ck = ray.train.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as folder:
            state = load_train_state(folder, engine, rank, world, order=comps.plan.order)
    start_step = state.step
    fail_at = int(config.get("fail_at_step") or 0)
    trace_dir = config.get("trace_dir")

    def checkpoint(st: LoopState, metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            save_train_state(folder, engine, st, rank, world, order=comps.plan.order)
            ray.train.report(dict(metrics), checkpoint=Checkpoint.from_directory(folder), checkpoint_dir_name=f"checkpoint_{st.step:08d}")
        if fail_at and start_step < fail_at <= st.step:
            raise RuntimeError(f"{FAIL_ENV}: injected failure after the checkpoint at step {st.step} (test only)")

    def trace(step: int, idx: list[int]) -> None:
        with open(Path(trace_dir) / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "idx": [int(i) for i in idx]}) + "\n")

    snapshot = None
    snaps = config.get("snapshots")
    if snaps and rank == 0 and comps.export is not None:

        def snapshot(step: int) -> None:  # a small exported model, scoreable like the final one
            log.info("snapshot at step %d: %s", step, comps.export(engine.module, f"{snaps}/step_{step:08d}"))

    validate = None
    if comps.val_set is not None and rank == 0:  # Ray scores checkpoints by rank 0's metrics

        def validate() -> float:
            return validation_giou(engine.module, comps.val_set, comps.val_collate or comps.collate, cfg.train.batch_size, device, cfg.train.val_max_batches)

    loop_cfg = LoopConfig(
        per_rank_batch=cfg.train.batch_size,
        total_steps=steps,
        checkpoint_every=cfg.train.checkpoint_every,
        eval_every=cfg.train.eval_every,
        log_every=cfg.train.log_every,
        max_seconds=cfg.train.max_minutes * 60.0,
        snapshot_every=max(0, cfg.train.keep_snapshots),
    )
    hooks = LoopHooks(checkpoint=checkpoint, validate=validate, trace=trace if trace_dir else None, snapshot=snapshot)
    if rank != 0:
        hooks.log = lambda m: None
    from rosalia.train_loop import run_loop

    run_loop(engine, comps.train_set, comps.collate, comps.plan, state, loop_cfg, hooks, rank, world)


# -- the driver -----------------------------------------------------------------------------


def runs_store(cfg: Config):
    """The store folder that holds the Ray Train runs (`train.storage`, default <store>/train-runs)."""
    from ils.store import Store

    store = Store.from_config(cfg.store)
    target = Store.from_config(cfg.store, cfg.train.storage or store.uri("train-runs"))
    target.fs.create_dir(target.root, recursive=True)
    return target


def storage_for(cfg: Config) -> tuple[str, Any]:
    """(storage_path, pyarrow file system) of the Ray Train runs in the store."""
    target = runs_store(cfg)
    return target.root, target.fs


def prepare_run(cfg: Config, data_uri: str, out_uri: Optional[str]) -> RunPlan:
    """Name the run (`train.name`, else keyed by the output) and decide start / resume / restart."""
    from ils.store import Store

    out = Store.from_config(cfg.store).uri(out_uri) if out_uri else None
    return plan_run(runs_store(cfg), run_name(cfg.train.name, out, data_uri), cfg.train.resume)


def snapshots_uri(cfg: Config, out_uri: Optional[str]) -> Optional[str]:
    """Where `train.keep_snapshots` writes its models: `<out>-snapshots/step_NNNNNNNN` (None: off)."""
    from ils.store import Store

    if cfg.train.keep_snapshots <= 0 or not out_uri:
        return None
    return Store.from_config(cfg.store).uri(out_uri).rstrip("/") + "-snapshots"


def build_trainer(cfg: Config, data_uri: str, factory: Any = "rosalia.train:rosalia_components", name: Optional[str] = None,
                  snapshots: Optional[str] = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tc = cfg.train
    if tc.num_workers < 1 or tc.batch_size < 1:
        raise TrainError("train.num_workers and train.batch_size must be >= 1")
    if not tc.negative_ratio > 0:
        raise TrainError(f"train.negative_ratio must be > 0 (negatives per positive), got {tc.negative_ratio}")
    if tc.pairs_per_image < 1:
        raise TrainError(f"train.pairs_per_image must be >= 1, got {tc.pairs_per_image}")
    storage_path, fs = storage_for(cfg)
    loop_config = {
        "cfg": __import__("ils.config", fromlist=["to_dict"]).to_dict(cfg),
        "data": data_uri,
        "factory": factory,
        "fail_at_step": int(os.environ.get(FAIL_ENV, "0") or 0),
        "trace_dir": os.environ.get(TRACE_ENV) or None,
        "snapshots": snapshots,
    }
    resources = {"CPU": float(tc.cpus_per_worker)}
    if tc.use_gpu:
        resources["GPU"] = 1.0
    return TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name or run_name(tc.name, None, data_uri),
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=max(1, tc.num_to_keep), checkpoint_score_attribute="val_giou", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            worker_runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("GLOO_", "TP_", "MASTER_ADDR", "TORCH_EXTENSIONS_DIR", "HF_", "TRANSFORMERS_OFFLINE"))}},
        ),
    )


def best_checkpoint(result) -> tuple[Any, dict]:
    """The checkpoint with the highest validation gIoU (latest on ties, or without validation)."""
    pairs = list(getattr(result, "best_checkpoints", None) or [])
    if not pairs:
        if result.checkpoint is None:
            raise TrainError("the run reported no checkpoint")
        return result.checkpoint, dict(result.metrics or {})
    return max(pairs, key=lambda cm: (float(cm[1].get("val_giou", -1.0)), int(cm[1].get("step", 0))))


def export_checkpoint(cfg: Config, checkpoint, out_uri: str, data_uri: str, factory: Any = "rosalia.train:rosalia_components") -> str:
    """Load a training checkpoint into a fresh model and write it at `out_uri` (HF format)."""
    from rosalia.checkpointing import TRAINABLE, load_trainable_state

    comps = _resolve_factory(factory)(cfg, data_uri, 0, 1, with_data=False)
    if comps.export is None:
        raise TrainError("these components have no export function")
    with checkpoint.as_directory() as folder:
        load_trainable_state(comps.model, torch.load(Path(folder) / TRAINABLE, map_location="cpu", weights_only=False))
    comps.model.eval()
    return comps.export(comps.model, out_uri)


def failure_reason(exc: BaseException) -> str:
    """The first failed worker's (or the controller's) own error: where, type, message; else
    the first line of `exc`."""
    failures = sorted((getattr(exc, "worker_failures", None) or {}).items())
    if getattr(exc, "controller_failure", None) is not None:
        failures = [("controller", exc.controller_failure)]
    for where, err in failures:
        root = getattr(err, "cause", None) or err  # a RayTaskError carries the worker's exception as .cause
        lines = [line for line in str(root).strip().splitlines() if line.strip()]
        prefix = f"rank {where}" if isinstance(where, int) else str(where)
        return f"{prefix}: {type(root).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def fit(cfg: Config, data_uri: str, out_uri: Optional[str], factory: Any = "rosalia.train:rosalia_components", plan: Optional[RunPlan] = None) -> dict:
    """Train (or resume) on Ray Train and export the best model to `out_uri`; returns a summary.

    `plan` (from `prepare_run`) names the run; without one it is prepared here and logged."""
    from ray.train import TrainingFailedError

    from ils.runtime import init_ray

    if plan is None:
        plan = prepare_run(cfg, data_uri, out_uri)
        log.info("%s", plan.describe())
    init_ray(cfg)
    t0 = time.perf_counter()
    snaps = snapshots_uri(cfg, out_uri)
    if snaps:
        log.info("train.keep_snapshots=%d: a model every %d steps in %s", cfg.train.keep_snapshots, cfg.train.keep_snapshots, snaps)
    trainer = build_trainer(cfg, data_uri, factory, name=plan.name, snapshots=snaps)
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise TrainError(f"training failed: {failure_reason(exc)}") from exc
    ck, metrics = best_checkpoint(result)
    summary = {
        "run": plan.name,
        "run_action": plan.action,
        "checkpoint": getattr(ck, "path", None),
        "best_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        "final_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str))},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if snaps:
        summary["snapshots"] = snaps
    if out_uri:
        summary["exported"] = export_checkpoint(cfg, ck, out_uri, data_uri, factory)
    log.info("training done: %s", summary)
    return summary
