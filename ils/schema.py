"""Arrow schemas: the one place that defines studies, findings, masks, pairs and statuses.

Every reader and writer of these tables imports its schema from here. `conform` casts a table
(or a list of row dicts) to a schema and fails with the column name when something does not fit.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

_str = pa.string()
_strs = pa.list_(pa.string())

#: One study: one frontal image and its report. A user's own manifest has the same columns;
#: only study_id, image_uri and report are required, the rest may be null.
STUDY = pa.schema(
    [
        pa.field("study_id", _str, nullable=False),
        pa.field("subject_id", _str),
        pa.field("dicom_id", _str),
        pa.field("image_uri", _str, nullable=False),
        pa.field("report", _str),
        pa.field("split", _str),  # train | val | test
        pa.field("view", _str),  # PA | AP | ...
    ]
)
STUDY_REQUIRED: tuple[str, ...] = ("study_id", "image_uri", "report")

#: One structured mention of a lesion in a report (or in phantom ground truth).
FINDING = pa.schema(
    [
        pa.field("study_id", _str, nullable=False),
        pa.field("finding_idx", pa.int32(), nullable=False),
        pa.field("lesion", _str, nullable=False),  # one of ils.vocab.LESIONS
        pa.field("present", pa.bool_(), nullable=False),
        pa.field("certainty", _str),  # definite | tentative (null when absent)
        pa.field("locations", _strs),  # ils.vocab.LOCATIONS; empty = unspecified
        pa.field("sent_idx", pa.int32()),  # index of the sentence it comes from, -1 if none
        pa.field("sentence", _str),
        pa.field("entity", _str),  # the words of the report that named it
        pa.field("source", _str),  # rules | llm | llm_fallback | truth
    ]
)

#: One lesion mask instance (a 512x512 0/255 PNG in the store).
MASK = pa.schema(
    [
        pa.field("study_id", _str, nullable=False),
        pa.field("mask_id", _str, nullable=False),  # s{study}_{lesion}_{idx}
        pa.field("lesion", _str, nullable=False),
        pa.field("instance_idx", pa.int32(), nullable=False),
        pa.field("finding_idx", pa.int32()),
        pa.field("mask_uri", _str, nullable=False),  # relative to the run root
        pa.field("certainty", _str),
        pa.field("reported_locations", _strs),
        pa.field("grounded_locations", _strs),
        pa.field("area_frac", pa.float32()),
        pa.field("n_components", pa.int32()),
        pa.field("bbox", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in [0, 1]
        pa.field("score", pa.float32()),
    ]
)

#: One instruction-answer pair (SPEC section 2 fields plus structured fields).
PAIR = pa.schema(
    [
        pa.field("pair_id", _str, nullable=False),
        pa.field("study_id", _str, nullable=False),
        pa.field("subject_id", _str),
        pa.field("dicom_id", _str),
        pa.field("image_uri", _str, nullable=False),
        pa.field("split", _str),
        pa.field("instruction", _str, nullable=False),
        pa.field("answer", _str, nullable=False),
        pa.field("type", _str, nullable=False),  # basic | global | lesion_inference
        pa.field("target", _str, nullable=False),  # the lesion named in the instruction
        pa.field("lesion", _str, nullable=False),  # the true lesion type
        pa.field("locations", _strs),  # the locations named in the instruction or answer
        pa.field("reported_locations", _strs),
        pa.field("grounded_locations", _strs),
        pa.field("presence", pa.bool_(), nullable=False),
        pa.field("certainty", _str),
        pa.field("sent_idx", pa.int32()),
        pa.field("seg", pa.bool_(), nullable=False),  # True when the target mask is non-empty
        pa.field("mask_ids", _strs),
        pa.field("seg_mask_path", _str),  # relative to the run root; null for negatives
        pa.field("paraphrases", _strs),  # the instruction as people type it, validated (ils.paraphrase)
    ]
)

STATUS_OK = "ok"
STATUS_FAILED = "failed"

#: What happened to one study in one pipeline run.
STUDY_STATUS = pa.schema(
    [
        pa.field("study_id", _str, nullable=False),
        pa.field("status", _str, nullable=False),  # ok | failed
        pa.field("stage", _str),  # the stage that failed
        pa.field("reason", _str),  # a readable reason, never patient data
        pa.field("n_findings", pa.int32()),
        pa.field("n_masks", pa.int32()),
        pa.field("n_pairs", pa.int32()),
        pa.field("report_source", _str),
        pa.field("stage_seconds", pa.map_(_str, pa.float64())),
        pa.field("skipped_stages", pa.list_(_str)),  # stages not needed by the report (ilsgen.gating)
        pa.field("transient", pa.bool_()),  # a failure worth retrying: the next run does it again (ilsgen.failures)
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "study": STUDY,
    "finding": FINDING,
    "mask": MASK,
    "pair": PAIR,
    "study_status": STUDY_STATUS,
}


class SchemaError(ValueError):
    """A table does not fit its schema."""


def conform(data: pa.Table | Iterable[Mapping[str, Any]], schema: pa.Schema, *, fill_missing: bool = True) -> pa.Table:
    """Cast a table or rows to `schema` (column order, types); missing nullable columns become null."""
    if not isinstance(data, pa.Table):
        rows = list(data)
        if not rows:
            return schema.empty_table()
        columns = {}
        for f in schema:
            values = [r.get(f.name) for r in rows]
            try:
                columns[f.name] = pa.array(values, type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                bad = next((v for v in values if v is not None), None)
                raise SchemaError(f"column {f.name!r}: cannot store values such as {bad!r} as {f.type}: {exc}") from exc
        data = pa.table(columns)
    table = data
    if table.num_columns == 0 and table.num_rows == 0:
        return schema.empty_table()
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SchemaError(f"column {f.name!r}: cannot cast {col.type} to {f.type}: {exc}") from exc
        elif fill_missing and f.nullable:
            col = pa.nulls(table.num_rows, f.type)
        else:
            raise SchemaError(f"missing required column {f.name!r}")
        if not f.nullable and col.null_count:
            raise SchemaError(f"column {f.name!r} has {col.null_count} null value(s) but is required")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
