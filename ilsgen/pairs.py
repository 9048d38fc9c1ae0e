"""Pair generation (SPEC section 1 table, section 2 stage 5): study + findings + masks -> PAIR rows.

    make_pairs(study, findings, masks, mask_arrays, bits, cfg: PairConfig)
        -> (pair_rows: list[dict] (ils.schema.PAIR), new_arrays: dict[uri, uint8 (S,S) 0/255])

`masks` are MASK rows from `ilsgen.fuse.fuse_study` (with grounded locations), `mask_arrays` maps
their mask_uri to the 0/255 array, `bits` is the study's anatomy bit map. `new_arrays` holds the
union masks that global pairs point at and that do not exist yet; the caller writes them.

Positives
- basic: one per localised mask (grounded locations non-empty and overlapping the reported
  ones, or nothing reported); instruction location = grounded location; answer `[SEG]`.
- global: one per lesion whose every present finding produced masks whose grounded locations
  (the union over the finding's instances, e.g. one per side) and reported locations agree (`ilsgen.verify.locations_agree`; cardiomegaly always agrees);
  the target is the union of those masks (its own file when there are several:
  `masks/{study}/s{study}_{lesion}_all.png`).
- lesion_inference: one per localised pneumonia/atelectasis/edema mask, asked as "opacity",
  answered with the finding's certainty phrase.
Negatives (about cfg.negatives_per_study, drawn without replacement by a generator seeded from
the study id and cfg.seed, round-robin over the three types):
- global: lesions with no present finding of the lesion or of a lesion that could be read as it
  (opacity vs any lung lesion; pneumonia vs consolidation); negated lesions first.
- basic / lesion_inference: lesion-free locations (`ilsgen.verify.lesion_free_locations`, which
  keeps a one-zone margin around every present finding and mask); basic also asks
  "cardiomegaly in the heart" when cardiomegaly is not present.
pair_id = `{study}_{sha1(type, target, lesion, locations, presence)[:12]}`, stable across runs.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Mapping, Sequence

import numpy as np

from ils.config import PairConfig
from ils.paraphrase import paraphrases
from ils.templates import answer, instruction
from ils.vocab import INFERABLE_LESIONS, LESIONS, canonical_locations
from ilsgen.verify import expand, lesion_free_locations, locations_agree

#: lesion -> present lesions that forbid saying "there is no <lesion>" anywhere in the study.
CONFLICTS: dict[str, set[str]] = {
    "cardiomegaly": {"cardiomegaly"},
    "opacity": {"opacity", "pneumonia", "atelectasis", "consolidation", "edema", "effusion"},
    "pneumonia": {"pneumonia", "consolidation", "opacity"},
    "consolidation": {"consolidation", "pneumonia", "opacity"},
    "atelectasis": {"atelectasis", "opacity"},
    "edema": {"edema", "opacity"},
    "effusion": {"effusion"},
}


def pair_id(study_id: str, type_: str, target: str, lesion: str, locations: Sequence[str], presence: bool) -> str:
    key = "|".join([study_id, type_, target, lesion, ",".join(locations), str(presence)])
    return f"{study_id}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _base(study: Mapping[str, Any]) -> dict[str, Any]:
    return {k: study.get(k) for k in ("study_id", "subject_id", "dicom_id", "image_uri", "split")}


def _pair(study, type_, target, lesion, locs, presence, text_locs=None, *, inferred=None, certainty=None,
          reported=(), grounded=(), sent_idx=None, mask_ids=(), seg_mask_path=None) -> dict[str, Any]:
    locs = list(locs)
    instr = instruction(type_, target, locs)
    ans = answer(type_, target, presence, list(text_locs if text_locs is not None else locs), inferred=inferred, certainty=certainty)
    row = _base(study)
    pid = pair_id(study["study_id"], type_, target, lesion, locs if type_ != "global" else list(text_locs or []), presence)
    row.update(
        pair_id=pid, paraphrases=paraphrases(type_, target, locs if type_ != "global" else [], key=pid),
        instruction=instr, answer=ans, type=type_, target=target, lesion=lesion,
        locations=list(text_locs if text_locs is not None else locs),
        reported_locations=list(reported), grounded_locations=list(grounded), presence=presence,
        certainty=certainty if presence else None, sent_idx=sent_idx, seg=bool(presence and mask_ids),
        mask_ids=list(mask_ids), seg_mask_path=seg_mask_path if presence else None,
    )
    return row


def _localised(m: Mapping[str, Any]) -> bool:
    g = m.get("grounded_locations") or []
    r = [l for l in (m.get("reported_locations") or []) if l != "heart"]
    if not g:
        return False
    if m["lesion"] == "cardiomegaly" or not r:
        return True
    return bool(expand(g) & expand(r))


def positive_pairs(study, findings, masks, mask_arrays) -> tuple[list[dict], dict[str, np.ndarray]]:
    by_idx = {f.get("finding_idx"): f for f in findings}
    rows: list[dict] = []
    new: dict[str, np.ndarray] = {}
    for m in masks:
        if not _localised(m):
            continue
        f = by_idx.get(m.get("finding_idx"), {})
        g = list(m["grounded_locations"])
        common = dict(reported=m.get("reported_locations") or [], grounded=g, sent_idx=f.get("sent_idx"),
                      mask_ids=[m["mask_id"]], seg_mask_path=m["mask_uri"], certainty=m.get("certainty") or "definite")
        rows.append(_pair(study, "basic", m["lesion"], m["lesion"], g, True, **common))
        if m["lesion"] in INFERABLE_LESIONS:
            rows.append(_pair(study, "lesion_inference", "opacity", m["lesion"], g, True, inferred=m["lesion"], **common))
    sid = study["study_id"]
    for lesion in LESIONS:
        present = [f for f in findings if f.get("lesion") == lesion and f.get("present")]
        lmasks = [m for m in masks if m["lesion"] == lesion]
        if not present or not lmasks:
            continue
        covered = {m.get("finding_idx") for m in lmasks}
        if any(f.get("finding_idx") not in covered for f in present):
            continue
        grounded = canonical_locations([l for m in lmasks for l in m["grounded_locations"]])
        reported = canonical_locations([l for m in lmasks for l in (m.get("reported_locations") or [])])
        # per finding: the union of its instances (one per side) must agree with what it reports
        by_finding: dict[Any, list[Mapping[str, Any]]] = {}
        for m in lmasks:
            by_finding.setdefault(m.get("finding_idx"), []).append(m)
        if lesion != "cardiomegaly" and not all(
            locations_agree(ms[0].get("reported_locations") or [], canonical_locations([l for m in ms for l in m["grounded_locations"]]))
            for ms in by_finding.values()
        ):
            continue
        if len(lmasks) == 1:
            path = lmasks[0]["mask_uri"]
        else:
            path = f"masks/{sid}/s{sid}_{lesion}_all.png"
            union = np.zeros_like(mask_arrays[lmasks[0]["mask_uri"]], dtype=bool)
            for m in lmasks:
                union |= mask_arrays[m["mask_uri"]] > 0
            new[path] = union.astype(np.uint8) * 255
        certs = {m.get("certainty") or "definite" for m in lmasks}
        rows.append(_pair(study, "global", lesion, lesion, [], True, text_locs=[] if lesion == "cardiomegaly" else grounded,
                          certainty="definite" if certs == {"definite"} else "tentative", reported=reported, grounded=grounded,
                          sent_idx=present[0].get("sent_idx"), mask_ids=[m["mask_id"] for m in lmasks], seg_mask_path=path))
    return rows, new


def negative_candidates(study, findings, masks, mask_arrays, bits) -> dict[str, list[dict]]:
    present = {f.get("lesion") for f in findings if f.get("present")}
    negated = {f.get("lesion"): f for f in findings if not f.get("present")}
    out: dict[str, list[dict]] = {"global": [], "basic": [], "lesion_inference": []}
    order = sorted(LESIONS, key=lambda l: (l not in negated, LESIONS.index(l)))
    for lesion in order:
        if CONFLICTS[lesion] & present:
            continue
        sent = negated[lesion].get("sent_idx") if lesion in negated else None
        out["global"].append(_pair(study, "global", lesion, lesion, [], False, text_locs=[], sent_idx=sent))
        if lesion == "cardiomegaly":
            out["basic"].append(_pair(study, "basic", lesion, lesion, ["heart"], False, sent_idx=sent))
    free = lesion_free_locations(bits, findings, [mask_arrays[m["mask_uri"]] for m in masks if m["mask_uri"] in mask_arrays])
    for loc in free:
        for lesion in LESIONS:
            if lesion != "cardiomegaly":
                out["basic"].append(_pair(study, "basic", lesion, lesion, [loc], False))
        out["lesion_inference"].append(_pair(study, "lesion_inference", "opacity", "opacity", [loc], False))
    return out


def _rng(study_id: str, seed: int) -> random.Random:
    return random.Random(int(hashlib.sha1(f"{study_id}|{seed}".encode()).hexdigest()[:16], 16))


def make_pairs(
    study: Mapping[str, Any],
    findings: Sequence[Mapping[str, Any]],
    masks: Sequence[Mapping[str, Any]],
    mask_arrays: Mapping[str, np.ndarray],
    bits: np.ndarray,
    cfg: PairConfig,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """All positive pairs and a deterministic sample of negatives for one study."""
    rows, new = positive_pairs(study, findings, masks, mask_arrays)
    cands = negative_candidates(study, findings, masks, mask_arrays, bits)
    rng = _rng(str(study["study_id"]), cfg.seed)
    pools = {}
    for t, c in cands.items():
        c = list(c)
        if t == "global":  # keep negated lesions first, shuffle the rest
            head = [p for p in c if p["sent_idx"] is not None]
            tail = [p for p in c if p["sent_idx"] is None]
            rng.shuffle(tail)
            c = head + tail
        else:
            rng.shuffle(c)
        pools[t] = c
    chosen: list[dict] = []
    types = ["global", "basic", "lesion_inference"]
    rng.shuffle(types)
    while len(chosen) < cfg.negatives_per_study and any(pools.values()):
        for t in types:
            if pools[t] and len(chosen) < cfg.negatives_per_study:
                chosen.append(pools[t].pop(0))
    seen: set[str] = set()
    out = []
    for r in rows + chosen:
        if r["pair_id"] not in seen:
            seen.add(r["pair_id"])
            out.append(r)
    return out, new
