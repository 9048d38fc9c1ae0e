"""Types shared by the report backends (rules, llm) and their users: one home, no import cycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ReportResult:
    """The FINDING rows of one report and where they came from."""

    rows: list[dict[str, Any]]
    source: str  # llm | llm_fallback | rules
    error: str | None = None
