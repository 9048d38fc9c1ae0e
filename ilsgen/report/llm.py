"""The `llm` report backend: an OpenAI-compatible chat endpoint (vLLM, `ils llm-serve`, ...).

A report is patient data: the base URL must be on `allowed_base_urls` (checked at construction by
scheme, host, port and path prefix; an entry without a port allows any port of that host).
Each report: numbered sentences -> one chat completion with a JSON-schema response format
(answers that ignore it are parsed from text) -> every record validated against the vocabulary
(invalid ones dropped and counted). Transport errors, 5xx, timeouts and unparseable answers are
retried with exponential backoff; after `max_retries` retries the report goes to the rules
backend (source "llm_fallback") when `fallback_to_rules`, else `LLMReportError` is raised.
Requests are spaced by a client-side rate limit shared by the threads of one process; many
reports are structured at once by `ilsgen.report.llm_client.structure_many`.
`stats()` returns the counters for the run summary.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from ils.errors import UserError
from ilsgen.report import prompt
from ilsgen.report.rules import RulesReportBackend, merge_mentions
from ilsgen.report.sections import numbered_sentences
from ilsgen.report.types import ReportResult  # its home; still importable from here
from ilsgen.report.validate import LLMAnswerError, parse_answer

log = logging.getLogger(__name__)

DUMMY_API_KEY = "sk-local-dummy"
_DEFAULT_PORT = {"http": 80, "https": 443}


class LLMReportError(RuntimeError):
    """The endpoint failed persistently and fallback to rules is off."""


def _split(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT or not parts.hostname or parts.username or parts.password:
        raise ValueError(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(url) from exc
    return scheme, parts.hostname.lower(), port, parts.path.rstrip("/")


def is_allowed(base_url: str, allowed: list[str]) -> bool:
    """True when base_url matches an allowlist entry by scheme, host, port and path prefix."""
    try:
        scheme, host, port, path = _split(base_url)
    except ValueError:
        return False
    port = port or _DEFAULT_PORT[scheme]
    for entry in allowed or []:
        try:
            a_scheme, a_host, a_port, a_path = _split(entry)
        except ValueError:
            continue
        if (a_scheme, a_host) != (scheme, host):
            continue
        if a_port is not None and a_port != port:
            continue
        if a_path and not (path == a_path or path.startswith(a_path + "/")):
            continue
        return True
    return False


class RateLimiter:
    """At most `rate` request starts per second (0 or less: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


_COUNTERS = ("reports", "requests", "retries", "llm_ok", "fallbacks", "failures", "invalid_records",
             "repaired_records", "timeouts", "http_errors", "bad_answers", "schema_unsupported")


class LLMReportBackend:
    """`structure(study_id, report)` via an allowlisted OpenAI-compatible endpoint."""

    source = "llm"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        llm = cfg.llm
        if not is_allowed(llm.base_url, list(llm.allowed_base_urls)):
            raise UserError(
                f"LLM base URL {llm.base_url!r} is not on gen.report.llm.allowed_base_urls; reports are patient "
                "data and go only to allowlisted endpoints")
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._client = None
        self._use_schema = True
        self._lock = threading.Lock()
        self._limiter = RateLimiter(self.cfg.llm.requests_per_second)
        self._rules = RulesReportBackend(self.cfg)
        self.counters = {k: 0 for k in _COUNTERS}

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg = state["cfg"]
        self._init_runtime()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def client(self):
        with self._lock:  # one client (one connection pool) for all threads of this backend
            if self._client is None:
                import openai

                llm = self.cfg.llm
                key = os.environ.get(llm.api_key_env or "", "") or DUMMY_API_KEY
                self._client = openai.OpenAI(base_url=llm.base_url, api_key=key, timeout=llm.timeout_s, max_retries=0)
            return self._client

    def _ask(self, sentences: list[str]) -> str:
        llm = self.cfg.llm
        kwargs: dict[str, Any] = dict(model=llm.model, messages=prompt.messages(sentences),
                                      temperature=llm.temperature, max_tokens=llm.max_tokens, timeout=llm.timeout_s)
        if self._use_schema:
            kwargs["response_format"] = prompt.response_format()
        self._limiter.wait()
        self._count("requests")
        resp = self.client().chat.completions.create(**kwargs)
        try:
            return resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as exc:
            raise LLMAnswerError("malformed completion") from exc

    def structure_ex(self, study_id: str, report: str) -> ReportResult:
        """Rows and where they came from (llm | llm_fallback)."""
        import openai

        self._count("reports")
        sentences = [s for _, _, s in numbered_sentences(report or "")]
        if not sentences:
            return ReportResult([], "llm")
        llm = self.cfg.llm
        error = "unknown"
        for attempt in range(llm.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(llm.backoff_s * 2 ** (attempt - 1))
            try:
                parsed = parse_answer(self._ask(sentences), sentences)
            except openai.BadRequestError as exc:
                if self._use_schema and "response_format" in str(exc).lower():
                    self._use_schema = False  # a server without structured output: parse from text
                    self._count("schema_unsupported")
                    error = "response_format unsupported"
                    continue
                self._count("http_errors")
                error = f"bad request: {type(exc).__name__}"
                continue
            except openai.APITimeoutError:
                self._count("timeouts")
                error = "timeout"
                continue
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                self._count("http_errors")
                error = f"{type(exc).__name__}"
                continue
            except LLMAnswerError as exc:
                self._count("bad_answers")
                error = f"bad answer: {exc}"
                continue
            self._count("invalid_records", parsed.invalid)
            self._count("repaired_records", parsed.repaired)
            if parsed.invalid and not parsed.records:
                self._count("bad_answers")
                error = f"all {parsed.invalid} record(s) invalid"
                continue
            self._count("llm_ok")
            return ReportResult(self._finish(study_id, merge_mentions(parsed.records), "llm"), "llm")
        self._count("failures")
        log.warning("LLM report structuring failed for one study after %d attempt(s): %s", llm.max_retries + 1, error)
        if not llm.fallback_to_rules:
            raise LLMReportError(f"LLM failed after {llm.max_retries + 1} attempt(s): {error}")
        self._count("fallbacks")
        rows = self._rules.structure(study_id, report)
        for row in rows:
            row["source"] = "llm_fallback"
        return ReportResult(rows, "llm_fallback", error)

    def structure(self, study_id: str, report: str) -> list[dict[str, Any]]:
        return self.structure_ex(study_id, report).rows

    @staticmethod
    def _finish(study_id: str, rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
        for i, row in enumerate(rows):
            row.update(study_id=study_id, finding_idx=i, source=source)
        return rows
