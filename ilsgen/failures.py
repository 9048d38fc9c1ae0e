"""Transient or permanent: whether a study that failed is tried again on the next run.

Transient (retried): the LLM endpoint failing after its retries (LLMReportError, timeouts), a
store or network error (connection refused or reset, timeouts, S3 throttling or 5xx). Permanent
(kept as a finished failure): everything else, e.g. an undecodable image, a missing file, an
empty report. The exception chain (`__cause__`, `__context__`) is searched, so a StoreError
around a network error counts as transient.
"""

from __future__ import annotations

import re

#: OSError texts of network trouble (pyarrow's S3 client reports curl and AWS error names).
_NETWORK = re.compile(
    r"NETWORK_CONNECTION|curlCode|connect(ion)? (refused|reset|timed out|aborted)|could(n't| not) connect|"
    r"timed? ?out|SLOW_DOWN|Throttl|ServiceUnavailable|InternalError|Service Unavailable|HTTP response code: 5\d\d|"
    r"Unable to connect|Broken pipe|EndpointConnectionError", re.IGNORECASE)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__  # .cause: Ray's RayTaskError


def is_transient(exc: BaseException) -> bool:
    """True when the failure may go away by itself (worth a retry on the next run)."""
    for e in _chain(exc):
        name = type(e).__name__
        if name in ("LLMReportError", "APITimeoutError", "APIConnectionError", "EndpointConnectionError",
                    "ConnectTimeoutError", "ReadTimeoutError"):
            return True
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            return False
        if isinstance(e, (TimeoutError, ConnectionError)):
            return True
        if isinstance(e, OSError) and _NETWORK.search(str(e)):
            return True
    return False
