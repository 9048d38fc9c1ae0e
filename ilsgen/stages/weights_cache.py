"""Make a backend's weights available as a local path: a local file/folder as is, s3:// via a cache.

Heavy backends (cxas, radedit, yolo) load their checkpoints with libraries that only read local
files. `local_weights(uri, options)` returns a local path; an `s3://` file or folder is copied
through `ils.store.Store` into a cache folder first (once; reused by later calls and actors on
the same node). Nothing is ever fetched from a model hub.

The S3 endpoint comes from `options["s3_endpoint"]`, else the standard environment variables
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; credentials from the environment or boto3's chain.
The cache folder is `options["cache_dir"]`, else `$ILS_WEIGHTS_CACHE`, else `<tmp>/ils-weights`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

from ils.errors import UserError

log = logging.getLogger(__name__)


class WeightsError(UserError):
    """Weights are not configured, missing or unreadable."""


def cache_root(options: Mapping[str, Any] | None = None) -> Path:
    opts = options or {}
    base = opts.get("cache_dir") or os.environ.get("ILS_WEIGHTS_CACHE") or Path(tempfile.gettempdir()) / "ils-weights"
    return Path(base).expanduser().resolve()


def _s3_options(options: Mapping[str, Any] | None):
    from ils.store import S3Options

    opts = options or {}
    endpoint = opts.get("s3_endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = opts.get("s3_region") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return S3Options(endpoint=endpoint, region=region)


def local_weights(uri: str | None, options: Mapping[str, Any] | None = None, *, what: str = "weights") -> Path:
    """A local path holding `uri` (file or folder). Raises WeightsError when it does not exist."""
    if not uri:
        raise WeightsError(f"no {what} configured (set weights to a local path or s3:// URI)")
    uri = str(uri)
    if uri.startswith("s3://"):
        return _download(uri, options, what)
    if "://" in uri and not uri.startswith("file://"):
        raise WeightsError(f"{what}: unsupported URI {uri!r}; use a local path, file:// or s3:// (no hub downloads)")
    path = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
    if not path.exists():
        raise WeightsError(f"{what} not found: {path}")
    return path.resolve()


def _download(uri: str, options: Mapping[str, Any] | None, what: str) -> Path:
    from ils.store import Store, StoreError

    target = cache_root(options) / hashlib.sha1(uri.encode()).hexdigest()[:16]
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "weights"
    final = target / name
    if final.exists():
        return final
    try:
        store = Store(uri, _s3_options(options))
        if store.is_file(""):
            files = [""]
        else:
            files = store.list("")
            if not files:
                raise WeightsError(f"{what} not found: {uri}")
        tmp = target / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            for rel in files:
                dest = tmp / name / rel if rel else tmp / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(store.read_bytes(rel))
            try:
                os.replace(tmp / name, final)
            except OSError:
                if not final.exists():  # another process won the race otherwise
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except StoreError as exc:
        raise WeightsError(f"{what}: cannot fetch {uri}: {exc}") from exc
    log.info("%s cached from %s (%d file(s))", what, uri, len(files))
    return final


def pick_device(num_gpus: float) -> str:
    """'cuda' when a GPU is visible and the stage asks for one, else 'cpu'."""
    import torch

    return "cuda" if num_gpus and num_gpus > 0 and torch.cuda.is_available() else "cpu"
