"""The label ceiling: ilsgen's own masks scored against the phantom-truth pairs, next to the model.

    ceiling = label_ceiling(truth_uri, gen_uri, split="test")   # None without ilsgen masks
    doc = compare(report, ceiling)                               # model vs truth | labels vs truth

A model trained on ilsgen's labels cannot beat a perfect imitation of them; when the model is
close to the ceiling the labels limit, when it is far below the model does. Works for any sample
folder with `truth/` turned into pairs by `ils truth-pairs` (the layout every source writes).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

METRICS = ("gIoU", "cIoU", "N-Acc")
#: below the ceiling by more than this (gIoU): "the model limits"
GAP = 0.05


def label_ceiling(truth_uri: Any, gen_uri: Any, split: Optional[str] = None) -> Optional[dict[str, Any]]:
    """How well ilsgen's masks answer the truth pairs (the pairs of `split`, or all).

    For every truth pair the "prediction" is the union of the ilsgen masks of the pair's lesion
    in that study whose grounded locations meet the pair's locations (every mask of the lesion
    for a global pair); positives give gIoU/cIoU, negatives N-Acc (no such mask = correct).
    A mask of another size than the truth is resized to it (nearest). None when the ilsgen run
    has no masks (`mask_index`)."""
    import numpy as np
    from PIL import Image

    from ils.store import Store
    from ilsgen.verify import expand
    from rosalia.metrics import inter_union, summarize

    truth, gen = (u if isinstance(u, Store) else Store(u) for u in (truth_uri, gen_uri))
    if not gen.exists("mask_index"):
        return None
    pairs = [p for p in truth.read_parquet("pairs").to_pylist() if not split or split == "all" or p.get("split") in (None, split)]
    by_study: dict[tuple[str, str], list[dict]] = {}
    for m in gen.read_parquet("mask_index").to_pylist():
        by_study.setdefault((m["study_id"], m["lesion"]), []).append(m)
    cache: dict[tuple[str, tuple[int, int]], np.ndarray] = {}  # a mask answers several pairs
    resized = 0

    def gen_mask(uri: str, shape: tuple[int, int]) -> np.ndarray:
        nonlocal resized
        if (uri, shape) not in cache:
            arr = gen.read_png(uri)
            if arr.shape != shape:
                resized += 1
                arr = np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.Resampling.NEAREST))
            cache[(uri, shape)] = arr > 127
        return cache[(uri, shape)]

    records = []
    for p in pairs:
        want = None if p["type"] == "global" else expand(p["locations"] or ["lung"])
        chosen = [m for m in by_study.get((p["study_id"], p["lesion"]), [])
                  if want is None or want & expand(m["grounded_locations"] or [])]
        rec = {"presence": bool(p["presence"] and p["seg"]), "target": p["target"], "type": p["type"]}
        if rec["presence"]:
            target = truth.read_png(p["seg_mask_path"]) > 127
            pred = np.zeros_like(target)
            for m in chosen:
                pred |= gen_mask(m["mask_uri"], target.shape)
            rec["labels_inter"], rec["labels_union"] = inter_union(pred, target)
        else:
            rec["labels_empty"] = not chosen
        records.append(rec)
    out: dict[str, Any] = {"overall": summarize(records, "labels"), "per_lesion": {}, "n_pairs": len(records),
                           "split": split or "all", "masks_resized": resized}
    for lesion in sorted({r["target"] for r in records}):
        out["per_lesion"][lesion] = summarize([r for r in records if r["target"] == lesion], "labels")
    return out


def compare(report: dict[str, Any], ceiling: Optional[dict[str, Any]], dataset: str = "") -> dict[str, Any]:
    """Per dataset: model vs truth (gated) next to ilsgen labels vs truth, overall and per lesion,
    and which of the two limits."""
    def pick(b: dict) -> dict:
        return {k: (None if b.get(k) is None else round(float(b[k]), 4)) for k in METRICS}

    model = pick(report["overall"]["gated"])
    out: dict[str, Any] = {"dataset": dataset, "model_vs_truth": model, "labels_vs_truth": None, "limits": "unknown (no ilsgen masks)"}
    if not ceiling:
        return out
    labels = pick(ceiling["overall"])
    out["labels_vs_truth"] = labels
    if model["gIoU"] is not None and labels["gIoU"] is not None:
        gap = labels["gIoU"] - model["gIoU"]
        out["gIoU_gap"] = round(gap, 4)
        out["limits"] = (f"the model (gIoU {gap:.2f} below its labels)" if gap > GAP
                         else f"the labels (the model is {-gap:.2f} gIoU above them: it partly sees past their errors)" if gap < -GAP
                         else "the labels (the model is within 0.05 gIoU of a perfect imitation of them)")
    out["per_lesion"] = {k: {"model_vs_truth": pick(report.get("per_lesion", {}).get(k, {}).get("gated", {})),
                             "labels_vs_truth": pick(v)} for k, v in ceiling.get("per_lesion", {}).items()}
    return out


def compare_lines(doc: Optional[dict[str, Any]]) -> list[str]:
    """A small table: model vs truth | ilsgen labels vs truth (values in %)."""
    if not doc or not doc.get("labels_vs_truth"):
        return []
    f = lambda v: "  -  " if v is None else f"{100 * v:5.1f}"
    lines = [f"{'against phantom truth':<24}" + "".join(f"{k:>7}" for k in METRICS)]
    for name, key in (("model (gated)", "model_vs_truth"), ("ilsgen labels (ceiling)", "labels_vs_truth")):
        lines.append(f"{name:<24}" + "".join(f"{f(doc[key][k]):>7}" for k in METRICS))
    lines.append(f"limits: {doc['limits']}")
    return lines
