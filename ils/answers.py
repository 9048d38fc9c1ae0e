"""One decision per answer: reconcile the generated text with the gated presence decision.

The language model writes an answer and the presence head (or the mask) decides presence; the
two can disagree. `decide` keeps the generation when its reading agrees with the decision and
otherwise rebuilds the answer from the templates (ils.templates) for the decided presence,
reusing the lesion type and locations the model generated when they parse. The raw generation
is kept next to it, and `message` says the result in plain words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from ils import templates
from ils.vocab import LESION_PROSE, LESIONS, canonical_locations, join_locations, split_locations


@dataclass(frozen=True)
class Decision:
    """The reconciled answer of one request."""

    answer: str  # agrees with `present`; starts with [SEG] (the paper's format)
    raw_answer: str  # the generation as decoded
    present: bool
    agreed: Optional[bool]  # did the raw generation agree with `present`? None: instruction off-template
    message: str  # plain-language sentence for people
    locations: tuple[str, ...] = ()  # where the answer places the finding
    inferred: Optional[str] = None  # lesion_inference: the type in the answer
    certainty: Optional[str] = None


_LOCATED = re.compile(r"located in the (?P<loc>[a-z ,]+?)\s*(?:\.|$)", re.I)
_INFERRED = re.compile(rf"(?P<phrase>is highly suggestive of|possibly reflects) (?P<lesion>{'|'.join(LESIONS)})\b", re.I)


def _salvage(generated: str) -> tuple[tuple[str, ...], Optional[str], Optional[str]]:
    """Locations and inferred type (with certainty) found anywhere in a generation, if they parse."""
    locs: tuple[str, ...] = ()
    m = _LOCATED.search(generated)
    if m:
        try:
            locs = tuple(canonical_locations(split_locations(m.group("loc").lower())))
        except ValueError:
            locs = ()
    m = _INFERRED.search(generated)
    if not m:
        return locs, None, None
    certainty = "definite" if m.group("phrase").lower().startswith("is") else "tentative"
    return locs, m.group("lesion").lower(), certainty


def decide(instruction: str, generated: str, present: bool, confidence: float) -> Decision:
    """The answer for the decided presence; the generation when it already agrees."""
    try:
        q = templates.parse_instruction(instruction)
    except ValueError:
        return Decision(generated, generated, present, None, _generic_message(present, confidence))
    g = templates.parse_answer(instruction, generated)
    agreed = g.presence is present
    if agreed:
        answer, locs, inferred, certainty = generated, g.locations, g.inferred, g.certainty
    elif not present:
        answer, locs, inferred, certainty = templates.answer(q.type, q.lesion, False, q.locations), q.locations, None, None
    else:
        salvaged_locs, inferred, certainty = _salvage(generated)
        if q.type != "lesion_inference":
            inferred = certainty = None
        locs = q.locations
        if q.type == "global":
            locs = salvaged_locs if q.lesion != "cardiomegaly" else ()
        if q.type == "lesion_inference" and inferred is None:
            answer = templates.SEG_TOKEN  # a type the model did not write is not invented
        else:
            answer = templates.answer(q.type, q.lesion, True, locs, inferred, certainty)
    return Decision(answer, generated, present, agreed, message(q.type, q.lesion, present, confidence, locs, inferred, certainty),
                    tuple(locs), inferred, certainty)


def location_prose(location: str) -> str:
    """'right upper zone lung' -> 'right upper zone'; 'lung' -> 'lungs'."""
    if location == "lung":
        return "lungs"
    return location[: -len(" lung")] if location.endswith("zone lung") else location


def _where(locations: Sequence[str]) -> str:
    return f" in the {join_locations([location_prose(l) for l in locations])}" if locations else ""


def message(type_: str, lesion: str, present: bool, confidence: float, locations: Sequence[str] = (),
            inferred: Optional[str] = None, certainty: Optional[str] = None) -> str:
    """One sentence for people, e.g. 'Pleural effusion found in the left lung base (confidence 0.94).'"""
    name = LESION_PROSE.get(lesion, lesion)
    where = _where(locations)
    if not present:
        return f"No {name} found{where}."
    conf = f"(confidence {confidence:.2f})"
    if type_ == "lesion_inference":
        if inferred:
            how = "highly suggestive of" if certainty == "definite" else "possibly"
            return f"{name.capitalize()}{where}, {how} {LESION_PROSE.get(inferred, inferred)} {conf}."
        return f"{name.capitalize()} found{where}; its type was not predicted {conf}."
    return f"{name.capitalize()} found{where} {conf}."


def _generic_message(present: bool, confidence: float) -> str:
    return f"Finding present (confidence {confidence:.2f})." if present else "No finding."


def agrees(instruction: str, answer: str, present: bool) -> Optional[bool]:
    """Whether an answer's reading agrees with a presence decision (None: instruction off-template)."""
    try:
        return templates.parse_answer(instruction, answer).presence is present
    except ValueError:
        return None
