"""The ILS vocabulary (SPEC section 1): lesion types, anatomy locations and how they combine.

Every module that names a lesion or a location imports it from here.
"""

from __future__ import annotations

from typing import Iterable, Sequence

#: The seven lesion types, exact strings.
LESIONS: tuple[str, ...] = (
    "cardiomegaly",
    "pneumonia",
    "atelectasis",
    "opacity",
    "consolidation",
    "edema",
    "effusion",
)

#: How a lesion is named in prose ("pleural effusion").
LESION_PROSE: dict[str, str] = {lesion: lesion for lesion in LESIONS} | {"effusion": "pleural effusion"}

#: Lesions that lesion_inference pairs rephrase as "opacity".
INFERABLE_LESIONS: tuple[str, ...] = ("pneumonia", "atelectasis", "edema")

SIDES: tuple[str, ...] = ("right", "left")
ZONE_KINDS: tuple[str, ...] = ("apical zone lung", "upper zone lung", "mid zone lung", "lung base")


def zone_name(side: str, kind: str) -> str:
    """`zone_name("left", "lung base") == "left lung base"`."""
    return f"{side} {kind}"


#: The eight lung zones, right side first, top to bottom.
ZONES: tuple[str, ...] = tuple(zone_name(s, k) for s in SIDES for k in ZONE_KINDS)

#: Every location of the vocabulary (CXAS region names).
LOCATIONS: tuple[str, ...] = ("heart", "lung", "right lung", "left lung") + ZONES

#: Atomic regions, one bit each in an anatomy label map; the others are unions of these.
ATOMIC_REGIONS: tuple[str, ...] = ("heart",) + ZONES

#: Composite regions as unions of atomic ones.
COMPOSITE_REGIONS: dict[str, tuple[str, ...]] = {
    "right lung": tuple(z for z in ZONES if z.startswith("right ")),
    "left lung": tuple(z for z in ZONES if z.startswith("left ")),
    "lung": ZONES,
}


def region_bit(region: str) -> int:
    """Bit mask of an atomic or composite region in an anatomy label map."""
    if region in ATOMIC_REGIONS:
        return 1 << ATOMIC_REGIONS.index(region)
    if region in COMPOSITE_REGIONS:
        bits = 0
        for atom in COMPOSITE_REGIONS[region]:
            bits |= region_bit(atom)
        return bits
    raise ValueError(f"unknown region {region!r}; expected one of {LOCATIONS}")


def side_of(location: str) -> str | None:
    """'left', 'right' or None for locations without a side."""
    for side in SIDES:
        if location.startswith(side + " "):
            return side
    return None


def location_order(location: str) -> int:
    """Stable order of locations: the order of LOCATIONS."""
    return LOCATIONS.index(location)


def canonical_locations(locations: Iterable[str]) -> list[str]:
    """Deduplicate, validate and order locations; collapse full sets into their parents.

    All four zones of one side become "<side> lung"; both lungs become "lung".
    """
    locs = set(locations)
    unknown = locs - set(LOCATIONS)
    if unknown:
        raise ValueError(f"unknown location(s) {sorted(unknown)}")
    for side in SIDES:
        zones = {zone_name(side, k) for k in ZONE_KINDS}
        if zones <= locs:
            locs -= zones
            locs.add(f"{side} lung")
        if f"{side} lung" in locs:
            locs -= zones
    if {"right lung", "left lung"} <= locs:
        locs -= {"right lung", "left lung"}
        locs.add("lung")
    if "lung" in locs:
        locs -= set(ZONES) | {"right lung", "left lung"}
    return sorted(locs, key=location_order)


def join_locations(locations: Sequence[str]) -> str:
    """"A", "A and B", "A, B, and C" (SPEC section 1)."""
    locs = list(locations)
    if not locs:
        raise ValueError("no location to join")
    if len(locs) == 1:
        return locs[0]
    if len(locs) == 2:
        return f"{locs[0]} and {locs[1]}"
    return ", ".join(locs[:-1]) + f", and {locs[-1]}"


def split_locations(text: str) -> list[str]:
    """Inverse of join_locations; raises ValueError on unknown names."""
    text = text.strip().rstrip(".")
    parts: list[str] = []
    for chunk in text.split(", "):
        chunk = chunk.strip()
        if chunk.startswith("and "):
            chunk = chunk[4:]
        parts.extend(p.strip() for p in chunk.split(" and "))
    parts = [p for p in parts if p]
    bad = [p for p in parts if p not in LOCATIONS]
    if bad:
        raise ValueError(f"unknown location(s) {bad} in {text!r}")
    return parts
