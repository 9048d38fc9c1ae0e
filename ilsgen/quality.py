"""Generation quality against phantom ground truth (pure functions, no Ray).

    score_run(pairs, findings, masks, truth_findings, truth_masks, load_pred_mask, load_truth_mask) -> dict

Rows are dicts (PAIR, FINDING, MASK schemas); `load_*_mask(row) -> bool/uint8 array` reads a
mask row's array. Returned figures:
- findings: precision / recall / F1 matching (study, lesion, presence, certainty) and, looser,
  (study, lesion, presence); multiset matching, so duplicates count once each.
- location_accuracy: among present predicted findings matched to a present truth finding of the
  same study and lesion, the fraction whose canonical locations equal the truth's.
- mask_iou: per lesion, the mean IoU of each truth instance with its best one-to-one predicted
  mask of the same study and lesion (greedy by IoU; a missed instance scores 0), plus "mean"
  over all instances and "union" (IoU of per-study union masks, averaged per lesion).
- negatives: fraction of negative pairs whose asked lesion is truly absent at the asked
  location: no truth finding of that lesion (for "opacity" asked by lesion_inference: of any
  opacity-type lesion) is present in the study with a location overlapping the asked one
  (global pairs: anywhere; an unlocalised truth finding covers the whole lung).
Empty inputs give None for undefined ratios, never an exception.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ils.vocab import LESIONS, ZONES, canonical_locations
from ilsgen.verify import expand

Row = Mapping[str, Any]
_OPACITY_TYPES = {"opacity", "pneumonia", "atelectasis", "consolidation", "edema"}


def _ratio(a: float, b: float) -> float | None:
    return float(a) / b if b else None


def _prf(pred: Counter, truth: Counter) -> dict[str, float | None]:
    tp = sum((pred & truth).values())
    p, r = _ratio(tp, sum(pred.values())), _ratio(tp, sum(truth.values()))
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else (0.0 if p is not None and r is not None else None)
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "n_pred": sum(pred.values()), "n_truth": sum(truth.values())}


def finding_scores(findings: Iterable[Row], truth: Iterable[Row]) -> dict[str, Any]:
    findings, truth = list(findings), list(truth)

    def key(f: Row, certainty: bool) -> tuple:
        k = (str(f["study_id"]), f["lesion"], bool(f["present"]))
        return k + ((f.get("certainty") if f["present"] else None,) if certainty else ())

    return {
        "strict": _prf(Counter(key(f, True) for f in findings), Counter(key(f, True) for f in truth)),
        "lesion_presence": _prf(Counter(key(f, False) for f in findings), Counter(key(f, False) for f in truth)),
    }


def location_accuracy(findings: Iterable[Row], truth: Iterable[Row]) -> float | None:
    by: dict[tuple, list[Row]] = defaultdict(list)
    for t in truth:
        if t["present"]:
            by[(str(t["study_id"]), t["lesion"])].append(t)
    hits = total = 0
    for f in findings:
        cands = by.get((str(f["study_id"]), f["lesion"])) if f["present"] else None
        if not cands:
            continue
        total += 1
        locs = set(canonical_locations(f.get("locations") or []))
        hits += any(set(canonical_locations(t.get("locations") or [])) == locs for t in cands)
    return _ratio(hits, total)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_ious(masks: Sequence[Row], truth_masks: Sequence[Row], load_pred: Callable, load_truth: Callable) -> dict[str, Any]:
    """Per-lesion instance IoU (greedy one-to-one) and per-study union IoU."""
    pred_by: dict[tuple, list[Row]] = defaultdict(list)
    truth_by: dict[tuple, list[Row]] = defaultdict(list)
    for m in masks:
        pred_by[(str(m["study_id"]), m["lesion"])].append(m)
    for m in truth_masks:
        truth_by[(str(m["study_id"]), m["lesion"])].append(m)
    inst: dict[str, list[float]] = defaultdict(list)
    union: dict[str, list[float]] = defaultdict(list)
    for key, trows in truth_by.items():
        t_arr = [np.asarray(load_truth(t)) > 0 for t in trows]
        p_arr = [np.asarray(load_pred(p)) > 0 for p in pred_by.get(key, [])]
        pairs = sorted(((iou(t, p), i, j) for i, t in enumerate(t_arr) for j, p in enumerate(p_arr)), reverse=True)
        used_t, used_p, scores = set(), set(), {}
        for v, i, j in pairs:
            if i not in used_t and j not in used_p:
                used_t.add(i), used_p.add(j)
                scores[i] = v
        inst[key[1]].extend(scores.get(i, 0.0) for i in range(len(t_arr)))
        tu = np.logical_or.reduce(t_arr)
        pu = np.logical_or.reduce(p_arr) if p_arr else np.zeros_like(tu)
        union[key[1]].append(iou(tu, pu))
    all_inst = [v for vs in inst.values() for v in vs]
    return {
        "per_lesion": {l: float(np.mean(inst[l])) for l in LESIONS if inst.get(l)},
        "union_per_lesion": {l: float(np.mean(union[l])) for l in LESIONS if union.get(l)},
        "count_per_lesion": {l: len(inst[l]) for l in LESIONS if inst.get(l)},
        "mean": float(np.mean(all_inst)) if all_inst else None,
        "n_pred_unmatched_studies": sum(1 for k in pred_by if k not in truth_by),
    }


def negative_correct(pair: Row, truth_by_study: Mapping[str, Sequence[Row]]) -> bool:
    """Whether a negative pair's asked lesion is truly absent at the asked location."""
    asked = pair.get("target") or pair["lesion"]
    lesions = _OPACITY_TYPES if pair["type"] == "lesion_inference" or asked == "opacity" and pair["type"] != "global" else {asked}
    if pair["type"] == "global" and asked == "opacity":
        lesions = _OPACITY_TYPES
    asked_zones = expand(pair.get("locations") or []) if pair["type"] != "global" else None
    for t in truth_by_study.get(str(pair["study_id"]), []):
        if not t["present"] or t["lesion"] not in lesions:
            continue
        if asked_zones is None:
            return False
        t_locs = t.get("locations") or []
        t_zones = expand(t_locs) if t_locs else set(ZONES) | ({"heart"} if t["lesion"] == "cardiomegaly" else set())
        if t["lesion"] == "cardiomegaly":
            t_zones = {"heart"}
        if t_zones & asked_zones:
            return False
    return True


