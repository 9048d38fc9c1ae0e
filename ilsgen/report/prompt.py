"""The LLM prompt for report structuring: vocabulary in the system prompt, numbered sentences in
the user message, a JSON schema for structured output."""

from __future__ import annotations

from typing import Any

from ils.vocab import LESIONS, LOCATIONS

SYSTEM_PROMPT = f"""You structure chest X-ray reports for a lesion segmentation dataset.
The user sends the report's sentences, each prefixed with its index in square brackets.
For every mention of one of these lesion types, present or explicitly absent, output one record:
  lesion types: {", ".join(LESIONS)}
  (pleural effusion -> effusion; enlarged heart -> cardiomegaly; airspace disease -> consolidation;
   infection -> pneumonia; collapse or volume loss -> atelectasis; vascular congestion -> edema)
Record fields:
  entity: the words of the report that name the lesion
  sent_idx: the index of the sentence
  lesion: one of the lesion types above, exactly
  present: true if the lesion is present, false if it is negated or resolved
  certainty: "definite", or "tentative" when hedged (may, possible, likely, cannot be excluded)
  locations: a list drawn only from: {", ".join(LOCATIONS)}
    (cardiomegaly -> ["heart"]; right lower lobe -> "right lung base"; bibasilar -> both lung bases;
     retrocardiac -> "left lung base"; lingula -> "left mid zone lung"; [] when unspecified)
Ignore findings that are not in the list (pneumothorax, nodules, devices).
Answer with JSON only: {{"findings": [ ... ]}}; an empty list when there is nothing to report."""

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


def messages(sentences: list[str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_message(sentences)}]


def response_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "report_findings", "schema": FINDINGS_SCHEMA, "strict": True}}
