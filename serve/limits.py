"""Request limits of the ingress: bounded in-flight counter, upload size, request ids."""

from __future__ import annotations

import re
import uuid
from typing import AsyncIterator, Optional


class PayloadTooLarge(Exception):
    """The request body is larger than the limit (HTTP 413)."""


class InflightLimiter:
    """A bounded counter of requests in flight; `try_acquire` fails instead of queueing.

    Single event loop (one ingress replica process), so no lock is needed.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("max_queued_requests must be >= 1")
        self.limit = limit
        self.current = 0

    def try_acquire(self) -> bool:
        if self.current >= self.limit:
            return False
        self.current += 1
        return True

    def release(self) -> None:
        self.current = max(0, self.current - 1)


def check_content_length(header: Optional[str], max_bytes: int) -> None:
    """Early 413 from the declared Content-Length (the body is still counted while read)."""
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError:
        return
    if declared > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")


async def read_limited(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """Read a body stream, failing as soon as it grows past max_bytes."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    return bytes(buf)


_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(header: Optional[str]) -> str:
    """The client's X-Request-ID when it is safe to log (short, plain characters), else a new one."""
    if header and _RID.match(header):
        return header
    return uuid.uuid4().hex
