"""The run summary: studies by status, findings, masks and pairs by lesion and type, stage times."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from ils.schema import FINDING, MASK, PAIR, STUDY_STATUS
from ils.store import Store


def _rows(run: Store, table: str, schema, columns: list[str]) -> list[dict[str, Any]]:
    if not run.exists(table):
        return []
    return run.read_parquet(table, schema=schema, columns=columns).to_pylist()


def summarize(run: Store, **extra: Any) -> dict[str, Any]:
    """Aggregate a run's shards into a JSON-able summary."""
    status = _rows(run, "status", STUDY_STATUS, ["study_id", "status", "stage", "reason", "report_source", "stage_seconds",
                                                 "skipped_stages"])
    findings = _rows(run, "findings", FINDING, ["lesion", "present", "certainty"])
    masks = _rows(run, "mask_index", MASK, ["lesion"])
    pairs = _rows(run, "pairs", PAIR, ["type", "lesion", "presence"])

    stage_seconds: dict[str, float] = defaultdict(float)
    for row in status:
        for stage, sec in row["stage_seconds"] or []:
            stage_seconds[stage] += sec
    total_sec = sum(stage_seconds.values()) or 1.0
    failures = Counter(f"{r['stage']}: {str(r['reason']).split(':', 1)[0]}" for r in status if r["status"] != "ok")
    findings_by_lesion: dict[str, dict[str, int]] = defaultdict(lambda: {"present": 0, "absent": 0, "tentative": 0})
    for f in findings:
        findings_by_lesion[f["lesion"]]["present" if f["present"] else "absent"] += 1
        if f["present"] and f["certainty"] == "tentative":
            findings_by_lesion[f["lesion"]]["tentative"] += 1
    pairs_by: dict[str, dict[str, int]] = defaultdict(Counter)  # type: ignore[arg-type]
    for p in pairs:
        pairs_by[p["lesion"]][f"{p['type']}/{'pos' if p['presence'] else 'neg'}"] += 1
    return {
        "run": run.root_uri,
        "studies": dict(Counter(r["status"] for r in status)),
        "failures": dict(failures.most_common()),
        "report_sources": dict(Counter(r["report_source"] or "none" for r in status)),
        "findings": {k: dict(v) for k, v in sorted(findings_by_lesion.items())},
        "masks": dict(sorted(Counter(m["lesion"] for m in masks).items())),
        "pairs_total": len(pairs),
        "pairs_by_type": dict(Counter(f"{p['type']}/{'pos' if p['presence'] else 'neg'}" for p in pairs)),
        "pairs_by_lesion": {k: dict(v) for k, v in sorted(pairs_by.items())},
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_seconds.items())},
        "stage_share": {k: round(v / total_sec, 4) for k, v in sorted(stage_seconds.items())},
        "skipped_stages": dict(sorted(Counter(s for r in status for s in r.get("skipped_stages") or []).items())),
        **extra,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary for the terminal."""
    lines = [f"run: {summary['run']}"]
    studies = summary["studies"]
    lines.append("studies: " + ", ".join(f"{k} {v}" for k, v in sorted(studies.items())) + (f" (resumed past {summary['resumed']})" if summary.get("resumed") else ""))
    for reason, n in list(summary["failures"].items())[:8]:
        lines.append(f"  failed x{n}: {reason}")
    lines.append("report sources: " + ", ".join(f"{k} {v}" for k, v in summary["report_sources"].items()))
    lines.append(f"{'lesion':<14}{'found':>7}{'negated':>9}{'masks':>7}{'pairs+':>8}{'pairs-':>8}")
    for lesion in sorted(set(summary["findings"]) | set(summary["masks"]) | set(summary["pairs_by_lesion"])):
        f = summary["findings"].get(lesion, {})
        p = summary["pairs_by_lesion"].get(lesion, {})
        pos = sum(v for k, v in p.items() if k.endswith("/pos"))
        neg = sum(v for k, v in p.items() if k.endswith("/neg"))
        lines.append(f"{lesion:<14}{f.get('present', 0):>7}{f.get('absent', 0):>9}{summary['masks'].get(lesion, 0):>7}{pos:>8}{neg:>8}")
    lines.append(f"pairs: {summary['pairs_total']} (" + ", ".join(f"{k} {v}" for k, v in sorted(summary["pairs_by_type"].items())) + ")")
    skipped = summary.get("skipped_stages") or {}
    lines.append(f"{'stage':<14}{'seconds':>9}{'share':>8}{'skipped':>9}   (skipped: no finding needs a mask)")
    for stage, sec in summary["stage_seconds"].items():
        lines.append(f"{stage:<14}{sec:>9.1f}{100 * summary['stage_share'].get(stage, 0):>7.1f}%{skipped.get(stage, 0):>9}")
    if "wall_seconds" in summary:
        lines.append(f"wall time: {summary['wall_seconds']:.1f} s ({summary.get('engine', '')})")
    return "\n".join(lines)
