"""Compute only what the report asks for: which studies need the anomaly and detect stages.

A lesion mask is made from the anomaly map and the detector's boxes only for a finding that is
reported present (definite or tentative) and is not cardiomegaly (whose mask is the heart of the
anatomy map; ilsgen.fuse). A study without such a finding gets the same masks and pairs
without those two stages, so `gen.gate_mask_stages` skips them for it; its status row lists
the stages skipped (`skipped_stages`) and the run summary counts them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

#: The stages whose output only feeds lesion masks of non-cardiomegaly findings.
MASK_STAGES: tuple[str, ...] = ("anomaly", "detect")


def needs_mask(findings: Iterable[Mapping[str, Any]]) -> bool:
    """True when some finding needs a lesion mask from the anomaly map and boxes."""
    return any(f.get("present") and f.get("lesion") != "cardiomegaly" for f in findings)


def needs_mask_json(findings_json: Any) -> bool:
    """`needs_mask` of a batch's findings cell (a JSON list; missing or empty: no finding)."""
    if not findings_json or not isinstance(findings_json, str):
        return False
    return needs_mask(json.loads(findings_json))
