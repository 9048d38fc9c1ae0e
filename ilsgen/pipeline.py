"""`ils gen`: regenerate an ILS dataset from studies, streaming on Ray Data (or a plain loop).

decode -> structure report -> anatomy -> anomaly map -> detect -> fuse + verify + pairs -> write
(the `stages` layout structures the report first, then decodes: no image moves through the
report pool; anomaly and detect run only where a finding needs a mask, ilsgen.gating)

Stateful stages (report, anatomy, anomaly, detect) run as actor pools sized by
`gen.<stage>.concurrency` with `num_cpus`, `num_gpus`, custom `resources` and `batch_size` from
the config; decode, fuse and write are tasks. Memory stays flat: batches stream through and
only one small status row per study comes back to the driver. Each batch's outputs are
published as shards under one id, status last (ilsgen.run_layout), so a re-run skips finished
studies and redoes an interrupted batch without duplicates.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ils.config import Config, to_yaml
from ils.errors import UserError
from ils.store import Store
from ilsgen import run_layout
from ilsgen.manifest import read_manifest
from ilsgen.progress import StageBars, quiet_ray_data, tick
from ilsgen.steps import AnatomyStep, AnomalyStep, DecodeStep, DetectStep, FuseStep, ReportStep, make_steps

log = logging.getLogger(__name__)


class GenerationFailed(UserError):
    """More studies failed than the error budget allows."""


@dataclass
class RunProgress:
    """What came back to the driver: one small row per study."""

    total: int
    done_before: int
    ok: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, statuses: list[str], stages: list[Any], reasons: list[Any]) -> None:
        for status, stage, reason in zip(statuses, stages, reasons):
            if status == "ok":
                self.ok += 1
            else:
                self.failed += 1
                key = f"{stage}: {str(reason).split(':', 1)[0]}"
                self.reasons[key] = self.reasons.get(key, 0) + 1

    def over_budget(self, budget: float) -> bool:
        """True once failures exceed the budget's share of the whole run (a floor of 5 studies)."""
        return self.failed > max(5.0, budget * self.total)


class WriteStep:
    """Publish one batch's shards; return only the per-study status columns."""

    def __init__(self, cfg: Config, run_uri: str):
        self.run = Store.from_config(cfg.store, run_uri)

    def __call__(self, batch: dict) -> dict:
        run_layout.write_shards(self.run, run_layout.batch_rows(batch))
        tick("write", len(batch["study_id"]))
        out = {k: batch[k] for k in ("study_id", "status")}
        for k in ("stage", "reason"):
            out[k] = np.array([run_layout.text_or_none(v) or "" for v in batch[k]], dtype=object)
        return out


def _anomaly_state(cfg: Config, run: Store, manifest: pa.Table) -> Any:
    """Fit the lite anomaly model once per run on report-normal studies (cached in the run)."""
    if cfg.gen.anomaly.backend != "lite":
        return None
    from ilsgen.anomaly_fit import fit_or_load_anomaly_state

    return fit_or_load_anomaly_state(cfg, run, manifest)


def _todo(manifest: pa.Table, done: set[str], limit: int | None) -> pa.Table:
    if done:
        mask = pc.invert(pc.is_in(manifest.column("study_id"), value_set=pa.array(sorted(done), pa.string())))
        manifest = manifest.filter(mask)
    return manifest.slice(0, limit) if limit else manifest


def _batches(table: pa.Table, size: int) -> Iterator[dict]:
    for start in range(0, table.num_rows, size):
        part = table.slice(start, size)
        yield {name: part.column(name).to_numpy(zero_copy_only=False).astype(object) for name in part.column_names}


