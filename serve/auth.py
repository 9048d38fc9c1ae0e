"""API keys: `Authorization: Bearer KEY`, checked in constant time.

Keys come from the environment variable ILS_API_KEYS (comma-separated) and/or the secret file
`serve.api_keys_file` (one key per line, '#' comments). Only SHA-256 digests of the keys travel to
the Serve replicas (deployment arguments live in the Serve controller's state), never the keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Iterable, Optional

from ils.errors import UserError

ENV_VAR = "ILS_API_KEYS"


class AuthConfigError(UserError):
    """No usable API key configured while anonymous access is not allowed."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_keys(keys_file: Optional[str] = None, env: Optional[dict] = None) -> list[str]:
    """Keys from ILS_API_KEYS and the secret file (blank entries dropped)."""
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get(ENV_VAR, "").split(",") if k.strip()]
    if keys_file:
        path = Path(keys_file).expanduser()
        if not path.is_file():
            raise AuthConfigError(f"serve.api_keys_file {keys_file!r} does not exist")
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    return keys


def key_digests(keys_file: Optional[str], allow_anonymous: bool, env: Optional[dict] = None) -> list[str]:
    """Digests of the configured keys; refuses (AuthConfigError) when none and not anonymous."""
    keys = load_keys(keys_file, env)
    if not keys and not allow_anonymous:
        raise AuthConfigError(
            f"no API key configured: set {ENV_VAR}=key1,key2 or serve.api_keys_file, "
            "or allow anonymous access explicitly with serve.allow_anonymous=true"
        )
    return sorted({digest(k) for k in keys})


class KeyChecker:
    """Checks an Authorization header against key digests; returns an HTTP status."""

    def __init__(self, digests: Iterable[str]):
        self.digests = [d.encode("ascii") for d in digests]

    @property
    def anonymous(self) -> bool:
        return not self.digests

    def check(self, authorization: Optional[str]) -> int:
        """200 when allowed, 401 without a bearer key, 403 with a wrong key."""
        if self.anonymous:
            return 200
        if not authorization:
            return 401
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401
        given = digest(token).encode("ascii")
        ok = False
        for d in self.digests:  # compare against every key: time does not depend on which matched
            ok |= hmac.compare_digest(given, d)
        return 200 if ok else 403
