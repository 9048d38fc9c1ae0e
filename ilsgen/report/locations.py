"""Radiologists' location words -> the ILS location vocabulary (ils.vocab.LOCATIONS).

Mapping (documented choice; CXAS zones are horizontal bands of each lung):
  upper lobe / upper zone / upper lung             -> {side} upper zone lung
  apex / apical / apices                            -> {side} apical zone lung
  middle lobe / mid lung / mid zone / lingula / hilar / perihilar -> {side} mid zone lung
      (lingula is always left; right middle lobe always right)
  lower lobe / base / basal / basilar / lower lung / costophrenic / retrocardiac / infrahilar
                                                    -> {side} lung base (retrocardiac: left)
  bibasilar / bibasal / both bases                  -> both lung bases
  side words alone ("left effusion", "right lung", "right-sided") -> {side} lung
  bilateral / both lungs / diffuse / widespread     -> lung   ("multifocal" names no side)
  "right greater/larger/worse than left" and alike  -> lung (both sides)
  a zone after "and" takes the side before it ("right middle and lower lobes" -> right)
A zone word without a side means both sides ("at the lung bases", "upper lobes").
"""

from __future__ import annotations

import re

from ils.vocab import canonical_locations, zone_name

_SIDE = r"(?:right|left|bilateral|both|r|l)"
_CMP = r"(?:greater|more|larger|worse|bigger|higher|less|smaller) than"
_SIDES = rf"(?P<sides>{_SIDE}(?:[- ]sided)?(?:\s*(?:and|or|/|,|{_CMP}|>|<)\s*{_SIDE}(?:[- ]sided)?)?)"
#: Words allowed between a side and its zone ("right posterior costophrenic angle").
_BETWEEN = r"(?:(?:posterior|anterior|lateral|medial|inferior|superior|peripheral|central)[\s-]+)?"

#: (regex, zone kind or None, fixed side or None); zone kind None = whole lung.
_ZONE_WORDS: list[tuple[str, str | None, str | None]] = [
    (r"bi-?basilar|bi-?basal|bibasal|bibasilar", "lung base", "both"),
    (r"retro-?cardiac", "lung base", "left"),
    (r"lingula(?:r)?", "mid zone lung", "left"),
    (r"(?:middle lobe|rml)", "mid zone lung", "right"),
    (r"apices|apex|apical|apico-?\w*", "apical zone lung", None),
    (r"upper (?:lobes?|zones?|lungs?|lung zones?|lung fields?)|rul|lul", "upper zone lung", None),
    (r"(?:mid|middle)[- ]?(?:lungs?|zones?|lung zones?|lung fields?)|midlung|(?:peri)?hilar|hila|hilum", "mid zone lung", None),
    (r"lower (?:lobes?|zones?|lungs?|lung zones?|lung fields?|hemithorax)|rll|lll|bases?|basal|basilar|basilar"
     r"|infrahilar|costophrenic(?: angles?)?|cp angles?|lung bases?|cardiophrenic(?: angles?)?|hemidiaphragms?",
     "lung base", None),
]
_ABBR_SIDE = {"rul": "right", "rll": "right", "rml": "right", "lul": "left", "lll": "left"}

_ZONE_RE = re.compile(
    rf"\b(?:{_SIDES}[\s-]+{_BETWEEN})?(?:(?:lung|lobe)\s+)?(?P<zone>{'|'.join(f'(?:{w})' for w, _, _ in _ZONE_WORDS)})\b"
    rf"(?:\s+(?P<post>bilaterally|on the (?:right|left)|on both sides|(?:on the )?(?:right|left) {_CMP} (?:the )?(?:right|left)))?",
    re.I,
)
_LUNG_RE = re.compile(
    rf"\b(?:{_SIDES}[\s-]+(?:lungs?|hemithorax|hemithoraces|pleural|sided|side|effusions?|\w+)\b"
    r"|(?P<both>bilateral(?:ly)?|both lungs|both sides|diffuse(?:ly)?|widespread)"
    r"|(?P<lungs>the lungs)\b)",
    re.I,
)


def _sides(text: str | None) -> set[str]:
    if not text:
        return set()
    t = text.lower()
    found = set()
    for word in re.findall(r"[a-z]+", t):
        if word in ("right", "r"):
            found.add("right")
        elif word in ("left", "l"):
            found.add("left")
        elif word in ("bilateral", "both", "bilaterally"):
            found |= {"right", "left"}
    return found


def _zone_kind(word: str) -> tuple[str, str | None]:
    w = word.lower()
    for pattern, kind, side in _ZONE_WORDS:
        if re.fullmatch(pattern, w, re.I):
            if w in _ABBR_SIDE:
                return kind or "", _ABBR_SIDE[w]
            return kind or "", side
    return "", None


#: "right middle and lower lobes", "left upper and lower lobe": the side carries over "and".
_CARRY = re.compile(r"^\s*(?:and|or|,|/|to)\s*(?:the\s+)?$", re.I)
#: A side comparison after a phrase ("effusions, right larger than left"): both sides.
_COMPARE = re.compile(rf"\b(?:on the )?(?:right|left)(?:[- ]sided)? {_CMP} (?:the )?(?:right|left)\b", re.I)


def find_locations(text: str) -> list[tuple[int, int, list[str]]]:
    """(start, end, locations) for each location phrase in `text`, in order, non-overlapping."""
    hits: list[tuple[int, int, list[str]]] = []
    taken: list[tuple[int, int]] = []
    prev_end, prev_sides = -1, set()
    for m in _ZONE_RE.finditer(text):
        kind, fixed = _zone_kind(m.group("zone"))
        sides = _sides(m.group("sides")) | _sides(m.group("post"))
        if fixed == "both":
            sides = {"right", "left"}
        elif fixed:
            sides = {fixed}
        elif not sides and prev_sides and _CARRY.match(text[prev_end:m.start()]):
            sides = set(prev_sides)
        elif not sides:
            sides = {"right", "left"}
        prev_end, prev_sides = m.end(), _sides(m.group("sides")) | _sides(m.group("post"))
        hits.append((m.start(), m.end(), canonical_locations(zone_name(s, kind) for s in sides)))
        taken.append((m.start(), m.end()))
    for m in _COMPARE.finditer(text):
        if not any(a < m.end() and m.start() < b for a, b in taken):
            hits.append((m.start(), m.end(), ["lung"]))
            taken.append((m.start(), m.end()))
    for m in _LUNG_RE.finditer(text):
        if any(a < m.end() and m.start() < b for a, b in taken):
            continue
        if m.group("both"):
            locs = ["lung"]
        elif m.group("lungs"):
            continue  # "the lungs are clear": not a location statement
        else:
            sides = _sides(m.group("sides"))
            if not sides or m.group("sides").lower() in ("r", "l"):
                continue
            locs = canonical_locations(f"{s} lung" for s in sides)
        hits.append((m.start(), m.end(), locs))
    return sorted(hits)