def run_plain(cfg: Config, run: Store, todo: pa.Table, anomaly_state: Any, progress: RunProgress) -> None:
    """The same steps in one process, one batch at a time (baseline and debugging)."""
    steps = make_steps(cfg, run.root_uri, anomaly_state) + [("write", WriteStep(cfg, run.root_uri))]
    with StageBars(todo.num_rows, tuple(name for name, _ in steps)):
        for batch in _batches(todo, cfg.gen.report.batch_size):
            for _, step in steps:
                batch = step(batch)
            progress.add(list(batch["status"]), list(batch["stage"]), list(batch["reason"]))
            if progress.over_budget(cfg.gen.max_errored_fraction):
                raise GenerationFailed(_budget_message(cfg, progress))


def _actor_opts(stage) -> dict:
    import ray.data

    opts: dict = {"compute": ray.data.ActorPoolStrategy(size=max(1, stage.concurrency)), "num_cpus": stage.num_cpus}
    if getattr(stage, "num_gpus", 0):
        opts["num_gpus"] = stage.num_gpus
    if getattr(stage, "resources", None):
        opts["resources"] = dict(stage.resources)
    return opts


class ChainStep:
    """Every step in one actor: the `fused` layout (data parallel, no hand-offs between stages)."""

    def __init__(self, cfg: Config, run_uri: str, anomaly_state: Any):
        self.steps = [step for _, step in make_steps(cfg, run_uri, anomaly_state)] + [WriteStep(cfg, run_uri)]

    def __call__(self, batch: dict) -> dict:
        for step in self.steps:
            batch = step(batch)
        return batch


def build_dataset(cfg: Config, run_uri: str, todo: pa.Table, anomaly_state: Any):
    """The Ray Data plan: one block per batch of studies so stages overlap from the start.

    Layout `stages` (the cluster layout): one actor pool per stage, each with its own
    concurrency, CPUs, GPUs and custom resources, so GPU stages land on GPU nodes. Layout
    `fused`: the whole chain in `gen.fused_concurrency` identical actors; on a small CPU-only
    machine this avoids shipping full-size images between seven worker processes.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = 0  # per-study errors are rows; an unexpected block error fails loudly
    quiet_ray_data(ctx)  # one bar per stage from ilsgen.progress instead
    gen = cfg.gen
    bs = max(1, gen.report.batch_size)
    blocks = [todo.slice(i, bs) for i in range(0, todo.num_rows, bs)]
    ds = ray.data.from_arrow(blocks)
    common = {"batch_format": "numpy", "batch_size": bs, "zero_copy_batch": False}
    if gen.layout == "fused":
        return ds.map_batches(ChainStep, **common, fn_constructor_args=(cfg, run_uri, anomaly_state),
                              compute=ray.data.ActorPoolStrategy(size=max(1, gen.fused_concurrency)),
                              num_cpus=gen.fused_num_cpus)
    if gen.layout != "stages":
        raise UserError(f"gen.layout must be 'stages' or 'fused', not {gen.layout!r}")
    args = {"fn_constructor_args": (cfg,)}

    def sized(stage) -> dict:  # each stage's own batch size (GPU stages batch more)
        return {**common, "batch_size": max(1, stage.batch_size)}

    # reports first: no image waits in the report pool (LLM latency), none moves through it; the
    # report actor structures a whole batch at once, so a batch as big as max_in_flight keeps it busy
    from ilsgen.report.llm_client import in_flight

    ds = ds.map_batches(ReportStep, **{**common, "batch_size": max(bs, in_flight(gen.report))}, **args, **_actor_opts(gen.report))
    ds = ds.map_batches(DecodeStep, **sized(gen.decode), **args, **_actor_opts(gen.decode))
    ds = ds.map_batches(AnatomyStep, **sized(gen.anatomy), **args, **_actor_opts(gen.anatomy))
    ds = ds.map_batches(AnomalyStep, **sized(gen.anomaly), fn_constructor_args=(cfg, anomaly_state), **_actor_opts(gen.anomaly))
    ds = ds.map_batches(DetectStep, **sized(gen.detect), **args, **_actor_opts(gen.detect))
    ds = ds.map_batches(FuseStep, **common, fn_constructor_args=(cfg, run_uri), num_cpus=gen.task_num_cpus,
                        compute=ray.data.ActorPoolStrategy(size=max(1, gen.fuse_concurrency)))
    ds = ds.map_batches(WriteStep, **common, fn_constructor_args=(cfg, run_uri), num_cpus=gen.task_num_cpus,
                        compute=ray.data.ActorPoolStrategy(size=1))
    return ds


def run_ray(cfg: Config, run: Store, todo: pa.Table, anomaly_state: Any, progress: RunProgress) -> None:
    from ils.runtime import init_ray

    init_ray(cfg, log_to_driver=False)  # workers' warnings stay in the session's log files
    ds = build_dataset(cfg, run.root_uri, todo, anomaly_state)
    stages = ("report", "decode") if cfg.gen.layout == "stages" else ("decode", "report")
    with StageBars(todo.num_rows, (*stages, "anatomy", "anomaly", "detect", "fuse", "write"), ray=True):
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            progress.add(list(out["status"]), list(out["stage"]), list(out["reason"]))
            if progress.over_budget(cfg.gen.max_errored_fraction):
                raise GenerationFailed(_budget_message(cfg, progress))


def _budget_message(cfg: Config, progress: RunProgress) -> str:
    top = ", ".join(f"{k} x{v}" for k, v in sorted(progress.reasons.items(), key=lambda kv: -kv[1])[:5])
    return (
        f"{progress.failed} of {progress.total} studies failed, over the error budget "
        f"(gen.max_errored_fraction={cfg.gen.max_errored_fraction}); most common: {top}. "
        "Finished studies are kept: fix the input and run again to resume."
    )


class StoreUnavailable(UserError):
    """The store (or another service) stopped answering mid-run; finished batches are kept."""


def run_generation(cfg: Config, input_uri: str, out_uri: str, *, engine: str = "ray", limit: int | None = None) -> dict:
    """Run (or resume) a generation job under the run's lock; returns the run summary."""
    from ilsgen.failures import is_transient
    from ilsgen.run_lock import RunLock

    store = Store.from_config(cfg.store)
    run = store.child(out_uri)
    try:
        with RunLock(run):
            return _run_locked(cfg, store, run, input_uri, engine, limit)
    except UserError:
        raise
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise StoreUnavailable(
            f"the run stopped: a service it needs stopped answering ({type(exc).__name__}: {str(exc)[:300]}). "
            f"Finished batches in {run.root_uri} are kept; run the same command again to resume.") from exc


