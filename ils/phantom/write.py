"""Write phantom studies into a store: manifest, DICOMs, reports and the separate ground truth.

Layout under the output root:
  manifest.parquet            ils.schema.STUDY (image_uri relative to this folder)
  images/<study_id>.dcm       reports/<study_id>.txt
  truth/anatomy/<study_id>.png   uint16 bit maps (ils.vocab.ATOMIC_REGIONS)
  truth/findings.parquet      ils.schema.FINDING (source="truth")
  truth/masks.parquet         ils.schema.MASK (mask_uri relative to truth/)
  truth/masks/<mask_id>.png   0/255
The pipeline never reads truth/.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from ils.config import Config
from ils.phantom.dicom import encode
from ils.phantom.real_sample import make_study
from ils.schema import FINDING, MASK, STUDY, conform
from ils.store import Store

log = logging.getLogger(__name__)
SOURCES = pa.schema([("study_id", pa.string()), ("source", pa.string()), ("base_set", pa.string()), ("base_name", pa.string())])


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class Summary:
    n: int
    normal: int
    splits: dict[str, int]
    lesions: dict[str, int]  # lesion -> number of studies with it present
    masks: int
    monochrome1: int
    out: str
    real_base: int = 0  # studies built on a real radiograph (sample.real_base)

    def lines(self) -> list[str]:
        return [
            f"wrote {self.n} synthetic phantom studies to {self.out}",
            f"  normal: {self.normal} ({self.normal / max(self.n, 1):.0%}); splits: {self.splits}; MONOCHROME1: {self.monochrome1}",
            f"  studies per lesion: {self.lesions}; mask instances: {self.masks}",
        ] + ([f"  on real radiographs (sample.real_base): {self.real_base}; bases in truth/sources.parquet"] if self.real_base else [])


def write_one(store: Store, seed: int, index: int, cfg: Config) -> tuple[dict, list[dict], list[dict], str]:
    """Generate and write one study; returns (study row, finding rows, mask rows, photometric)."""
    s = make_study(seed, index, cfg)  # procedural, or on a real base (sample.real_base)
    image_uri = f"images/{s.study_id}.dcm"
    store.write_bytes(image_uri, encode(s))
    store.write_text(f"reports/{s.study_id}.txt", s.report)
    store.write_bytes(f"truth/anatomy/{s.study_id}.png", png_bytes(s.anatomy))
    by_id = {r["mask_id"]: r for r in s.mask_rows}
    for lesion, masks in s.masks.items():
        for idx, m in enumerate(masks):
            mid = f"s{s.study_id}_{lesion}_{idx}"
            store.write_bytes(f"truth/{by_id[mid]['mask_uri']}", png_bytes(m.astype(np.uint8) * np.uint8(255)))
    row = {"study_id": s.study_id, "subject_id": s.subject_id, "dicom_id": s.dicom_id, "image_uri": image_uri,
           "report": s.report, "split": s.split, "view": "PA"}
    row["_source"] = {"study_id": s.study_id, "source": s.meta.get("source", "procedural"),
                      "base_set": s.meta.get("base_set"), "base_name": s.meta.get("base_name")}
    return row, s.findings, s.mask_rows, s.photometric


def _work(job: tuple[Store, int, int, Config]):
    return write_one(*job)


def write_phantoms(store: Store, n: int, seed: int, cfg: Config | None = None, *, workers: int = 0, progress: bool = True) -> Summary:
    """Write `n` phantom studies (indices 0..n-1) under `store`; `workers` > 1 uses a process pool."""
    cfg = cfg or Config()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    jobs = [(store, seed, i, cfg) for i in range(n)]
    if workers and workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_work, jobs, chunksize=4), total=n, desc="phantoms", disable=not progress))
    else:
        results = [_work(j) for j in tqdm(jobs, desc="phantoms", disable=not progress)]
    studies = [r[0] for r in results]
    sources = [s.pop("_source") for s in studies]
    findings = [f for r in results for f in r[1]]
    masks = [m for r in results for m in r[2]]
    store.write_parquet("truth/findings.parquet", conform(findings, FINDING))
    store.write_parquet("truth/masks.parquet", conform(masks, MASK))
    # which real image each study was built on; always written, so a re-run into an old folder
    # never leaves another sample's sources behind
    store.write_parquet("truth/sources.parquet", pa.Table.from_pylist(sources, schema=SOURCES))
    store.write_parquet("manifest.parquet", conform(studies, STUDY))  # last: its presence means done
    lesions: dict[str, int] = {}
    for sid in {f["study_id"] for f in findings if f["present"]}:
        for les in {f["lesion"] for f in findings if f["present"] and f["study_id"] == sid}:
            lesions[les] = lesions.get(les, 0) + 1
    splits: dict[str, int] = {}
    for s in studies:
        splits[s["split"]] = splits.get(s["split"], 0) + 1
    present_ids = {f["study_id"] for f in findings if f["present"]}
    summary = Summary(n, n - len(present_ids), splits, dict(sorted(lesions.items())), len(masks),
                      sum(r[3] == "MONOCHROME1" for r in results), store.root_uri,
                      sum(r["source"] != "procedural" for r in sources))
    log.info("%s", "; ".join(summary.lines()))
    return summary
