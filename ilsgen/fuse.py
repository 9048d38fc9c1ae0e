"""Mask fusion (SPEC section 2, stage 3): findings + anatomy + anomaly + boxes -> lesion masks.

    fuse_study(study_id, findings, bits, anomaly, boxes, cfg: FuseConfig, image_size=None)
        -> (mask_rows: list[dict] (ils.schema.MASK), arrays: dict[mask_uri, uint8 (S,S) 0/255])

For every present finding (reported present, definite or tentative):
- cardiomegaly: the mask is the heart mask of the anatomy map.
- other lesions: region R = union of the reported locations (unreported: the whole lung). A
  candidate box is kept when it passes
    c1  box area inside R / box area           >= cfg.min_anatomy_overlap
    c2  box.score                              >= cfg.min_confidence (and a detector label, when
                                                  given, names this lesion or an opacity-type one)
    c3  anomaly mass in box & R_s / anomaly mass in R_s where A >= threshold
                                               >= cfg.min_anomaly_fraction, R_s = the side
                                                  (lung) of R holding most of the box
    c4  box area / image area                  >= cfg.min_area_frac
  The mask is the set of pixels with A >= cfg.anomaly_threshold inside the kept boxes and inside
  the lung(s) of R's side(s); holes are filled and components under cfg.min_component_frac of
  the image are dropped. A finding with no surviving pixel gets no mask. A mask spanning both
  lungs is split into one instance per side (`split_sides`; the MIMIC-ILS convention that an
  instance is one connected lesion, which never crosses the mediastinum); both keep the
  finding's finding_idx.
- effusion: as above for the boxes (R limited to the lower two zones, DEPENDENT_ZONES: fluid is
  dependent), but the mask (`effusion_mask`) is a layer grown from the lung base: per column of
  the reported side's lung, the lowest run of anomaly above EFFUSION_THRESHOLD_FACTOR x
  threshold that starts near the base, filled from its top (the meniscus) down to the base;
  stretches must meet a kept box inside R.
Two localised findings reported at different places whose masks overlap (touching lesions
form one anomaly component) split what both claim at the anomaly's saddle
(`separate_neighbours`). Where the study has edema, the other lung lesions' masks give the
edema haze back (`yield_to_haze`). Masks are named `s{study}_{lesion}_{idx}` (idx counts per lesion within the
study) and stored at `masks/{study}/{mask_id}.png` relative to the run root (`mask_uri`). Grounded locations are
filled in by `ilsgen.verify.grounded_locations`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from ils.config import FuseConfig
from ils.vocab import LESIONS, region_bit, side_of
from ilsgen.stages.base import Box
from ilsgen.verify import expand, grounded_locations, region_of

#: Detector labels compatible with a reported lesion (an opacity-type box may be any of these).
_OPACITY_LIKE = {"opacity", "pneumonia", "atelectasis", "consolidation", "edema"}


class FuseError(ValueError):
    """Inputs of one study that do not fit together (shapes, unknown lesions)."""


def mask_id(study_id: str, lesion: str, idx: int) -> str:
    return f"s{study_id}_{lesion}_{idx}"


def mask_uri(study_id: str, mid: str) -> str:
    return f"masks/{study_id}/{mid}.png"


def _label_ok(label: str | None, lesion: str) -> bool:
    if label is None or label == lesion:
        return True
    return label in _OPACITY_LIKE and lesion in _OPACITY_LIKE | {"opacity"}


def lung_of_sides(bits: np.ndarray, locations: Sequence[str]) -> np.ndarray:
    """The lung(s) on the side(s) of the locations; both lungs when a location has no side."""
    sides = {side_of(l) for l in locations or ["lung"]}
    if None in sides:
        return region_of(bits, ["lung"])
    return region_of(bits, [f"{s} lung" for s in sides])


def keep_boxes(boxes: Sequence[Box], region: np.ndarray, anomaly: np.ndarray, lesion: str, cfg: FuseConfig,
               sides: Sequence[np.ndarray] = ()) -> list[Box]:
    """The boxes passing c1-c4 for one finding. With `sides` (each lung's mask), c3 weighs a
    box against the anomaly of its own side of the region only: a finding reported on both
    sides (or without a side) is a lesion on each, and the smaller one must not fail because
    the other side holds more anomaly."""
    h, w = anomaly.shape
    hot = anomaly >= cfg.anomaly_threshold
    parts = [p for p in (region & s for s in sides) if p.any()] or [region]
    hot_mass = [float(anomaly[p & hot].sum()) for p in parts]
    kept = []
    for b in boxes:
        x0, y0 = max(0, int(np.floor(b.x0))), max(0, int(np.floor(b.y0)))
        x1, y1 = min(w, int(np.ceil(b.x1))), min(h, int(np.ceil(b.y1)))
        area = (x1 - x0) * (y1 - y0)
        if area <= 0:
            continue
        inside = region[y0:y1, x0:x1]
        c1 = inside.sum() / area >= cfg.min_anatomy_overlap
        c2 = b.score >= cfg.min_confidence and _label_ok(b.label, lesion)
        k = int(np.argmax([p[y0:y1, x0:x1].sum() for p in parts]))  # the side holding most of the box
        mass = float(anomaly[y0:y1, x0:x1][parts[k][y0:y1, x0:x1]].sum())
        c3 = hot_mass[k] > 0 and mass / hot_mass[k] >= cfg.min_anomaly_fraction
        c4 = area / (h * w) >= cfg.min_area_frac
        if c1 and c2 and c3 and c4:
            kept.append(b)
    return kept


def lesion_mask(region_lung: np.ndarray, anomaly: np.ndarray, kept: Sequence[Box], cfg: FuseConfig) -> np.ndarray:
    """Thresholded anomaly inside the kept boxes and the lung, cleaned."""
    h, w = anomaly.shape
    in_boxes = np.zeros((h, w), bool)
    for b in kept:
        in_boxes[max(0, int(b.y0)) : min(h, int(np.ceil(b.y1))), max(0, int(b.x0)) : min(w, int(np.ceil(b.x1)))] = True
    m = (anomaly >= cfg.anomaly_threshold) & in_boxes & region_lung
    m = ndi.binary_fill_holes(m)
    lab, n = ndi.label(m)
    if n:
        sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
        small = np.flatnonzero(sizes < cfg.min_component_frac * h * w) + 1
        m[np.isin(lab, small)] = False
    return m


#: Effusion threshold as a fraction of cfg.anomaly_threshold (see `effusion_mask`).
EFFUSION_THRESHOLD_FACTOR = 0.8


#: Where an effusion reported only by side ("right effusion", "bilateral effusions") is looked
#: for: the lower two zones of each lung (fluid is dependent on an upright frontal film).
DEPENDENT_ZONES = ["right lung base", "left lung base", "right mid zone lung", "left mid zone lung"]

#: Effusion: the dense run that makes up the layer may start this far (fraction of the image)
#: above a column's lowest lung pixel (the anomaly model is blind right at the base).
EFFUSION_BASE_GAP = 0.08


def effusion_mask(region: np.ndarray, anomaly: np.ndarray, kept: Sequence[Box], cfg: FuseConfig,
                  lung: np.ndarray | None = None) -> np.ndarray:
    """Effusion: a dependent layer under a meniscus, found from the lung base upwards.

    Fluid is homogeneous but fainter where it thins towards the mediastinum and the meniscus,
    so the anomaly is thresholded more tolerantly (EFFUSION_THRESHOLD_FACTOR of
    cfg.anomaly_threshold). In every column of `lung` (the lung of the reported side; default
    `region`) the layer is the lowest run of dense pixels that starts within EFFUSION_BASE_GAP
    of the column's lowest lung pixel (gaps under 1.5% of the image bridged), filled from its
    top (the meniscus) down to the base: fluid lies on the diaphragm, so a dense patch higher
    up, separated from the base by aerated lung, is not fluid. The meniscus is median-smoothed
    along the columns; only stretches that meet a kept box (the evidence) inside the reported
    region are kept, small ones dropped."""
    h, w = anomaly.shape
    lung = region if lung is None else lung
    hot = (anomaly >= EFFUSION_THRESHOLD_FACTOR * cfg.anomaly_threshold) & lung
    in_boxes = np.zeros((h, w), bool)
    for b in kept:
        in_boxes[max(0, int(b.y0)) : min(h, int(np.ceil(b.y1))), max(0, int(b.x0)) : min(w, int(np.ceil(b.x1)))] = True
    cols = np.flatnonzero(hot.any(axis=0))
    if cols.size == 0:
        return np.zeros((h, w), bool)
    gap, base_gap = max(1, int(0.015 * h)), max(2, int(EFFUSION_BASE_GAP * h))
    bridged = ndi.binary_closing(hot, structure=np.ones((2 * gap + 1, 1), bool)) & lung
    bottom = h - 1 - lung[::-1, cols].argmax(axis=0)
    top = np.full(cols.size, -1)
    for k, (c, b) in enumerate(zip(cols, bottom)):
        col = bridged[: b + 1, c][::-1]  # from the base upwards
        near = col[: base_gap + 1]
        if not near.any():
            continue
        first = int(near.argmax())
        cold = np.flatnonzero(~col[first:])
        run = int(cold[0]) if cold.size else col.size - first
        top[k] = b - first - run + 1
    ok = top >= 0
    if not ok.any():
        return np.zeros((h, w), bool)
    sm = ndi.median_filter(top[ok].astype(float), size=max(3, int(0.02 * w)) | 1, mode="nearest")
    m = np.zeros((h, w), bool)
    rows = np.arange(h)[:, None]
    m[:, cols[ok]] = (rows >= sm[None, :]) & lung[:, cols[ok]]
    lab, n = ndi.label(m)
    if n:
        sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
        touch = ndi.maximum(in_boxes & region, lab, index=np.arange(1, n + 1)).astype(bool)
        drop = np.flatnonzero((sizes < cfg.min_component_frac * h * w) | ~touch) + 1
        m[np.isin(lab, drop)] = False
    return m


#: `yield_to_haze`: how far (fraction of the image) a lesion keeps haze pixels around its own
#: part, and the share of its mask that must lie outside the haze for the rule to apply.
HAZE_MARGIN, HAZE_MIN_OWN = 0.005, 0.1


def yield_to_haze(claims: list[tuple[Mapping[str, Any], str, np.ndarray, float]]) -> None:
    """Keep a diffuse edema haze out of the other lung lesions' masks (masks edited in place).

    `claims` holds (finding, lesion, mask, score) per present finding. A localised lesion's
    anomaly component often runs on into a neighbouring perihilar edema haze, so its mask
    swallows part of the edema. Where a study has edema masks, another lung lesion's mask keeps
    its own part (outside the haze) plus the haze pixels within HAZE_MARGIN of it; a mask lying
    almost entirely inside the haze (own part under HAZE_MIN_OWN of it) is left as it is,
    since nothing then tells lesion from haze."""
    haze = [c[2] for c in claims if c[1] == "edema"]
    if not haze:
        return
    e = np.logical_or.reduce(haze)
    r = max(1, int(HAZE_MARGIN * e.shape[0]))
    for _, lesion, m, _ in claims:
        if lesion in ("edema", "cardiomegaly"):
            continue
        own = m & ~e
        if own.sum() < HAZE_MIN_OWN * m.sum():
            continue
        near = ndi.binary_dilation(own, structure=np.ones((3, 3), bool), iterations=r)
        m &= own | (e & near)


#: `separate_neighbours`: a lesion's seed keeps this far (fraction of the image) from the other
#: finding's region, so a lesion reaching over a zone border is still cut at its own edge.
SEED_MARGIN = 0.03


def _inner(region: np.ndarray) -> np.ndarray:
    r = max(1, int(SEED_MARGIN * region.shape[0]))
    return ndi.binary_erosion(region, structure=np.ones((2 * r + 1, 2 * r + 1), bool))


def separate_neighbours(claims: list[tuple[Mapping[str, Any], str, np.ndarray, float]], anomaly: np.ndarray,
                        bits: np.ndarray) -> None:
    """Split what two localised lesions both claim at the anomaly's saddle (masks edited in place).

    Two findings reported at different places (say opacity in the right upper zone and
    consolidation in the right mid zone) that touch on the image form one anomaly component,
    so both masks take all of it. Each keeps the pixels its own reported region holds and the
    other's does not, SEED_MARGIN inside it (the seeds); the pixels both claim go to the seed
    they reach over the higher anomaly (a watershed on the inverted map,
    `scipy.ndimage.watershed_ift`), so the cut runs along the dimmest valley between the two. Findings without a location,
    at the same locations, or without a seed of their own are left as they are."""
    lung = [c for c in claims if c[1] not in ("edema", "cardiomegaly") and c[0].get("locations")]
    level = np.round((1.0 - np.clip(anomaly, 0.0, 1.0)) * 254).astype(np.uint8)
    for i in range(len(lung)):
        for j in range(i + 1, len(lung)):
            (fa, _, a, _), (fb, _, b, _) = lung[i], lung[j]
            both = a & b
            if not both.any():
                continue
            ra, rb = region_of(bits, list(fa["locations"])), region_of(bits, list(fb["locations"]))
            seed_a, seed_b = a & _inner(ra & ~rb), b & _inner(rb & ~ra)
            if not seed_a.any() or not seed_b.any() or (ra == rb).all():
                continue
            markers = np.zeros(a.shape, np.int16)
            markers[~(a | b)] = 3
            markers[seed_a] = 1
            markers[seed_b] = 2
            lab = ndi.watershed_ift(np.where(a | b, level, np.uint8(255)), markers)
            a &= ~(both & (lab == 2))
            b &= ~(both & (lab == 1))


def split_sides(mask: np.ndarray, bits: np.ndarray) -> list[np.ndarray]:
    """One instance per lung side (MIMIC-ILS and the phantom truth: a lesion instance never
    crosses the mediastinum, so a bilateral finding is two instances, right first)."""
    b = np.asarray(bits).astype(np.uint16)
    right = mask & ((b & np.uint16(region_bit("right lung"))) != 0)
    left = mask & ~right
    return [p for p in (right, left) if p.any()]


def _row(study_id: str, finding: Mapping[str, Any], lesion: str, idx: int, mask: np.ndarray, bits: np.ndarray, score: float) -> dict[str, Any]:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    mid = mask_id(study_id, lesion, idx)
    return {
        "study_id": study_id,
        "mask_id": mid,
        "lesion": lesion,
        "instance_idx": idx,
        "finding_idx": finding.get("finding_idx"),
        "mask_uri": mask_uri(study_id, mid),
        "certainty": finding.get("certainty"),
        "reported_locations": list(finding.get("locations") or []),
        "grounded_locations": grounded_locations(mask, bits, lesion=lesion),
        "area_frac": float(mask.mean()),
        "n_components": int(ndi.label(mask)[1]),
        "bbox": [xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h],
        "score": float(score),
    }


def fuse_study(
    study_id: str,
    findings: Sequence[Mapping[str, Any]],
    bits: np.ndarray,
    anomaly: np.ndarray,
    boxes: Sequence[Box],
    cfg: FuseConfig,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """MASK rows and their 0/255 uint8 arrays (keyed by mask_uri) for one study."""
    bits = np.asarray(bits)
    anomaly = np.asarray(anomaly, dtype=np.float32)
    if bits.shape != anomaly.shape or bits.ndim != 2:
        raise FuseError(f"anatomy {bits.shape} and anomaly {anomaly.shape} maps must be the same 2-D shape")
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    counter: Counter[str] = Counter()
    seen: set[tuple[str, tuple[str, ...]]] = set()
    claims: list[tuple[Mapping[str, Any], str, np.ndarray, float]] = []
    lungs = [region_of(bits, [f"{side} lung"]) for side in ("right", "left")]
    for f in findings:
        lesion = f.get("lesion")
        if lesion not in LESIONS:
            raise FuseError(f"finding of unknown lesion {lesion!r}")
        if not f.get("present"):
            continue
        locs = [l for l in (f.get("locations") or []) if l != "heart"]
        key = (lesion, tuple(sorted(expand(locs)))) if lesion != "cardiomegaly" else (lesion, ())
        if key in seen:  # the same lesion reported twice at the same place: one mask
            continue
        seen.add(key)
        if lesion == "cardiomegaly":
            mask = (bits.astype(np.uint16) & np.uint16(region_bit("heart"))) != 0
            score = 1.0
        else:
            region = region_of(bits, locs)
            if lesion == "effusion":  # pleural fluid collects at the base (upright film)
                region &= region_of(bits, DEPENDENT_ZONES)
            kept = keep_boxes(boxes, region, anomaly, lesion, cfg, sides=lungs)
            if not kept:
                continue
            if lesion == "effusion":
                mask = effusion_mask(region, anomaly, kept, cfg, lung_of_sides(bits, locs))
            else:
                mask = lesion_mask(lung_of_sides(bits, locs), anomaly, kept, cfg)
            score = float(np.mean([b.score for b in kept]))
        claims.append((f, lesion, mask, score))
    separate_neighbours(claims, anomaly, bits)
    yield_to_haze(claims)
    for f, lesion, mask, score in claims:
        parts = [mask] if lesion == "cardiomegaly" else split_sides(mask, bits)
        for part in parts:
            if not part.any():
                continue
            idx = counter[lesion]
            counter[lesion] += 1
            row = _row(study_id, f, lesion, idx, part, bits, score)
            rows.append(row)
            arrays[row["mask_uri"]] = part.astype(np.uint8) * 255
    return rows, arrays


__all__ = ["fuse_study", "yield_to_haze", "keep_boxes", "lesion_mask", "effusion_mask", "mask_id", "mask_uri", "FuseError", "expand"]