def _run_locked(cfg: Config, store: Store, run: Store, input_uri: str, engine: str, limit: int | None) -> dict:
    from ilsgen.summary import summarize

    t0 = time.perf_counter()
    manifest = read_manifest(store, input_uri)
    run_layout.clean_orphans(run)
    run_layout.release_transient(run)
    done = run_layout.finished_study_ids(run)
    todo = _todo(manifest, done, limit)
    log.info("run %s: %d studies in manifest, %d finished before, %d to do", run.root_uri, manifest.num_rows, len(done), todo.num_rows)
    run.write_text("config.yaml", to_yaml(cfg))
    run.write_text("run.json", json.dumps({"input": store.uri(input_uri), "studies": manifest.num_rows}, indent=2))
    progress = RunProgress(total=manifest.num_rows, done_before=len(done))
    if todo.num_rows:
        state = _anomaly_state(cfg, run, manifest)
        (run_plain if engine == "plain" else run_ray)(cfg, run, todo, state, progress)
    summary = summarize(run, wall_seconds=time.perf_counter() - t0, engine=engine, resumed=len(done))
    run.write_text("summary.json", json.dumps(summary, indent=2))
    failed = summary["studies"].get("failed", 0)
    if failed > max(5.0, cfg.gen.max_errored_fraction * manifest.num_rows):
        raise GenerationFailed(_budget_message(cfg, RunProgress(manifest.num_rows, len(done), failed=failed)))
    return summary
