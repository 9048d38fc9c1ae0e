"""Report structuring: free-text report -> FINDING rows (ils.schema.FINDING).

Backends (`gen.report.backend`): `rules` (offline, medspaCy ConText) and `llm` (an
OpenAI-compatible endpoint on an allowlist, falling back to rules). Build one with
`make_report_backend(cfg.gen.report)`; both are picklable and build heavy objects lazily.
"""

from __future__ import annotations

from typing import Any

from ils.errors import UserError

BACKENDS: tuple[str, ...] = ("rules", "llm")


def make_report_backend(cfg: Any = None):
    """The report backend named by `cfg.backend` (a ReportConfig; None = rules with defaults)."""
    name = getattr(cfg, "backend", "rules") if cfg is not None else "rules"
    if name == "rules":
        from ilsgen.report.rules import RulesReportBackend

        return RulesReportBackend(cfg)
    if name == "llm":
        from ilsgen.report.llm import LLMReportBackend

        return LLMReportBackend(cfg)
    raise UserError(f"unknown report backend {name!r}; expected one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "make_report_backend"]
