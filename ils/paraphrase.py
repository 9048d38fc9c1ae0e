"""Offline paraphrases of template instructions, each validated by reading it back.

`paraphrases(type_, lesion, locations, key)` writes instructions as people type them ("Is there
pleural fluid in the left lower lobe?") from phrasings and synonyms below, and keeps only those
that `ils.instructions.normalize` reads back to the same canonical instruction (same type,
lesion and locations). The choice is deterministic per `key` (the pair id).
"""

from __future__ import annotations

import hashlib
import random
from typing import Sequence

from ils import templates
from ils.instructions import InstructionError, normalize
from ils.vocab import join_locations

#: Words for each lesion that the instruction reader maps back to it.
LESION_WORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly",),
    "pneumonia": ("pneumonia", "infection", "bronchopneumonia"),
    "atelectasis": ("atelectasis", "collapse", "volume loss"),
    "opacity": ("opacity", "opacification", "haziness"),
    "consolidation": ("consolidation", "airspace consolidation", "consolidative opacity"),
    "edema": ("edema", "pulmonary edema", "oedema"),
    "effusion": ("pleural effusion", "pleural fluid", "fluid"),
}

#: Radiologists' names of each location.
LOCATION_WORDS: dict[str, tuple[str, ...]] = {
    "lung": ("both lungs", "lungs bilaterally"),
    "right lung": ("right lung", "right hemithorax"),
    "left lung": ("left lung", "left hemithorax"),
    **{f"{s} apical zone lung": (f"{s} apex", f"{s} apical zone", f"{s} lung apex") for s in ("right", "left")},
    **{f"{s} upper zone lung": (f"{s} upper zone", f"{s} upper lobe", f"{s} upper lung") for s in ("right", "left")},
    "right mid zone lung": ("right mid zone", "right midlung", "right middle lobe"),
    "left mid zone lung": ("left mid zone", "left midlung", "lingula"),
    **{f"{s} lung base": (f"{s} base", f"{s} lower lobe", f"{s} lower zone") for s in ("right", "left")},
    "heart": ("heart",),
}

_PHRASINGS: dict[str, tuple[str, ...]] = {
    "basic": ("Is there {lesion} in {where}?", "Show the {lesion} in {where}.", "Outline any {lesion} in {where}.",
              "Where is the {lesion} in {where}?", "Mark {lesion} in {where}."),
    "global": ("Is there {lesion}?", "Show me the {lesion}.", "Find {lesion} on this film.", "Any {lesion}?"),
    "global-cardiomegaly": ("Is the heart enlarged?", "Is there cardiomegaly?", "Show the enlarged cardiac silhouette.",
                            "Any cardiomegaly?", "Is the heart size increased?"),
    "lesion_inference": ("What type of {lesion} is in {where}?", "Classify the {lesion} in {where}.",
                         "Outline the {lesion} in {where} and predict its type.",
                         "What kind of {lesion} is seen in {where}?"),
}


def _where(locations: Sequence[str], rng: random.Random) -> str:
    if sorted(locations) == ["left lung base", "right lung base"]:
        return rng.choice(("both lung bases", "the lung bases bilaterally"))
    names = [rng.choice(LOCATION_WORDS[l]) for l in locations]
    text = join_locations(names)
    return text if names[0].startswith("both ") else f"the {text}"


def paraphrases(type_: str, lesion: str, locations: Sequence[str] = (), key: str = "", k: int = 3) -> list[str]:
    """Up to `k` distinct validated paraphrases of the template instruction (may be fewer, or none)."""
    canonical = templates.instruction(type_, lesion, list(locations))
    rng = random.Random(int(hashlib.sha1(f"{key}|{canonical}".encode()).hexdigest()[:12], 16))
    words = list(LESION_WORDS.get(lesion, (lesion,)))
    out: list[str] = []
    phrasings = _PHRASINGS["global-cardiomegaly" if (type_, lesion) == ("global", "cardiomegaly") else type_]
    candidates = [(p, w) for p in phrasings for w in words]
    rng.shuffle(candidates)
    for phrasing, word in candidates:
        if len(out) >= k:
            break
        if type_ != "global" and not locations:
            break
        text = phrasing.format(lesion=word, where=_where(locations, rng) if type_ != "global" else "")
        text = text[0].upper() + text[1:]
        try:
            if normalize(text).canonical == canonical and text not in out:
                out.append(text)
        except InstructionError:
            continue
    return out
