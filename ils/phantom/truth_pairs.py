"""Instruction-answer pairs made from the phantoms' ground truth (what a perfect ilsgen would write).

    write_truth_run(phantoms: Store, out: Store, split="test", seed=0, source=None) -> int   # number of pairs

For every study of `split` (None: all) in the folder `ils sample` wrote, the truth findings,
masks and anatomy bit map go through the same `ilsgen.pairs.make_pairs` that ilsgen uses, so the
pairs have ilsgen's templates, types and negatives; the run folder (`pairs/part-0.parquet`, its
own copy of the target masks under `truth-masks/`, union masks under `masks/`) is what
`ils eval --data` reads. Scoring a model on it gives its figures "against phantom ground truth".
`source` keeps only the studies of one source (`procedural` or `real_base`, from
`truth/sources.parquet`; a folder without that file holds procedural studies only), e.g. the
exact truth of the studies on real radiographs for `train.extra_data`.
"""

from __future__ import annotations

import numpy as np

from ils.store import Store


def study_sources(ph: Store) -> dict[str, str]:
    """study_id -> source (`procedural` / `real_base`) of a folder `ils sample` wrote."""
    if not ph.exists("truth/sources.parquet"):
        return {}
    return {r["study_id"]: r["source"] for r in ph.read_parquet("truth/sources.parquet").to_pylist()}


def write_truth_run(ph: Store, out: Store, split: str | None = "test", seed: int = 0, source: str | None = None) -> int:
    """Write the truth pairs of one split (and `source`, None: every source) of the phantoms in
    `ph` into the run folder `out`."""
    from ils.config import PairConfig
    from ils.schema import PAIR, conform
    from ilsgen.manifest import read_manifest
    from ilsgen.pairs import make_pairs

    studies = [s for s in read_manifest(ph, "manifest.parquet").to_pylist() if split is None or s.get("split") == split]
    if source is not None:
        sources = study_sources(ph)
        studies = [s for s in studies if sources.get(s["study_id"], "procedural") == source]
    if not studies:  # before anything is written
        raise ValueError(f"no {source + ' ' if source else ''}studies of split {split or 'all'!r} in {ph.root_uri}")
    findings: dict[str, list[dict]] = {}
    for f in ph.read_parquet("truth/findings.parquet").to_pylist():
        findings.setdefault(f["study_id"], []).append(f)
    masks: dict[str, list[dict]] = {}
    for m in ph.read_parquet("truth/masks.parquet").to_pylist():
        masks.setdefault(m["study_id"], []).append(
            dict(m, grounded_locations=list(m.get("grounded_locations") or []), reported_locations=list(m.get("reported_locations") or [])))
    rows: list[dict] = []
    for st in studies:
        sid = st["study_id"]
        ms = masks.get(sid, [])
        arrays = {}
        for m in ms:  # the run folder holds its own copy of the target masks
            arr = ph.read_png(f"truth/{m['mask_uri']}")
            out.write_png(f"truth-{m['mask_uri']}", arr)
            arrays[f"truth-{m['mask_uri']}"] = arr
        ms = [dict(m, mask_uri=f"truth-{m['mask_uri']}") for m in ms]
        bits = ph.read_png(f"truth/anatomy/{sid}.png")
        pairs, new = make_pairs(st, findings.get(sid, []), ms, arrays, bits, PairConfig(seed=seed))
        for path, arr in new.items():
            out.write_png(path, np.asarray(arr, dtype=np.uint8))
        rows += pairs
    out.write_parquet("pairs/part-0.parquet", conform(rows, PAIR))
    return len(rows)
