"""The layout of one generation run in the store, and its exactly-once shard bookkeeping.

    RUN/config.yaml                  the config the run was started with
    RUN/state/                       fitted stage state (e.g. the lite anomaly model)
    RUN/pairs/part-<id>.parquet      ils.schema.PAIR
    RUN/findings/part-<id>.parquet   ils.schema.FINDING
    RUN/mask_index/part-<id>.parquet ils.schema.MASK (the PNGs under RUN/masks/<study>/...)
    RUN/status/part-<id>.parquet     ils.schema.STUDY_STATUS, one row per study
    RUN/summary.json                 the run summary

One batch of studies writes its four shards under one id; the status shard is published last.
A study is finished when a status row names it. On a re-run, shards without their status shard
(a run killed between writes) are deleted first and their studies processed again, so nothing
is written twice and nothing is lost. The shard id is a hash of the batch's study ids, so a batch
that runs twice (a Ray task retried after its worker died) overwrites its own shards. Studies
that failed for a transient reason (`transient` in the status row) are released at the start
of the next run and done again; permanent failures stay finished.
"""

from __future__ import annotations

import json
import logging
import hashlib
from typing import Any

import pyarrow as pa

from ils.schema import FINDING, MASK, PAIR, STUDY_STATUS, conform
from ils.store import Store

log = logging.getLogger(__name__)

TABLES: dict[str, pa.Schema] = {"pairs": PAIR, "findings": FINDING, "mask_index": MASK, "status": STUDY_STATUS}
STATUS_DIR = "status"


def _part_id(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return name[len("part-") : -len(".parquet")] if name.startswith("part-") else name


def shard_ids(run: Store, table: str) -> set[str]:
    return {_part_id(p) for p in run.list(table, recursive=False, suffix=".parquet")}


def clean_orphans(run: Store) -> int:
    """Delete data shards whose status shard was never published; returns how many."""
    finished = shard_ids(run, STATUS_DIR)
    removed = 0
    for table in ("pairs", "findings", "mask_index"):
        for rel in run.list(table, recursive=False, suffix=".parquet"):
            if _part_id(rel) not in finished:
                run.delete(rel)
                removed += 1
    if removed:
        log.info("removed %d shard(s) of an interrupted batch; their studies run again", removed)
    return removed


def finished_study_ids(run: Store) -> set[str]:
    """Studies that already have a status row in this run."""
    if not run.exists(STATUS_DIR):
        return set()
    table = run.read_parquet(STATUS_DIR, columns=["study_id"])
    return set(table.column("study_id").to_pylist()) if table.num_rows else set()


def part_id(study_ids: list[str]) -> str:
    """A batch's shard id from its studies: a batch done again (a retried Ray task, a worker
    killed after publishing) overwrites its own shards instead of adding copies."""
    return hashlib.sha1("\n".join(sorted(study_ids)).encode()).hexdigest()[:32]


def release_transient(run: Store) -> int:
    """Drop the status rows of studies that failed for a transient reason (ilsgen.failures), so
    the next run does them again; returns how many. Each status shard is rewritten whole (one
    atomic publish); failed studies have no rows in the other tables."""
    released = 0
    for rel in run.list(STATUS_DIR, recursive=False, suffix=".parquet"):
        table = run.read_parquet(rel, schema=STUDY_STATUS)
        flags = table.column("transient").to_pylist()
        n = sum(1 for f in flags if f)
        if n:
            keep = pa.array([not f for f in flags])
            run.write_parquet(rel, table.filter(keep))
            released += n
    if released:
        log.info("%d studies failed for a transient reason before; they run again", released)
    return released


def write_shards(run: Store, rows: dict[str, list[dict[str, Any]]]) -> str:
    """Publish one batch's tables under the batch's id, the status table last."""
    part = part_id([r["study_id"] for r in rows.get("status", [])])
    for table in ("pairs", "findings", "mask_index", "status"):
        data = conform(rows.get(table, []), TABLES[table])
        run.write_parquet(f"{table}/part-{part}.parquet", data)
    return part


def text_or_none(value: Any) -> str | None:
    """A batch cell as text; None, NaN (how Ray hands back missing strings) and '' become None."""
    if value is None or (isinstance(value, float) and value != value) or (hasattr(value, "dtype") and value != value):
        return None
    text = str(value)
    return text or None


def batch_rows(batch: dict) -> dict[str, list[dict[str, Any]]]:
    """The four tables' rows of one finished pipeline batch (see ilsgen.steps)."""
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for i, study_id in enumerate(batch["study_id"]):
        ok = batch["status"][i] == "ok"
        findings = json.loads(batch["findings"][i]) if ok else []
        masks = json.loads(batch["masks"][i]) if ok else []
        pairs = json.loads(batch["pairs"][i]) if ok else []
        out["findings"].extend(findings)
        out["mask_index"].extend(masks)
        out["pairs"].extend(pairs)
        out["status"].append(
            {
                "study_id": str(study_id),
                "status": str(batch["status"][i]),
                "stage": text_or_none(batch["stage"][i]),
                "reason": text_or_none(batch["reason"][i]),
                "n_findings": len(findings),
                "n_masks": len(masks),
                "n_pairs": len(pairs),
                "report_source": text_or_none(batch["report_source"][i]) if "report_source" in batch else None,
                "stage_seconds": list(json.loads(batch["timings"][i]).items()),
                "skipped_stages": json.loads(batch["skipped"][i]) if "skipped" in batch else [],
                "transient": bool(batch["transient"][i]) if "transient" in batch and not ok else None,
            }
        )
    return out
