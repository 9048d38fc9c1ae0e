"""Fit the `lite` anomaly model once per run on the run's own report-normal studies.

The first `gen.anomaly_fit_studies` studies (in manifest order) whose report structures to no
present finding are decoded, segmented and fitted; the state is saved in the run
(`state/anomaly_lite.npz`) so a resumed run uses the very same model. With too few normal
studies the backend falls back to its unfitted method (see ilsgen.stages.anomaly_lite). What the
anomaly stage uses (ilsgen.stages.anomaly_lite_net: fitted model and/or the network's lesion
probability; method `net` needs no fit) is recorded in the run as `state/anomaly_fit.json`.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from ils.config import Config
from ils.store import Store

log = logging.getLogger(__name__)

STATE = "state/anomaly_lite.npz"
#: What the anomaly stage used instead of a fit (method `net`), as JSON.
FIT_RECORD = "state/anomaly_fit.json"


def _normal_rows(cfg: Config, manifest: pa.Table, want: int) -> list[dict]:
    from ilsgen.report import make_report_backend

    rules_cfg = type(cfg.gen.report)(backend="rules")  # offline parse: no report leaves the machine here
    parser = make_report_backend(rules_cfg)
    out = []
    for row in manifest.select(["study_id", "image_uri", "report"]).to_pylist():
        if not row["report"]:
            continue
        if not any(f["present"] for f in parser.structure(row["study_id"], row["report"])):
            out.append(row)
            if len(out) >= want:
                break
    return out


def fit_or_load_anomaly_state(cfg: Config, run: Store, manifest: pa.Table) -> dict[str, Any] | None:
    """The fitted state (loaded if the run has one); None when nothing could be fitted."""
    if run.is_file(STATE):
        with np.load(io.BytesIO(run.read_bytes(STATE))) as data:
            log.info("anomaly: using the model fitted earlier in this run")
            return {k: data[k] for k in data.files}
    from ils.imageio import decode_image, resize_square
    from ilsgen.stages.registry import make_backend

    model = make_backend("anomaly", cfg.gen.anomaly, cfg.image.size)
    if not getattr(model, "uses_fit", True):  # the network's lesion probability: nothing to fit
        run.write_text(FIT_RECORD, json.dumps(model.describe()))
        log.info("anomaly: lite (net) needs no healthy-appearance fit; recorded in %s", FIT_RECORD)
        return None
    store = Store.from_config(cfg.store)
    rows = _normal_rows(cfg, manifest, cfg.gen.anomaly_fit_studies)
    images = []
    for row in rows:
        try:
            pixels = decode_image(store.read_bytes(row["image_uri"], max_bytes=cfg.image.max_bytes), max_pixels=cfg.image.max_pixels).pixels
            images.append(resize_square(pixels, cfg.image.size))
        except Exception as exc:  # noqa: BLE001 - a bad image is left out of the fit
            log.debug("anomaly fit: skipping %s: %s", row["study_id"], exc)
    if not images:
        if hasattr(model, "describe"):
            run.write_text(FIT_RECORD, json.dumps(model.describe()))
        log.warning("anomaly: no report-normal study to fit the healthy model; using the unfitted method")
        return None
    anatomy = make_backend("anatomy", cfg.gen.anatomy, cfg.image.size).segment(images)
    model.fit(images, anatomy)
    if hasattr(model, "describe"):
        run.write_text(FIT_RECORD, json.dumps(model.describe()))
    state = model.to_state()
    buf = io.BytesIO()
    np.savez_compressed(buf, **state)
    run.write_bytes(STATE, buf.getvalue())
    log.info("anomaly: fitted the healthy model on %d report-normal studies", len(images))
    return state
