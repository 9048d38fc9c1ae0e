"""Parse an LLM answer into FINDING records, validating every field against the vocabulary."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ils.vocab import LESIONS, LOCATIONS, canonical_locations


class LLMAnswerError(ValueError):
    """The answer is not JSON of the expected shape."""


_LESION_ALIASES = {"pleural effusion": "effusion", "pleural effusions": "effusion", "effusions": "effusion",
                   "opacities": "opacity", "consolidations": "consolidation", "pulmonary edema": "edema",
                   "enlarged heart": "cardiomegaly", "oedema": "edema"}
_TRUE = {"true", "yes", "present", "positive", "1"}
_FALSE = {"false", "no", "absent", "negative", "0"}


@dataclass
class Parsed:
    records: list[dict[str, Any]] = field(default_factory=list)
    invalid: int = 0  # records dropped
    repaired: int = 0  # records kept after a repair (alias, bad location dropped, ...)


def extract_json(text: str) -> Any:
    """JSON from an answer: the whole text, a ```json fence, or the first balanced {...}/[...]."""
    if text is None:
        raise LLMAnswerError("empty answer")
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        try:
            return json.loads(fence.group(1))
        except ValueError:
            pass
    for opener, closer in (("{", "}"), ("[", "]")):
        start = text.find(opener)
        while start != -1:
            depth, in_str, esc = 0, False, False
            for i in range(start, len(text)):
                c = text[i]
                if in_str:
                    esc = (c == "\\") and not esc
                    if c == '"' and not esc:
                        in_str = False
                    continue
                if c == '"':
                    in_str = True
                elif c == opener:
                    depth += 1
                elif c == closer:
                    depth -= 1
                    if depth == 0:
                        try:
                            return json.loads(text[start:i + 1])
                        except ValueError:
                            break
            start = text.find(opener, start + 1)
    raise LLMAnswerError("no JSON object in the answer")


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def parse_answer(text: str, sentences: list[str]) -> Parsed:
    """Records with lesion, present, certainty, locations, sent_idx, sentence, entity."""
    data = extract_json(text)
    if isinstance(data, dict):
        items = data.get("findings")
    elif isinstance(data, list):
        items = data
    else:
        items = None
    if not isinstance(items, list):
        raise LLMAnswerError("answer has no 'findings' list")
    out = Parsed()
    for item in items:
        if not isinstance(item, dict):
            out.invalid += 1
            continue
        repaired = False
        lesion = str(item.get("lesion", "")).strip().lower()
        if lesion not in LESIONS:
            lesion, repaired = _LESION_ALIASES.get(lesion, ""), True
        present = _bool(item.get("present"))
        if lesion not in LESIONS or present is None:
            out.invalid += 1
            continue
        certainty = str(item.get("certainty") or "definite").strip().lower() if present else None
        if present and certainty not in ("definite", "tentative"):
            certainty, repaired = "definite", True
        raw_locs = item.get("locations") or []
        if isinstance(raw_locs, str):
            raw_locs, repaired = [raw_locs], True
        locs = [str(l).strip().lower() for l in raw_locs if isinstance(l, str)]
        good = [l for l in locs if l in LOCATIONS]
        repaired |= len(good) != len(raw_locs)
        if lesion == "cardiomegaly":
            good = ["heart"]
        else:
            good = [l for l in good if l != "heart"]
        try:
            sent_idx = int(item.get("sent_idx", -1))
        except (TypeError, ValueError):
            sent_idx, repaired = -1, True
        if not 0 <= sent_idx < len(sentences):
            sent_idx, repaired = -1, repaired or sent_idx != -1
        out.records.append({
            "lesion": lesion, "present": present, "certainty": certainty,
            "locations": canonical_locations(good), "sent_idx": sent_idx,
            "sentence": sentences[sent_idx] if sent_idx >= 0 else None,
            "entity": str(item.get("entity") or "")[:200] or None,
        })
        out.repaired += int(repaired)
    return out
