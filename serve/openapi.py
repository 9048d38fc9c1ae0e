"""The OpenAPI contract of the service, exactly what the handlers enforce.

`install(app, serve_cfg)` replaces FastAPI's generated document with one that declares, for
every operation, each status code the handler can return with its content type and schema,
and the request limits of the running configuration (instruction length, upload size). The
instruction is declared with the open format `ils-instruction`: a sentence naming one of the
seven findings (see `x-ils-lesions`); others are answered 422.
"""

from __future__ import annotations

from typing import Any, Callable

from ils.instructions import EXAMPLE
from ils.vocab import LESIONS

FORMATS = ["json", "dicom-seg"]
BOOL_STRINGS = ["true", "false"]


def _error(description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        out["headers"] = headers
    return out


def _nullable(type_: str | list, **kw) -> dict:
    types = type_ if isinstance(type_, list) else [type_]
    return {"type": [*types, "null"], **kw}


def components() -> dict:
    """Schemas of the error and the JSON result."""
    str_list = {"type": "array", "items": {"type": "string"}}
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "an API key from serve.api_keys_file or ILS_API_KEYS"}},
        "schemas": {
            "Error": {
                "type": "object", "required": ["error", "status", "request_id"],
                "properties": {
                    "error": {"type": "string"}, "status": {"type": "integer"}, "request_id": {"type": "string"},
                    "kind": {"type": "string", "enum": ["unsupported_lesion", "no_lesion", "several_lesions"]},
                    "supported_lesions": {"type": "array", "items": {"type": "string", "enum": list(LESIONS)}},
                    "example": {"type": "string"},
                },
            },
            "InstructionReading": {
                "type": "object", "required": ["how", "type", "lesion", "locations", "matched"],
                "properties": {
                    "how": {"type": "string", "enum": ["template", "normalized"]},
                    "type": {"type": "string", "enum": ["basic", "global", "lesion_inference"]},
                    "lesion": {"type": "string", "enum": list(LESIONS)}, "locations": str_list,
                    "matched": {"type": "array", "items": {"type": "object", "required": ["typed", "read_as"],
                                "properties": {"typed": {"type": "string"}, "read_as": {"type": "string"}}}},
                },
            },
            "SegmentResult": {
                "type": "object",
                "required": ["request_id", "instruction", "normalized_instruction", "instruction_reading", "answer", "message",
                             "raw_answer", "raw_answer_agreed", "present", "confidence", "mask_png_b64", "mask_rle",
                             "mask_size", "mask_pixels", "model_id", "batch_size", "timings"],
                "properties": {
                    "request_id": {"type": "string"},
                    "instruction": {"type": "string", "description": "as sent (whitespace collapsed)"},
                    "normalized_instruction": {"type": "string", "description": "the template instruction given to the model"},
                    "instruction_reading": {"$ref": "#/components/schemas/InstructionReading"},
                    "answer": {"type": "string", "description": "starts with [SEG]; always agrees with `present`"},
                    "message": {"type": "string", "description": "the result in plain words"},
                    "raw_answer": {"type": "string", "description": "the model's generation before reconciliation"},
                    "raw_answer_agreed": _nullable("boolean", description="did the generation agree with `present`"),
                    "present": {"type": "boolean", "description": "the mask is empty if and only if false"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "lesion": _nullable("string"), "locations": _nullable("array", items={"type": "string"}),
                    "type": _nullable("string"),
                    "parsed": {"type": "object"},
                    "mask_png_b64": {"type": "string", "format": "byte"},
                    "mask_rle": {"type": "object", "required": ["size", "counts"],
                                 "properties": {"size": {"type": "array", "items": {"type": "integer"}},
                                                "counts": {"type": "array", "items": {"type": "integer", "minimum": 0}}}},
                    "mask_rle_format": {"type": "string", "enum": ["coco-uncompressed-column-major"]},
                    "mask_size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
                    "mask_pixels": {"type": "integer", "minimum": 0},
                    "model_id": {"type": "string"}, "batch_size": {"type": "integer", "minimum": 1},
                    "timings": {"type": "object", "additionalProperties": {"type": "number"}},
                    "preview_png_b64": {"type": "string", "format": "byte"},
                },
            },
        },
    }


