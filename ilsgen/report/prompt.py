"""The LLM prompt for report structuring: vocabulary and real-report rules in the system prompt
(the same decisions as the rules backend, ilsgen/report/lexicon.py), a few short worked examples,
numbered sentences in the user message, a JSON schema for structured output."""

from __future__ import annotations

import json
from typing import Any

from ils.vocab import LESIONS, LOCATIONS

SYSTEM_PROMPT = f"""You structure chest X-ray reports for a lesion segmentation dataset.
The user sends the report's sentences, each prefixed with its index in square brackets.
For every mention of one of these lesion types, present or explicitly absent, output one record:
  lesion types: {", ".join(LESIONS)}
  (pleural effusion -> effusion; enlarged heart / enlarged cardiac silhouette / borderline heart size ->
   cardiomegaly; airspace disease -> consolidation; pneumonitis -> pneumonia; "infection" -> pneumonia,
   always tentative; collapse or volume loss -> atelectasis; density or infiltrate -> opacity)
  Vascular congestion, engorgement, redistribution and cephalization are NOT edema: skip them.
Record fields:
  entity: the words of the report that name the lesion
  sent_idx: the index of the sentence
  lesion: one of the lesion types above, exactly
  present: true if the lesion is present now; false if it is negated, resolved or cleared, or
    a normal statement names it ("heart size within normal limits" -> cardiomegaly false)
  certainty: "definite", or "tentative" when hedged (may, might, could, possible, likely, suggests,
    cannot exclude, concerning for, suspicious for, question of, correlate for, in the differential);
    alternatives ("atelectasis or scarring", "infiltrate versus atelectasis") are definite
  locations: a list drawn only from: {", ".join(LOCATIONS)}
    (cardiomegaly -> ["heart"]; right lower lobe -> "right lung base"; bibasilar -> both lung bases;
     retrocardiac -> "left lung base"; lingula -> "left mid zone lung"; "right greater than left" -> "lung";
     [] when unspecified)
Skip history and old or healed disease ("history of pneumonia", "old granulomatous disease"), and
findings that are not in the list (pneumothorax, nodules, scarring, devices, post-surgical changes).
"Unchanged", "stable", "improved" and "persistent" findings are present.
Answer with JSON only: {{"findings": [ ... ]}}; an empty list when there is nothing to report."""

#: Few-shot examples: (sentences, findings), the cases real reports get wrong most often.
FEW_SHOT: list[tuple[list[str], list[dict[str, Any]]]] = [
    (["Heart size and pulmonary vascular engorgement appear within limits of normal.",
      "Old granulomatous disease.", "Mild central vascular congestion."],
     [{"entity": "Heart size", "sent_idx": 0, "lesion": "cardiomegaly", "present": False, "certainty": "definite",
       "locations": ["heart"]}]),
    (["Left basilar opacity, may be secondary to atelectasis; differential includes pneumonia.",
      "Small right pleural effusion is unchanged.", "Scarring or atelectasis in the lingula."],
     [{"entity": "opacity", "sent_idx": 0, "lesion": "opacity", "present": True, "certainty": "definite",
       "locations": ["left lung base"]},
      {"entity": "atelectasis", "sent_idx": 0, "lesion": "atelectasis", "present": True, "certainty": "tentative",
       "locations": ["left lung base"]},
      {"entity": "pneumonia", "sent_idx": 0, "lesion": "pneumonia", "present": True, "certainty": "tentative",
       "locations": ["left lung base"]},
      {"entity": "pleural effusion", "sent_idx": 1, "lesion": "effusion", "present": True, "certainty": "definite",
       "locations": ["right lung"]},
      {"entity": "atelectasis", "sent_idx": 2, "lesion": "atelectasis", "present": True, "certainty": "definite",
       "locations": ["left mid zone lung"]}]),
]

FINDINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "entity": {"type": "string"},
                    "sent_idx": {"type": "integer"},
                    "lesion": {"type": "string", "enum": list(LESIONS)},
                    "present": {"type": "boolean"},
                    "certainty": {"type": "string", "enum": ["definite", "tentative"]},
                    "locations": {"type": "array", "items": {"type": "string", "enum": list(LOCATIONS)}},
                },
                "required": ["entity", "sent_idx", "lesion", "present", "certainty", "locations"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["findings"],
    "additionalProperties": False,
}


def user_message(sentences: list[str]) -> str:
    return "\n".join(f"[{i}] {s}" for i, s in enumerate(sentences))


def messages(sentences: list[str], few_shot: bool = True) -> list[dict[str, str]]:
    """System prompt, the few-shot exchanges (unless `few_shot` is False), then the report."""
    out = [{"role": "system", "content": SYSTEM_PROMPT}]
    for shot_sentences, findings in FEW_SHOT if few_shot else ():
        out += [{"role": "user", "content": user_message(shot_sentences)},
                {"role": "assistant", "content": json.dumps({"findings": findings})}]
    return out + [{"role": "user", "content": user_message(sentences)}]


def response_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "report_findings", "schema": FINDINGS_SCHEMA, "strict": True}}
