"""Many LLM requests in flight: structure a list of reports concurrently, results in input order.

`structure_many(backend, items, max_in_flight)` runs `backend.structure_ex` for each
(study_id, report) on a bounded thread pool. Each report keeps the backend's own retries,
validation, rate limit (one limiter per backend, shared by its threads) and fallback to rules;
a report that still fails comes back as its exception, in its own slot, so a caller can fail
that study alone and never re-sends the others (nothing is requested twice for one batch).

Why threads and not `ray.data.llm` (HttpRequestProcessorConfig, present in Ray 2.60): that
processor is a separate Ray Data stage that posts raw payloads and returns raw responses; the
allowlist, answer validation, schema-less fallback, per-report fallback to rules and the
counters would all have to be rebuilt around it, and `ils report` (no Ray) could not use it.
A blocking OpenAI client per thread reuses that logic unchanged; the openai client pools up to
1,000 connections, so the thread count is the only limit (docs/sizing.md, "LLM in flight").
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

log = logging.getLogger(__name__)


def structure_many(backend: Any, items: Sequence[tuple[str, str]], max_in_flight: int = 1) -> list[Any]:
    """[ReportResult | Exception] for each (study_id, report), in input order.

    At most `max_in_flight` reports are being structured at once (1: one after the other in
    this thread, today's behaviour)."""
    n = len(items)
    out: list[Any] = [None] * n
    if n == 0:
        return out
    workers = max(1, min(int(max_in_flight or 1), n))

    def one(i: int) -> None:
        study_id, report = items[i]
        try:
            out[i] = backend.structure_ex(study_id, report)
        except Exception as exc:  # noqa: BLE001 - handed back in the study's own slot
            out[i] = exc

    if workers == 1:
        for i in range(n):
            one(i)
        return out
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
        list(pool.map(one, range(n)))
    return out


def in_flight(cfg: Any) -> int:
    """The configured concurrency of a report backend config (1 for backends without an LLM)."""
    if getattr(cfg, "backend", "rules") != "llm":
        return 1
    return max(1, int(getattr(cfg.llm, "max_in_flight", 1) or 1))
