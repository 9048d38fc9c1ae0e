"""One store for every job: a local folder, `file://` or `s3://`, over pyarrow file systems.

No other module opens paths or S3 clients on its own: they ask a `Store` for bytes, Parquet or
PNG by a path relative to the store's root (or by a full URI). Finished files are published
atomically: on a local disk through a hidden temporary name and a rename; on S3 a PUT only
becomes visible once complete.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ils.errors import UserError

if TYPE_CHECKING:
    from ils.config import StoreConfig

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


class StoreError(UserError, IOError):
    """A store operation failed; the message names the URI."""


@dataclass(frozen=True)
class S3Options:
    endpoint: Optional[str] = None
    region: str = "us-east-1"
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str = "AWS_SESSION_TOKEN"


def _s3_filesystem(opts: S3Options) -> pafs.S3FileSystem:
    kwargs: dict = {"region": opts.region}
    if opts.endpoint:
        parsed = urlparse(opts.endpoint if "://" in opts.endpoint else f"https://{opts.endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    access, secret = os.environ.get(opts.access_key_env), os.environ.get(opts.secret_key_env)
    token = os.environ.get(opts.session_token_env)
    if not (access and secret):
        try:  # boto3's default chain: profiles, SSO, container/IRSA credentials ...
            import boto3

            creds = boto3.Session().get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                access, secret, token = frozen.access_key, frozen.secret_key, frozen.token
        except Exception as exc:  # pragma: no cover - depends on the environment
            log.debug("boto3 credential chain unavailable: %s", exc)
    if access and secret:
        kwargs.update(access_key=access, secret_key=secret)
        if token:
            kwargs["session_token"] = token
    return pafs.S3FileSystem(**kwargs)


def resolve_uri(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """(file system, path) for a local path, file:// or s3:// URI."""
    if uri.startswith("s3://"):
        return _s3_filesystem(s3 or S3Options()), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    if "://" in uri:
        raise StoreError(f"unsupported store URI scheme: {uri!r} (use a path, file:// or s3://)")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


