"""The pipeline's steps as batch callables, shared by the Ray Data pipeline and the plain loop.

A batch is a dict of equal-length numpy arrays (Ray Data's "numpy" batch format). Every step
adds its columns and passes the others on. A study that fails in a step keeps its row with
`status="failed"`, the step's name in `stage` and a readable `reason`; later steps skip it, and
the writer records it. A step never raises for one bad study.

The stages layout runs report before decode (no image moves through the report pool); detect
drops the image, the last step that reads it.

Columns: study manifest columns (ils.schema.STUDY) -> + image, status, stage, reason, transient,
timings, skipped (decode) -> + findings, report_source (report) -> + anatomy (anatomy) -> + anomaly (anomaly) ->
+ boxes (detect) -> fuse: findings/masks/pairs as JSON, mask PNGs written, image arrays dropped.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import numpy as np

from ils.config import Config
from ils.schema import STATUS_FAILED, STATUS_OK
from ils.store import Store
from ilsgen.progress import tick

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def batch_len(batch: Batch) -> int:
    return len(batch["study_id"])


def _ok_rows(batch: Batch) -> list[int]:
    return [i for i, s in enumerate(batch["status"]) if s == STATUS_OK]


def _fail(batch: Batch, i: int, stage: str, exc: BaseException) -> None:
    from ilsgen.failures import is_transient

    batch["status"][i] = STATUS_FAILED
    batch["stage"][i] = stage
    if "transient" not in batch:
        batch["transient"] = _objects([False] * batch_len(batch))
    batch["transient"][i] = is_transient(exc)
    # the message of our own errors is safe; others are reduced to their type and message
    batch["reason"][i] = f"{type(exc).__name__}: {str(exc)[:300]}"


def start_status(batch: Batch) -> None:
    """The status columns of a fresh batch (whichever step sees it first); empty reports fail."""
    if "status" in batch:
        return
    n = batch_len(batch)
    batch["status"] = _objects([STATUS_OK] * n)
    batch["stage"] = _objects([None] * n)
    batch["reason"] = _objects([None] * n)
    batch["timings"] = _objects(["{}"] * n)
    batch["skipped"] = _objects(["[]"] * n)
    batch["transient"] = _objects([False] * n)
    for i, report in enumerate(batch["report"]):
        if report is None or not str(report).strip():
            _fail(batch, i, "report", ValueError("empty report"))


def _add_time(batch: Batch, rows: list[int], stage: str, seconds: float) -> None:
    """Share a batch step's time equally among the rows it processed."""
    if not rows:
        return
    per = seconds / len(rows)
    for i in rows:
        t = json.loads(batch["timings"][i])
        t[stage] = t.get(stage, 0.0) + per
        batch["timings"][i] = json.dumps(t)


