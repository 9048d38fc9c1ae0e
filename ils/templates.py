"""Instruction and answer templates (SPEC section 1) and their parser.

The pair writer (ilsgen), the model's evaluation (rosalia) and the service (serve) all use this
module, so an answer written by one is read back the same way by the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from ils.vocab import LESIONS, join_locations, split_locations

SEG_TOKEN = "[SEG]"
INSTRUCTION_TYPES: tuple[str, ...] = ("basic", "global", "lesion_inference")
CERTAINTIES: tuple[str, ...] = ("definite", "tentative")

_CERTAINTY_PHRASE = {"definite": "is highly suggestive of", "tentative": "possibly reflects"}


@dataclass(frozen=True)
class Parsed:
    """Structured content of an instruction-answer pair."""

    type: str
    lesion: str  # the lesion asked about ("opacity" for lesion_inference)
    locations: tuple[str, ...] = ()
    presence: bool | None = None
    inferred: str | None = None  # lesion_inference: the predicted type
    certainty: str | None = None
    extras: dict = field(default_factory=dict, compare=False)


def instruction(type_: str, lesion: str, locations: Sequence[str] = ()) -> str:
    """The instruction text of a pair."""
    if type_ == "basic":
        return f"Segment the {lesion} in the {join_locations(locations)}."
    if type_ == "global":
        return f"Segment the {lesion}."
    if type_ == "lesion_inference":
        return f"Segment the opacity in the {join_locations(locations)} and predict its type."
    raise ValueError(f"unknown instruction type {type_!r}")


def answer(
    type_: str,
    lesion: str,
    present: bool,
    locations: Sequence[str] = (),
    inferred: str | None = None,
    certainty: str | None = None,
) -> str:
    """The reference answer of a pair; always starts with [SEG]."""
    if type_ == "basic":
        return SEG_TOKEN if present else f"{SEG_TOKEN} There is no {lesion} in the {join_locations(locations)}."
    if type_ == "global":
        if not present:
            return f"{SEG_TOKEN} There is no {lesion}."
        if lesion == "cardiomegaly" or not locations:
            return SEG_TOKEN
        return f"{SEG_TOKEN} It is located in the {join_locations(locations)}."
    if type_ == "lesion_inference":
        if not present:
            return f"{SEG_TOKEN} There is no opacity in the {join_locations(locations)}."
        if inferred is None or certainty not in _CERTAINTY_PHRASE:
            raise ValueError("a positive lesion_inference answer needs the inferred type and its certainty")
        return f"{SEG_TOKEN} It {_CERTAINTY_PHRASE[certainty]} {inferred}."
    raise ValueError(f"unknown instruction type {type_!r}")


_LESION_RE = "|".join(LESIONS)
_INSTR = [
    ("lesion_inference", re.compile(r"^Segment the opacity in the (?P<loc>.+) and predict its type\.?$", re.I)),
    ("basic", re.compile(rf"^Segment the (?P<lesion>{_LESION_RE}) in the (?P<loc>.+?)\.?$", re.I)),
    ("global", re.compile(rf"^Segment the (?P<lesion>{_LESION_RE})\.?$", re.I)),
]


def parse_instruction(text: str) -> Parsed:
    """Parse an instruction of one of the three templates; ValueError if it fits none."""
    text = " ".join(text.strip().split())
    for type_, pattern in _INSTR:
        m = pattern.match(text)
        if m:
            lesion = m.groupdict().get("lesion") or "opacity"
            locs = tuple(split_locations(m.group("loc").lower())) if "loc" in m.groupdict() else ()
            return Parsed(type=type_, lesion=lesion.lower(), locations=locs)
    raise ValueError(f"instruction does not follow a known template: {text!r}")


_NEG = re.compile(r"there is no (?P<lesion>[a-z ]+?)(?: in the (?P<loc>.+?))?\.?$", re.I)
_LOC = re.compile(r"it is located in the (?P<loc>.+?)\.?$", re.I)
_INF = re.compile(rf"it (?P<phrase>is highly suggestive of|possibly reflects) (?P<lesion>{_LESION_RE})\.?$", re.I)


def parse_answer(instruction_text: str, answer_text: str) -> Parsed:
    """Structured reading of an answer in the context of its instruction.

    Unparseable answer text yields presence=None (counted as wrong by text accuracy).
    """
    q = parse_instruction(instruction_text)
    body = " ".join(answer_text.replace(SEG_TOKEN, " ").split()).strip()
    if not body:
        return Parsed(q.type, q.lesion, q.locations, presence=True)
    m = _NEG.match(body)
    if m:
        return Parsed(q.type, q.lesion, q.locations, presence=False)
    if q.type == "global":
        m = _LOC.match(body)
        if m:
            try:
                return Parsed(q.type, q.lesion, tuple(split_locations(m.group("loc").lower())), presence=True)
            except ValueError:
                pass
    if q.type == "lesion_inference":
        m = _INF.match(body)
        if m:
            certainty = "definite" if m.group("phrase").lower().startswith("is") else "tentative"
            return Parsed(q.type, q.lesion, q.locations, True, m.group("lesion").lower(), certainty)
    return Parsed(q.type, q.lesion, q.locations, presence=None)
