"""Segmentation and text metrics as the authors compute them (SPEC section 4), grouped."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from ils.templates import parse_answer


def inter_union(pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    p, t = pred.astype(bool), target.astype(bool)
    return int((p & t).sum()), int((p | t).sum())


def text_key(instruction: str, answer: str) -> tuple | None:
    """The structured content compared by text accuracy; None when unparseable."""
    try:
        p = parse_answer(instruction, answer)
    except ValueError:
        return None
    if p.presence is None:
        return None
    return (p.type, p.lesion, tuple(sorted(p.locations)), p.presence, p.inferred)


def text_correct(instruction: str, generated: str, reference: str) -> bool:
    ref = text_key(instruction, reference)
    return ref is not None and text_key(instruction, generated) == ref


def summarize(records: Iterable[dict[str, Any]], prefix: str) -> dict[str, float | int | None]:
    """gIoU/cIoU over positives, N-Acc over negatives for masks `<prefix>_inter/_union/_empty`."""
    rs = list(records)
    pos = [r for r in rs if r["presence"]]
    neg = [r for r in rs if not r["presence"]]
    ious = [r[f"{prefix}_inter"] / r[f"{prefix}_union"] if r[f"{prefix}_union"] else 1.0 for r in pos]
    su = sum(r[f"{prefix}_union"] for r in pos)
    return {
        "n_pos": len(pos),
        "n_neg": len(neg),
        "gIoU": float(np.mean(ious)) if pos else None,
        "cIoU": float(sum(r[f"{prefix}_inter"] for r in pos) / su) if su else None,
        "N-Acc": float(np.mean([r[f"{prefix}_empty"] for r in neg])) if neg else None,
    }


def group_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall, per lesion (the instruction's target) and per instruction type; gated and ungated."""

    def block(rs: list[dict]) -> dict[str, Any]:
        text = [r["text_correct"] for r in rs if r.get("text_correct") is not None]
        return {
            "gated": summarize(rs, "gated"),
            "ungated": summarize(rs, "ungated"),
            "text_accuracy": float(np.mean(text)) if text else None,
            "presence_accuracy": float(np.mean([r["presence_pred"] == r["presence"] for r in rs])) if rs else None,
            "n": len(rs),
        }

    by_lesion: dict[str, list] = defaultdict(list)
    by_type: dict[str, list] = defaultdict(list)
    for r in records:
        by_lesion[r["target"]].append(r)
        by_type[r["type"]].append(r)
    return {
        "overall": block(records),
        "per_lesion": {k: block(v) for k, v in sorted(by_lesion.items())},
        "per_type": {k: block(v) for k, v in sorted(by_type.items())},
    }