def score_run(
    pairs: Sequence[Row],
    findings: Sequence[Row],
    masks: Sequence[Row],
    truth_findings: Sequence[Row],
    truth_masks: Sequence[Row],
    load_pred_mask: Callable[[Row], np.ndarray],
    load_truth_mask: Callable[[Row], np.ndarray],
) -> dict[str, Any]:
    """All generation-quality figures of one run (see the module docstring)."""
    truth_by: dict[str, list[Row]] = defaultdict(list)
    for t in truth_findings:
        truth_by[str(t["study_id"])].append(t)
    negs = [p for p in pairs if not p["presence"]]
    ok = [negative_correct(p, truth_by) for p in negs]
    by_type: dict[str, list[bool]] = defaultdict(list)
    for p, v in zip(negs, ok):
        by_type[p["type"]].append(v)
    return {
        "findings": finding_scores(findings, truth_findings),
        "location_accuracy": location_accuracy(findings, truth_findings),
        "mask_iou": mask_ious(masks, truth_masks, load_pred_mask, load_truth_mask),
        "negatives": {
            "n": len(negs),
            "correct_fraction": _ratio(sum(ok), len(negs)),
            "by_type": {t: _ratio(sum(v), len(v)) for t, v in by_type.items()},
        },
        "pairs": dict(Counter(f"{p['type']}/{'pos' if p['presence'] else 'neg'}" for p in pairs)),
    }
