"""Reading a study manifest (Parquet, CSV or JSONL) into the STUDY schema.

`image_uri` values may be absolute (`/data/x.dcm`, `s3://bucket/x.dcm`) or relative to the folder
that holds the manifest; `resolve_image_uris` makes them absolute so that every worker reads the
same file wherever it runs.
"""

from __future__ import annotations

import io
import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ils.errors import UserError
from ils.schema import STUDY, STUDY_REQUIRED, SchemaError, conform
from ils.store import Store


class ManifestError(UserError):
    """A manifest cannot be read or lacks required columns."""


def _read_table(store: Store, uri: str) -> pa.Table:
    if not store.is_file(uri):
        raise ManifestError(f"manifest not found: {store.uri(uri)}")
    data = store.read_bytes(uri)
    lower = uri.lower()
    try:
        if lower.endswith(".parquet"):
            return pq.read_table(io.BytesIO(data))
        if lower.endswith(".csv"):
            return pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        if lower.endswith((".jsonl", ".ndjson", ".json")):
            return pajson.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"cannot parse manifest {store.uri(uri)}: {exc}") from exc
    raise ManifestError(f"unsupported manifest format {uri!r}: use .parquet, .csv or .jsonl")


def resolve_image_uris(table: pa.Table, base: str) -> pa.Table:
    """Make relative image_uri values absolute against `base` (the manifest's folder URI)."""
    uris = table.column("image_uri").to_pylist()
    out = [u if (u is None or "://" in u or u.startswith("/")) else posixpath.join(base, u) for u in uris]
    return table.set_column(table.schema.get_field_index("image_uri"), "image_uri", pa.array(out, pa.string()))


def read_manifest(store: Store, uri: str) -> pa.Table:
    """The manifest as a STUDY table with absolute image URIs and unique study ids."""
    table = _read_table(store, uri)
    missing = [c for c in STUDY_REQUIRED if c not in table.column_names]
    if missing:
        raise ManifestError(f"manifest {store.uri(uri)} lacks required column(s) {missing}; has {table.column_names}")
    # ids may be numeric in CSV/JSON: make them strings before the schema cast
    for name in ("study_id", "subject_id", "dicom_id"):
        if name in table.column_names and not pa.types.is_string(table.schema.field(name).type):
            table = table.set_column(table.schema.get_field_index(name), name, table.column(name).cast(pa.string()))
    try:
        table = conform(table, STUDY)
    except SchemaError as exc:
        raise ManifestError(f"manifest {store.uri(uri)}: {exc}") from exc
    ids = table.column("study_id").to_pylist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ManifestError(f"manifest {store.uri(uri)} repeats study_id {dup!r}")
    base = posixpath.dirname(store.uri(uri))
    return resolve_image_uris(table, base)