class Step:
    """Base: run `process` on the rows still ok; isolate failures per study."""

    name = "step"

    def rows(self, batch: Batch) -> list[int]:
        """The rows this step works on: those still ok."""
        return _ok_rows(batch)

    def __call__(self, batch: Batch) -> Batch:
        rows = self.rows(batch)
        t0 = time.perf_counter()
        if rows:
            try:
                self.process(batch, rows)
            except Exception as exc:  # a batch-level failure: retry row by row to isolate it
                log.warning("%s: batch of %d failed (%s); retrying per study", self.name, len(rows), exc)
                for i in rows:
                    try:
                        self.process(batch, [i])
                    except Exception as row_exc:  # noqa: BLE001 - recorded as the study's status
                        _fail(batch, i, self.name, row_exc)
        _add_time(batch, rows, self.name, time.perf_counter() - t0)
        tick(self.name, batch_len(batch))
        return batch

    def process(self, batch: Batch, rows: list[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class DecodeStep(Step):
    """image_uri -> image (S, S) float32 in [0, 1]; starts the status columns unless the report step did."""

    name = "decode"

    def __init__(self, cfg: Config):
        self.store = Store.from_config(cfg.store)
        self.size = cfg.image.size
        self.max_pixels = cfg.image.max_pixels
        self.max_bytes = cfg.image.max_bytes

    def __call__(self, batch: Batch) -> Batch:
        start_status(batch)
        batch["image"] = np.zeros((batch_len(batch), self.size, self.size), np.float32)
        return super().__call__(batch)

    def process(self, batch: Batch, rows: list[int]) -> None:
        from ils.imageio import decode_image, resize_square

        for i in rows:
            try:
                data = self.store.read_bytes(batch["image_uri"][i], max_bytes=self.max_bytes)
                decoded = decode_image(data, name=str(batch["study_id"][i]), max_pixels=self.max_pixels)
                batch["image"][i] = resize_square(decoded.pixels, self.size)
            except Exception as exc:  # noqa: BLE001 - becomes the study's status row
                _fail(batch, i, self.name, exc)


class ReportStep(Step):
    """report text -> findings (JSON list of FINDING rows) and report_source."""

    name = "report"

    def __init__(self, cfg: Config):
        from ilsgen.report import make_report_backend

        self.cfg = cfg
        self.backend = make_report_backend(cfg.gen.report)
        if cfg.gen.report.backend == "rules":  # load the NLP pipeline now, not inside batch 1's timing
            self.backend.structure("warm-up", "FINDINGS: No effusion.")

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        start_status(batch)  # the stages layout structures reports before decoding images
        batch.setdefault("findings", _objects(["[]"] * n))
        batch.setdefault("report_source", _objects([None] * n))
        return super().__call__(batch)

    def process(self, batch: Batch, rows: list[int]) -> None:
        from ilsgen.report.llm_client import in_flight, structure_many

        # up to gen.report.llm.max_in_flight reports at once; a study that fails fails alone
        # (never raised to the batch, so no report is sent twice)
        items = [(str(batch["study_id"][i]), str(batch["report"][i])) for i in rows]
        for i, result in zip(rows, structure_many(self.backend, items, in_flight(self.cfg.gen.report))):
            if isinstance(result, Exception):
                _fail(batch, i, self.name, result)
                continue
            # structure_ex tells where the rows came from (llm | llm_fallback | rules), also
            # for a report without findings; the summary counts fallbacks from it
            batch["findings"][i] = json.dumps(result.rows)
            batch["report_source"][i] = result.source


class _VisionStep(Step):
    stage = ""
    gated = False  # True: only for studies with a finding that needs a lesion mask (ilsgen.gating)

    def __init__(self, cfg: Config, state: Any = None):
        from ilsgen.stages.registry import make_backend

        self.cfg = cfg
        self.gate = self.gated and cfg.gen.gate_mask_stages
        self.backend = make_backend(self.stage, getattr(cfg.gen, self.stage), cfg.image.size)
        if state is not None and hasattr(self.backend, "set_state"):
            self.backend.set_state(state)

    def rows(self, batch: Batch) -> list[int]:
        rows = super().rows(batch)
        if not self.gate:
            return rows
        from ilsgen.gating import needs_mask_json

        needed = [i for i in rows if needs_mask_json(batch["findings"][i])]
        for i in set(rows) - set(needed):
            batch["skipped"][i] = json.dumps(json.loads(batch["skipped"][i]) + [self.name])
        return needed


class AnatomyStep(_VisionStep):
    name = stage = "anatomy"

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        batch["anatomy"] = np.zeros((n, self.cfg.image.size, self.cfg.image.size), np.uint16)
        return super().__call__(batch)

    def process(self, batch: Batch, rows: list[int]) -> None:
        maps = self.backend.segment([batch["image"][i] for i in rows])
        for i, m in zip(rows, maps):
            batch["anatomy"][i] = m


class AnomalyStep(_VisionStep):
    name = stage = "anomaly"
    gated = True

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        # float16 halves the hand-off to detect and fuse (gen.compact_anomaly; maps are in [0, 1])
        dtype = np.float16 if self.cfg.gen.compact_anomaly else np.float32
        batch["anomaly"] = np.zeros((n, self.cfg.image.size, self.cfg.image.size), dtype)
        return super().__call__(batch)

    def process(self, batch: Batch, rows: list[int]) -> None:
        maps = self.backend.anomaly_maps([batch["image"][i] for i in rows], [batch["anatomy"][i] for i in rows])
        for i, m in zip(rows, maps):
            batch["anomaly"][i] = m


class DetectStep(_VisionStep):
    name = stage = "detect"
    gated = True

    drop_image = True  # the last step that needs the image: later hand-offs go without it

    def __call__(self, batch: Batch) -> Batch:
        batch["boxes"] = _objects(["[]"] * batch_len(batch))
        batch = super().__call__(batch)
        if self.drop_image:
            batch.pop("image", None)
        return batch

    def process(self, batch: Batch, rows: list[int]) -> None:
        from dataclasses import asdict

        boxes = self.backend.detect([batch["image"][i] for i in rows], [batch["anomaly"][i].astype(np.float32) for i in rows])
        for i, bs in zip(rows, boxes):
            batch["boxes"][i] = json.dumps([asdict(b) for b in bs])


class FuseStep(Step):
    """Fuse masks, verify locations, make pairs, write mask PNGs; drop the image arrays."""

    name = "fuse"

    def __init__(self, cfg: Config, run_uri: str):
        self.cfg = cfg
        self.run = Store.from_config(cfg.store, run_uri)

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        batch["masks"] = _objects(["[]"] * n)
        batch["pairs"] = _objects(["[]"] * n)
        batch = super().__call__(batch)
        for key in ("image", "anatomy", "anomaly"):
            batch.pop(key, None)
        return batch

    def process(self, batch: Batch, rows: list[int]) -> None:
        from ilsgen.study_outputs import study_outputs

        for i in rows:
            study = {k: batch[k][i] for k in ("study_id", "subject_id", "dicom_id", "image_uri", "split", "view")}
            findings = json.loads(batch["findings"][i])
            boxes = json.loads(batch["boxes"][i])
            masks, pairs, arrays = study_outputs(
                self.cfg, study, findings, batch["anatomy"][i], batch["anomaly"][i].astype(np.float32), boxes
            )
            for rel, array in arrays.items():
                self.run.write_png(rel, array)
            batch["masks"][i] = json.dumps(masks)
            batch["pairs"][i] = json.dumps(pairs)


def make_steps(cfg: Config, run_uri: str, anomaly_state: Any = None) -> list[tuple[str, Callable[[Batch], Batch]]]:
    """The steps in order, constructed for a plain loop (Ray builds its own per actor)."""
    return [
        ("decode", DecodeStep(cfg)),
        ("report", ReportStep(cfg)),
        ("anatomy", AnatomyStep(cfg)),
        ("anomaly", AnomalyStep(cfg, anomaly_state)),
        ("detect", DetectStep(cfg)),
        ("fuse", FuseStep(cfg, run_uri)),
    ]
