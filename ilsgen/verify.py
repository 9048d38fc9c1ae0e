"""Location verification: where a mask really lies (grounded) versus where the report put it.

    zone_masks(bits) -> dict[zone, bool (S,S)]
    region_of(bits, locations) -> bool (S,S)              # union; empty locations -> whole lung
    grounded_locations(mask, bits, min_frac=0.15, lesion=None) -> list[str]  (canonical)
    locations_agree(reported, grounded) -> bool
    occupied_zones(bits, findings, mask_arrays, min_pixels) -> set[str]
    lesion_free_locations(bits, findings, mask_arrays) -> list[str]

A zone counts as grounded when it holds at least `min_frac` of the mask's pixels (inside the
lungs); the zones are then canonicalised (`ils.vocab.canonical_locations`: all four zones of a
side -> "<side> lung", both lungs -> "lung"). Cardiomegaly is grounded in "heart".

Agreement ("grounded and reported fully agree", SPEC section 2): both sides expanded to atomic
zones, every grounded zone lies inside the reported region, and every reported location
contains at least one grounded zone. An unlocalised report ([]) never agrees (no global pair).

Lesion-free regions (for negatives) are conservative: a zone is occupied when any mask touches
it (>= `min_pixels`) or any present finding names it (an unlocalised finding occupies its whole
lung, or both lungs); occupied zones' vertical neighbours on the same side are occupied too.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ils.vocab import COMPOSITE_REGIONS, LOCATIONS, SIDES, ZONE_KINDS, ZONES, canonical_locations, region_bit, zone_name


def expand(locations: Iterable[str]) -> set[str]:
    """Atomic regions (zones, heart) covered by a list of locations."""
    out: set[str] = set()
    for loc in locations:
        if loc in COMPOSITE_REGIONS:
            out.update(COMPOSITE_REGIONS[loc])
        elif loc in LOCATIONS:
            out.add(loc)
        else:
            raise ValueError(f"unknown location {loc!r}")
    return out


def region_of(bits: np.ndarray, locations: Sequence[str]) -> np.ndarray:
    """Boolean mask of the union of locations; [] means the whole lung."""
    code = 0
    for loc in locations or ["lung"]:
        code |= region_bit(loc)
    return (np.asarray(bits).astype(np.uint16) & np.uint16(code)) != 0


def zone_masks(bits: np.ndarray) -> dict[str, np.ndarray]:
    b = np.asarray(bits).astype(np.uint16)
    return {z: (b & np.uint16(region_bit(z))) != 0 for z in ZONES}


def grounded_locations(mask: np.ndarray, bits: np.ndarray, min_frac: float = 0.15, lesion: str | None = None) -> list[str]:
    """Canonical locations holding at least `min_frac` of the mask (inside the lung zones)."""
    m = np.asarray(mask) > 0
    if lesion == "cardiomegaly":
        return ["heart"] if m.any() else []
    zones = zone_masks(bits)
    counts = {z: int((m & zm).sum()) for z, zm in zones.items()}
    total = sum(counts.values())
    if total == 0:
        return []
    chosen = [z for z, c in counts.items() if c >= min_frac * total]
    if not chosen:  # a mask spread thinly: take its largest zone
        chosen = [max(counts, key=counts.get)]
    return canonical_locations(chosen)


def locations_agree(reported: Sequence[str], grounded: Sequence[str]) -> bool:
    """True when the grounded zones fill out and stay within the reported locations."""
    if not reported or not grounded:
        return False
    rep = expand(reported)
    gro = expand(grounded)
    if not gro <= rep:
        return False
    return all(expand([loc]) & gro for loc in reported)


def _neighbours(zone: str) -> list[str]:
    side = zone.split(" ", 1)[0]
    kinds = list(ZONE_KINDS)
    i = kinds.index(zone[len(side) + 1 :])
    return [zone_name(side, kinds[j]) for j in (i - 1, i + 1) if 0 <= j < len(kinds)]


def occupied_zones(
    bits: np.ndarray,
    findings: Iterable[Mapping[str, Any]],
    mask_arrays: Iterable[np.ndarray] = (),
    min_pixels: int = 1,
    neighbours: bool = True,
) -> set[str]:
    """Lung zones that a present finding names or a mask touches (plus neighbours)."""
    occ: set[str] = set()
    for f in findings:
        if not f.get("present") or f.get("lesion") == "cardiomegaly":
            continue
        locs = [l for l in (f.get("locations") or []) if l != "heart"]
        occ |= expand(locs) if locs else set(ZONES)
    zones = zone_masks(bits)
    for arr in mask_arrays:
        m = np.asarray(arr) > 0
        for z, zm in zones.items():
            if int((m & zm).sum()) >= min_pixels:
                occ.add(z)
    occ &= set(ZONES)
    if neighbours:
        occ |= {n for z in occ for n in _neighbours(z)}
    return occ


def lesion_free_locations(
    bits: np.ndarray,
    findings: Iterable[Mapping[str, Any]],
    mask_arrays: Iterable[np.ndarray] = (),
    min_pixels: int = 1,
    neighbours: bool = True,
) -> list[str]:
    """Zones, whole lungs and "lung" that nothing present touches, in vocabulary order."""
    occ = occupied_zones(bits, findings, mask_arrays, min_pixels, neighbours)
    zones = zone_masks(bits)
    free = [z for z in ZONES if z not in occ and zones[z].any()]
    out = list(free)
    for side in SIDES:
        if all(zone_name(side, k) in free for k in ZONE_KINDS):
            out.append(f"{side} lung")
    if set(ZONES) <= set(free):
        out.append("lung")
    return sorted(out, key=LOCATIONS.index)
