"""Score a report backend against human MeSH tags of real reports (the IU collection, ilsgen.report.iu).

Report level, per lesion: the parser says "present" when any of its rows for the lesion is present;
the truth is present when a major MeSH term has the lesion's heading. Mapping (documented choice):

  headline, one to one:  Cardiomegaly (and Cardiac Shadow/enlarged, the indexers' term for an
                         "enlarged cardiac silhouette") -> cardiomegaly, Pleural Effusion -> effusion,
                         Pulmonary Atelectasis -> atelectasis, Pulmonary Edema -> edema,
                         Pneumonia -> pneumonia
  secondary:             Opacity, Infiltrate -> opacity; Consolidation, Airspace Disease -> consolidation
  not mapped:            Pulmonary Congestion (not edema on this platform, see lexicon.py), Density
                         (also bones and nodules), Granulomatous Disease, Cicatrix, ...

Hedged rows (certainty "tentative") are counted both ways: `definite` counts only definite rows as
present, `any` counts hedged rows too. The headline is `definite`: MeSH indexers tag what a report
asserts. Measured on the odd files with the rules backend: of the reports where a lesion is only
hedged ("may represent", "differential includes", "cannot exclude"), 11 carry the lesion's tag and
109 do not. A hedge stays in the FINDING row as certainty "tentative" either way.

Side agreement: for reports where both say a headline lesion is present and its MeSH terms carry a
side qualifier (left, right, bilateral; several terms unite), the side of the parser's present
rows (union of their locations' sides; "lung" = both) must be equal; rows without a side disagree.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from ils.vocab import side_of
from ilsgen.report.iu import IUReport, LoadStats

PRIMARY: dict[str, str] = {"Cardiomegaly": "cardiomegaly", "Pleural Effusion": "effusion",
                           "Pulmonary Atelectasis": "atelectasis", "Pulmonary Edema": "edema", "Pneumonia": "pneumonia"}
SECONDARY: dict[str, str] = {"Opacity": "opacity", "Infiltrate": "opacity", "Consolidation": "consolidation",
                             "Airspace Disease": "consolidation"}
HEADLINE_LESIONS: tuple[str, ...] = ("cardiomegaly", "effusion", "atelectasis", "edema", "pneumonia")
SECONDARY_LESIONS: tuple[str, ...] = ("opacity", "consolidation")
MODES: tuple[str, ...] = ("definite", "any")
HEADLINE_MODE = "definite"
_SIDE_WORDS = {"left": {"left"}, "right": {"right"}, "bilateral": {"left", "right"}}


def truth_of(report: IUReport) -> tuple[set[str], dict[str, set[str]]]:
    """(lesions tagged present, lesion -> sides named by its terms' qualifiers)."""
    lesions: set[str] = set()
    sides: dict[str, set[str]] = defaultdict(set)
    for heading, *quals in report.tags:
        lesion = PRIMARY.get(heading) or SECONDARY.get(heading)
        if heading == "Cardiac Shadow" and "enlarged" in (q.lower() for q in quals):
            lesion = "cardiomegaly"
        if lesion is None:
            continue
        lesions.add(lesion)
        for q in quals:
            sides[lesion] |= _SIDE_WORDS.get(q.lower(), set())
    return lesions, dict(sides)


def predicted_of(rows: list[dict[str, Any]], mode: str) -> tuple[set[str], dict[str, set[str]]]:
    """(lesions the rows say present, lesion -> sides of those rows' locations)."""
    lesions: set[str] = set()
    sides: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if not r["present"] or (mode == "definite" and r["certainty"] != "definite"):
            continue
        lesions.add(r["lesion"])
        for loc in r["locations"]:
            s = side_of(loc)
            sides[r["lesion"]] |= {s} if s else ({"left", "right"} if loc == "lung" else set())
    return lesions, dict(sides)


def balanced_subset(reports: list[IUReport], n: int) -> list[IUReport]:
    """The first ceil(n/2) reports with a headline lesion tag and the first floor(n/2) without, in file order."""
    pos = [r for r in reports if truth_of(r)[0] & set(HEADLINE_LESIONS)]
    neg = [r for r in reports if not truth_of(r)[0] & set(HEADLINE_LESIONS)]
    return sorted(pos[: (n + 1) // 2] + neg[: n // 2], key=lambda r: r.number)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Counts and scores; every score is None when neither truth nor parser names the lesion (a small subset)."""
    if not tp + fp + fn:
        return {"tp": 0, "fp": 0, "fn": 0, "precision": None, "recall": None, "f1": None}
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def _side_name(sides: set[str]) -> str:
    return "bilateral" if sides == {"left", "right"} else next(iter(sides)) if sides else "none"


def score(reports: Iterable[IUReport], structure: Callable[[IUReport], list[dict[str, Any]]],
          load_stats: LoadStats | None = None, examples: int = 5) -> dict[str, Any]:
    """Figures of one backend over the reports: per lesion P/R/F1 both ways, macro F1, sides, confusions."""
    counts = {m: {l: Counter() for l in HEADLINE_LESIONS + SECONDARY_LESIONS} for m in MODES}
    side_n = side_ok = side_none = 0
    side_conf: Counter = Counter()
    fp_with: dict[str, Counter] = defaultdict(Counter)  # lesion -> MeSH headings present in its FP reports
    fp_words: dict[str, Counter] = defaultdict(Counter)  # lesion -> words of the rows that made the FP
    ids: dict[tuple[str, str], list[str]] = defaultdict(list)
    n = 0
    for report in reports:
        n += 1
        rows = structure(report)
        truth, truth_sides = truth_of(report)
        for mode in MODES:
            pred, pred_sides = predicted_of(rows, mode)
            for lesion in HEADLINE_LESIONS + SECONDARY_LESIONS:
                key = "tp" if lesion in pred and lesion in truth else "fp" if lesion in pred else "fn" if lesion in truth else None
                if key is None:
                    continue
                counts[mode][lesion][key] += 1
                if mode != HEADLINE_MODE or key == "tp":
                    continue
                if len(ids[(lesion, key)]) < examples:
                    ids[(lesion, key)].append(report.report_id)
                if key == "fp":
                    fp_with[lesion].update({t[0] for t in report.tags})
                    fp_words[lesion].update({(r.get("entity") or "").lower() for r in rows
                                             if r["lesion"] == lesion and r["present"] and r["certainty"] == "definite"})
            if mode != HEADLINE_MODE:
                continue
            for lesion in HEADLINE_LESIONS:
                want = truth_sides.get(lesion)
                if lesion in pred and lesion in truth and want:
                    got = pred_sides.get(lesion, set())
                    side_n += 1
                    side_ok += got == want
                    side_none += not got
                    if got != want:
                        side_conf[f"{lesion}: {_side_name(want)} tagged, {_side_name(got)} parsed"] += 1
    per_mode = {}
    for mode in MODES:
        lesions = {l: _prf(**{k: counts[mode][l][k] for k in ("tp", "fp", "fn")}) for l in HEADLINE_LESIONS}
        secondary = {l: _prf(**{k: counts[mode][l][k] for k in ("tp", "fp", "fn")}) for l in SECONDARY_LESIONS}
        per_mode[mode] = {"lesions": lesions, "macro_f1": _mean(v["f1"] for v in lesions.values()),
                          "macro_over": sum(v["f1"] is not None for v in lesions.values()), "secondary": secondary}
    head = per_mode[HEADLINE_MODE]["lesions"]
    confusions = []
    for lesion in HEADLINE_LESIONS + SECONDARY_LESIONS:
        for key in ("fp", "fn"):
            c = counts[HEADLINE_MODE][lesion][key]
            if not c:
                continue
            item = {"lesion": lesion, "kind": key, "count": c, "report_ids": ids[(lesion, key)]}
            if key == "fp":
                item["tagged_instead"] = dict(Counter({h: v for h, v in fp_with[lesion].items()}).most_common(4))
                item["parsed_words"] = dict(fp_words[lesion].most_common(4))
            confusions.append(item)
    confusions.sort(key=lambda c: -c["count"])
    stats = load_stats.__dict__ if load_stats is not None else {}
    return {
        "reports": n, "split": stats.get("split"), "load": stats, "headline_mode": HEADLINE_MODE,
        "macro_f1": per_mode[HEADLINE_MODE]["macro_f1"], "lesions": head,
        "macro_over": per_mode[HEADLINE_MODE]["macro_over"],  # lesions with a truth or parsed positive
        "min_lesion_f1": min((v["f1"] for v in head.values() if v["f1"] is not None), default=None),
        "side": {"n": side_n, "agree": side_ok, "agreement": round(side_ok / side_n, 4) if side_n else None,
                 "parsed_without_side": side_none, "disagreements": dict(side_conf.most_common(8))},
        "modes": per_mode, "confusions": confusions[:12],
    }


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(res: dict[str, Any]) -> str:
    """The figures as a short text table."""
    lines = [f"IU reports: {res['reports']} ({res['split']} split; "
             f"{res['load'].get('skipped_other_split', 0)} files of the other split skipped unread)",
             f"{'lesion':<14}{'n':>5}{'P':>7}{'R':>7}{'F1':>7}   {'F1 hedged=present':>17}"]
    for group, names in (("lesions", HEADLINE_LESIONS), ("secondary", SECONDARY_LESIONS)):
        if group == "secondary":
            lines.append("secondary (Opacity+Infiltrate, Consolidation+Airspace Disease):")
        for lesion in names:
            d = res["modes"]["definite"][group][lesion]
            a = res["modes"]["any"][group][lesion]
            lines.append(f"{lesion:<14}{d['tp'] + d['fn']:>5}{_f(d['precision']):>7}{_f(d['recall']):>7}{_f(d['f1']):>7}   {_f(a['f1']):>17}")
    side = res["side"]
    agreement = "-" if side["agreement"] is None else f"{side['agreement']:.3f}"
    lines += [f"macro F1 ({res['macro_over']} lesions, hedged=absent): {_f(res['macro_f1'])}   "
              f"hedged=present: {_f(res['modes']['any']['macro_f1'])}",
              f"side agreement: {agreement} (n={side['n']}, parsed without side {side['parsed_without_side']})",
              "costliest confusions:"]
    for c in res["confusions"][:6]:
        extra = f"  words {c.get('parsed_words')}" if c["kind"] == "fp" else ""
        lines.append(f"  {c['lesion']} {c['kind']} x{c['count']}{extra}")
    return "\n".join(lines)