class Store:
    """Bytes, Parquet and PNG under one root URI."""

    def __init__(self, uri: str, s3: S3Options | None = None):
        self._s3 = s3 or S3Options()
        self.fs, self.root = resolve_uri(uri, self._s3)
        self.is_s3 = isinstance(self.fs, pafs.S3FileSystem)
        self.root_uri = f"s3://{self.root}" if self.is_s3 else self.root

    @classmethod
    def from_config(cls, cfg: "StoreConfig", uri: str | None = None) -> "Store":
        return cls(
            uri or cfg.uri,
            S3Options(cfg.endpoint, cfg.region, cfg.access_key_env, cfg.secret_key_env, cfg.session_token_env),
        )

    def __reduce__(self):  # picklable for Ray tasks and actors
        return (Store, (self.root_uri, self._s3))

    def __repr__(self) -> str:
        return f"Store({self.root_uri!r})"

    # -- paths -------------------------------------------------------------------------------
    def child(self, rel: str) -> "Store":
        """A store rooted at a sub-folder (or at another URI, if `rel` is absolute)."""
        if "://" in rel or rel.startswith("/"):
            return Store(rel, self._s3)
        return Store(self.uri(rel), self._s3)

    def path(self, rel: str = "") -> str:
        """File-system path of `rel`; a full URI or absolute path is resolved on its own.

        `./x` and `../x` name local paths relative to the working directory (as in a shell);
        other relative paths are relative to the store's root.
        """
        if rel.startswith(("./", "../")) or rel in (".", ".."):
            rel = str(Path(rel).resolve())
        if "://" in rel or rel.startswith("/"):
            fs, p = resolve_uri(rel, self._s3)
            if type(fs) is not type(self.fs):
                raise StoreError(f"{rel!r} is not on this store's file system ({self.root_uri})")
            return p
        rel = rel.strip("/")
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str = "") -> str:
        p = self.path(rel)
        return f"s3://{p}" if self.is_s3 else p

    def relative(self, path_or_uri: str) -> str:
        p = self.path(path_or_uri)
        if p == self.root:
            return ""
        if not p.startswith(self.root + "/"):
            raise StoreError(f"{path_or_uri!r} is not under {self.root_uri}")
        return p[len(self.root) + 1 :]

    # -- queries -----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def size(self, rel: str) -> int:
        info = self.fs.get_file_info(self.path(rel))
        if info.type != pafs.FileType.File:
            raise StoreError(f"not a file: {self.uri(rel)}")
        return int(info.size)

    def list(self, prefix: str = "", recursive: bool = True, suffix: str = "") -> list[str]:
        """Relative paths of the files under `prefix`, sorted, temporary files left out."""
        base = self.path(prefix)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
        out = []
        for info in infos:
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.File or name.startswith(TMP_PREFIX) or not name.endswith(suffix):
                continue
            # info.path is a file-system path; on S3 it has no scheme and no leading "/", so
            # relative() would read it as relative to the root: strip the root directly.
            fs_path = info.path
            out.append(fs_path[len(self.root) + 1 :] if fs_path.startswith(self.root + "/") else self.relative(fs_path))
        return sorted(out)

    # -- bytes -------------------------------------------------------------------------------
    def read_bytes(self, rel: str, max_bytes: int | None = None) -> bytes:
        path = self.path(rel)
        try:
            with self.fs.open_input_stream(path) as f:
                data = f.read(max_bytes + 1) if max_bytes else f.read()  # read(-1) fails in pyarrow 26
        except (FileNotFoundError, OSError) as exc:
            raise StoreError(f"cannot read {self.uri(rel)}: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise StoreError(f"{self.uri(rel)} is larger than {max_bytes} bytes")
        return data

    def _publish(self, rel: str, write) -> str:
        """Write through `write(stream)` and make the file visible under its name at once."""
        final = self.path(rel)
        parent = posixpath.dirname(final)
        self.fs.create_dir(parent, recursive=True)
        if self.is_s3:
            # An upload becomes visible once its stream closes, and closing also happens when
            # `write` fails (pyarrow cannot abort an upload): so write into memory first, and
            # upload only a complete file.
            buf = pa.BufferOutputStream()
            write(buf)
            data = buf.getvalue()
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return final
        tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(final)}")
        try:
            with self.fs.open_output_stream(tmp) as f:
                write(f)
            self.fs.move(tmp, final)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise
        return final

    def write_bytes(self, rel: str, data: bytes) -> str:
        return self._publish(rel, lambda f: f.write(data))

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def delete(self, rel: str) -> None:
        path = self.path(rel)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)

    # -- tables ------------------------------------------------------------------------------
    def write_parquet(self, rel: str, table: pa.Table) -> str:
        def write(f):
            pq.write_table(table, f, compression="zstd")

        return self._publish(rel, write)

    def read_parquet(self, rel: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
        """A Parquet file, or every Parquet file under a folder, as one table."""
        path = self.path(rel)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise StoreError(f"no Parquet data at {self.uri(rel)}")
        if info.type == pafs.FileType.File:
            return pq.read_table(path, filesystem=self.fs, columns=columns, schema=schema)
        files = [self.path(p) for p in self.list(rel, suffix=".parquet")]
        if not files:
            return schema.empty_table() if schema is not None else pa.table({})
        tables = [pq.read_table(p, filesystem=self.fs, columns=columns, schema=schema) for p in files]
        return pa.concat_tables(tables, promote_options="default")

    def iter_parquet(self, rel: str) -> Iterator[pa.RecordBatch]:
        for p in self.list(rel, suffix=".parquet") if not self.is_file(rel) else [rel]:
            yield from pq.ParquetFile(self.fs.open_input_file(self.path(p))).iter_batches()

    # -- images ------------------------------------------------------------------------------
    def write_png(self, rel: str, array: np.ndarray) -> str:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG", optimize=False)
        return self.write_bytes(rel, buf.getvalue())

    def read_png(self, rel: str) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(self.read_bytes(rel))) as im:
            return np.asarray(im)
