"""Instructions as people type them -> the canonical template instruction (ils.templates).

"Is there fluid in the left lower lobe?" reads as "Segment the effusion in the left lung base.".
Lesion words come from the report parser's lexicon (ilsgen.report.lexicon.LESION_PATTERNS, the
longest match wins) plus a few words people use in questions (`EXTRA_LESION_PATTERNS`);
locations from its location parser (ilsgen.report.locations.find_locations: left lower lobe,
bibasilar, lingula, both lungs, ...). Documented choices:

- a finding outside the seven (nodule, mass, pneumothorax, fracture, pericardial effusion, ...)
  is refused (`InstructionError.kind == "unsupported_lesion"`), naming the supported ones;
- an instruction naming no finding is refused with an example (`kind == "no_lesion"`), and so
  is one naming several (`kind == "several_lesions"`), except "opacity ... is it pneumonia?"
  which is the lesion-inference question;
- cardiomegaly is always the global instruction (the heart is implied);
- an opacity whose type is asked ("predict its type", "what kind", "classify", ...) is the
  lesion-inference instruction, in the whole lung when no location is named;
- otherwise a named location makes the basic instruction, none the global one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ils import templates
from ils.errors import UserError
from ils.vocab import INFERABLE_LESIONS, LESION_PROSE, LESIONS, canonical_locations

EXAMPLE = "Segment the pleural effusion in the left lung base."

#: Words people type that the report lexicon does not need: (lesion, regex).
EXTRA_LESION_PATTERNS: list[tuple[str, str]] = [
    ("effusion", r"fluid(?: collections?)?|water around the lungs?"),
    ("cardiomegaly", r"(?:big|large|enlarged|dilated) (?:heart|cardiac silhouette)|heart enlargement|enlargement of the heart"),
    ("pneumonia", r"lung infection|chest infection"),
]

#: Findings this model does not segment (checked together with the lexicon's look-alikes).
UNSUPPORTED_PATTERNS: list[str] = [
    r"nodules?|nodular", r"mass(?:es)?", r"pneumothora(?:x|ces)", r"fractures?|broken ribs?", r"tumou?rs?|cancers?|carcinomas?|malignan\w*|neoplasms?",
    r"emphysema", r"fibrosis|fibrotic", r"calcifi\w+", r"granulomas?", r"hernias?", r"pneumo(?:peritoneum|mediastinum)",
    r"cavit(?:y|ies|ation)", r"abscess(?:es)?", r"tuberculosis", r"pacemakers?|(?:endotracheal |chest )?tubes?|catheters?",
    r"lymphadenopathy", r"scoliosis", r"bronchiectasis", r"metasta\w+",
]

_TYPE_CUE = re.compile(r"\b(?:predict|type|kind|classif\w*|characteri[sz]\w*|what is it|what could it be|is it|could it be|cause|diagnos\w*|which)\b", re.I)
_WHOLE_LUNG = re.compile(r"\b(?:in|of|within|across|throughout) (?:the |both |either )?lungs?\b", re.I)


class InstructionError(UserError, ValueError):
    """An instruction that cannot be read as one of the supported findings."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Reading:
    """How an instruction was read."""

    canonical: str  # the template instruction given to the model
    type: str
    lesion: str
    locations: tuple[str, ...]
    how: str  # "template" (already canonical) or "normalized"
    matched: tuple[tuple[str, str], ...] = field(default=())  # (words as typed, read as)

    def as_dict(self) -> dict:
        return {"how": self.how, "type": self.type, "lesion": self.lesion, "locations": list(self.locations),
                "matched": [{"typed": t, "read_as": r} for t, r in self.matched]}


@lru_cache(maxsize=1)
def _lesion_patterns() -> list[tuple[str, re.Pattern]]:
    from ilsgen.report.lexicon import LESION_PATTERNS

    out = []
    for label, pattern in [*LESION_PATTERNS, *EXTRA_LESION_PATTERNS]:
        label = label.split(":", 1)[1] if label.startswith(("NORMAL:", "TENTATIVE:")) else label  # a lesion word either way
        out.append((label, re.compile(rf"\b(?:{pattern})\b", re.I)))
    out += [("UNSUPPORTED", re.compile(rf"\b(?:{p})\b", re.I)) for p in UNSUPPORTED_PATTERNS]
    return out


def _lesion_hits(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, label) lesion mentions, longest match first."""
    found = [(m.start(), m.end(), label) for label, rx in _lesion_patterns() for m in rx.finditer(text)]
    found.sort(key=lambda h: (h[0] - h[1], h[0]))
    taken: list[tuple[int, int, str]] = []
    for a, b, label in found:
        if all(b <= x or a >= y for x, y, _ in taken):
            taken.append((a, b, label))
    return sorted(taken)


def supported_names() -> str:
    return ", ".join(LESION_PROSE[l] for l in LESIONS)


def normalize(text: str) -> Reading:
    """The canonical instruction of a typed one; InstructionError when it cannot be read."""
    text = " ".join(str(text).split())
    try:
        q = templates.parse_instruction(text)
        return Reading(templates.instruction(q.type, q.lesion, q.locations), q.type, q.lesion, q.locations, "template")
    except ValueError:
        pass
    from ilsgen.report.locations import find_locations

    hits = _lesion_hits(text)
    bad = [text[a:b] for a, b, label in hits if label in ("UNSUPPORTED", "IGNORE")]
    if bad:
        raise InstructionError(f"{bad[0]!r} is not a finding this model segments; it knows: {supported_names()}", "unsupported_lesion")
    lesions = list(dict.fromkeys(label for _, _, label in hits))
    if not lesions:
        raise InstructionError(f"the instruction names none of the findings this model segments ({supported_names()}); "
                               f"for example: {EXAMPLE!r}", "no_lesion")
    cue = bool(_TYPE_CUE.search(text))
    matched = [(text[a:b], LESION_PROSE.get(label, label)) for a, b, label in hits]
    others = [l for l in lesions if l != "opacity"]
    if "opacity" in lesions and cue and (not others or (len(others) == 1 and others[0] in INFERABLE_LESIONS)):
        lesion, type_ = "opacity", "lesion_inference"
    elif len(lesions) > 1:
        raise InstructionError(f"the instruction names several findings ({', '.join(LESION_PROSE[l] for l in lesions)}); "
                               f"ask about one at a time, for example: {EXAMPLE!r}", "several_lesions")
    else:
        lesion, type_ = lesions[0], None
    lesion_spans = [(a, b) for a, b, _ in hits]
    locs: list[str] = []
    for a, b, found in find_locations(text):
        if lesion == "cardiomegaly":
            break
        locs += found
        matched.append((text[a:b], ", ".join(found)))
    if not locs and lesion != "cardiomegaly":
        m = _WHOLE_LUNG.search(text)
        if m and not any(x < m.end() and m.start() < y for x, y in lesion_spans):
            locs = ["lung"]
            matched.append((m.group(0), "lung"))
    locations = tuple(canonical_locations(locs))
    if type_ is None:
        type_ = "global" if lesion == "cardiomegaly" or not locations else "basic"
    if type_ == "lesion_inference" and not locations:
        locations = ("lung",)
    canonical = templates.instruction(type_, lesion, locations if type_ != "global" else ())
    return Reading(canonical, type_, lesion, locations if type_ != "global" else (), "normalized", tuple(matched))