def segment_operation(max_instruction_chars: int, max_upload_bytes: int) -> dict:
    """requestBody, parameters and responses of POST /v1/segment."""
    instruction = {"type": "string", "minLength": 1, "maxLength": max_instruction_chars, "format": "ils-instruction",
                   "example": EXAMPLE, "x-ils-lesions": list(LESIONS),
                   "description": "one finding, as a template instruction or typed freely ('Is there fluid in the left "
                                  "lower lobe?'); whitespace-only, off-vocabulary or several findings: 422"}
    fmt = {"type": "string", "enum": FORMATS, "default": "json"}
    image_b64_len = (max_upload_bytes * 4) // 3 + 4
    return {
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "format", "in": "query", "required": False, "schema": fmt},
            {"name": "preview", "in": "query", "required": False, "schema": {"type": "string", "enum": BOOL_STRINGS}},
        ],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image", "instruction"], "additionalProperties": False,
                "properties": {
                    "image": {"type": "string", "format": "binary", "maxLength": max_upload_bytes,
                              "description": "DICOM, PNG or JPEG (by content)"},
                    "instruction": instruction, "format": fmt,
                    "preview": {"type": "string", "enum": BOOL_STRINGS},
                },
            }},
            "application/json": {"schema": {
                "type": "object", "required": ["image_b64", "instruction"], "additionalProperties": False,
                "properties": {
                    "image_b64": {"type": "string", "format": "byte", "maxLength": image_b64_len},
                    "instruction": instruction, "format": fmt, "preview": {"type": "boolean"},
                },
            }},
        }},
        "responses": {
            "200": {"description": "the result: JSON, or a DICOM Segmentation with format=dicom-seg",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SegmentResult"}},
                                "application/dicom": {"schema": {"type": "string", "format": "binary"}}}},
            "401": _error("missing API key", {"WWW-Authenticate": {"schema": {"type": "string"}}}),
            "403": _error("wrong API key"),
            "413": _error("upload or image dimensions over the limit"),
            "415": _error("content is not DICOM/PNG/JPEG, or the body is neither multipart/form-data nor JSON"),
            "422": _error("undecodable image, malformed field, unsupported or missing finding in the instruction"),
            "500": _error("internal error"),
            "503": _error("overloaded; retry after Retry-After seconds", {"Retry-After": {"schema": {"type": "integer"}}}),
            "504": _error("the model did not answer in time"),
        },
    }


def _simple(description: str, media: str, schema: dict) -> dict:
    return {"description": description, "content": {media: {"schema": schema}}}


def install(app, serve_cfg) -> None:
    """Serve the exact contract at /openapi.json for this configuration."""
    from fastapi.openapi.utils import get_openapi

    def build() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            paths = doc.get("paths", {})
            for path, op in paths.items():
                for method in list(op):
                    op[method].pop("requestBody", None) if path != "/v1/segment" else None
            paths["/v1/segment"]["post"].update(segment_operation(serve_cfg.max_instruction_chars, serve_cfg.max_upload_bytes))
            paths["/healthz"]["get"]["responses"] = {"200": _simple("alive", "application/json", {
                "type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}})}
            paths["/readyz"]["get"]["responses"] = {
                "200": _simple("the model is loaded", "application/json", {
                    "type": "object", "required": ["ready", "model_id"],
                    "properties": {"ready": {"type": "boolean"}, "model_id": {"type": "string"}}}),
                "503": _error("the model is not ready"),
            }
            paths["/metrics"]["get"]["responses"] = {"200": _simple("Prometheus text exposition", "text/plain", {"type": "string"})}
            doc["components"] = components()
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi: Callable[[], dict] = build
