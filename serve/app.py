"""The online service: a FastAPI ingress on Ray Serve in front of the batched model deployment.

Endpoints: POST /v1/segment, GET /healthz, GET /readyz, GET /metrics, GET /openapi.json, GET /
(web page). Status codes of /v1/segment:

- 401 no bearer key, 403 wrong key (when keys are configured);
- 413 body larger than the upload limit (Content-Length checked first, the body is counted while
  read) and images whose declared size exceeds `serve.max_image_pixels` (documented choice: an
  image that is too large is a payload that is too large);
- 415 content that is not DICOM/PNG/JPEG by sniffing (the declared type is ignored), or a
  request body that is neither multipart/form-data nor JSON;
- 422 undecodable image, empty or too long instruction, malformed fields, `format=dicom-seg`
  for a non-DICOM upload;
- 503 + Retry-After when `serve.max_queued_requests` requests are already in flight (or Serve
  itself reports back-pressure); 504 when the model does not answer in `serve.request_timeout_s`.

Every response carries X-Request-ID (the client's when safe, else a new one); every log line of
this module carries it. Image bytes, instruction text and DICOM identifiers are never logged.
"""


import asyncio
import base64
import contextvars
import html
import io
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from ils.config import Config, load_config
from ils.instructions import EXAMPLE as INSTRUCTION_EXAMPLE
from ils.instructions import InstructionError, normalize
from ils.vocab import LESIONS
from serve import codecs
from serve import openapi as serve_openapi
from serve.auth import KeyChecker, key_digests
from serve.limits import InflightLimiter, PayloadTooLarge, check_content_length, read_limited, request_id
from serve.metrics import ServiceMetrics
from serve.model_deployment import ModelServer, validate

log = logging.getLogger("ils.serve")
WEB_DIR = Path(__file__).resolve().parent / "web"
FORM_FIELDS = {"image", "instruction", "format", "preview"}  # request body fields, as the OpenAPI document says
JSON_FIELDS = {"image_b64", "instruction", "format", "preview"}
WEB_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("ils_request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_ils_rid", False):
            record.msg = f"[request_id={REQUEST_ID.get()}] {record.msg}"
            record._ils_rid = True
        return True


log.addFilter(_RequestIdFilter())


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None, kind: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.kind = status, message, headers or {}, kind


def suggestions() -> list[str]:
    """Instruction suggestions for the web page, built from the vocabulary and templates."""
    from ils import templates, vocab

    out = [templates.instruction("global", lesion) for lesion in vocab.LESIONS]
    out.append(templates.instruction("basic", "cardiomegaly", ["heart"]))
    for lesion in vocab.LESIONS:
        if lesion != "cardiomegaly":
            out += [templates.instruction("basic", lesion, [loc]) for loc in vocab.LOCATIONS if loc != "heart"]
    out += [templates.instruction("lesion_inference", "opacity", [loc]) for loc in vocab.LOCATIONS if loc != "heart"]
    return out


def _index_html() -> str:
    options = "\n".join(f'<option value="{html.escape(s)}"></option>' for s in suggestions())
    return (WEB_DIR / "index.html").read_text().replace("<!--SUGGESTIONS-->", options)


def _parse_structured(instruction: str, answer: str) -> dict:
    """lesion/locations (and presence etc.) when the templates parse them; {} otherwise."""
    from ils.templates import parse_answer, parse_instruction

    try:
        q = parse_instruction(instruction)
    except ValueError:
        return {}
    out: dict[str, Any] = {"type": q.type, "lesion": q.lesion, "locations": list(q.locations)}
    try:
        a = parse_answer(instruction, answer)
        out.update(answer_presence=a.presence, answer_locations=list(a.locations))
        if a.inferred:
            out.update(inferred=a.inferred, certainty=a.certainty)
    except ValueError:
        pass
    return out


def _preview_png_b64(pixels: np.ndarray, max_side: int = 1024) -> str:
    from PIL import Image

    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _format(value: Any) -> str:
    """The `format` field or query value: exactly one of serve.openapi.FORMATS."""
    if value not in serve_openapi.FORMATS:
        raise HTTPError(422, "format must be 'json' or 'dicom-seg'")
    return value


def _no_unknown_fields(names, allowed: set[str]) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise HTTPError(422, f"unknown field(s) {', '.join(repr(n)[:40] for n in unknown[:5])}; expected {', '.join(sorted(allowed))}")


def _flag(value: Any) -> bool:
    """A form or query boolean: exactly 'true' or 'false'."""
    if value not in serve_openapi.BOOL_STRINGS:
        raise HTTPError(422, "preview must be 'true' or 'false'")
    return value == "true"


fastapi_app = FastAPI(
    title="ILS: instruction-guided lesion segmentation",
    version="0.1.0",
    description="Segment a lesion named by an instruction in a chest X-ray (DICOM, PNG or JPEG).",
)


@fastapi_app.middleware("http")
async def _request_id_middleware(request: Request, call_next):
    # Serve's proxy honours a client X-Request-ID (else makes one) and returns it in the
    # response header; use the same id so logs, body and header agree.
    rid = _serve_request_id() or request_id(request.headers.get("x-request-id"))
    request.state.request_id = rid
    token = REQUEST_ID.set(rid)
    try:
        response = await call_next(request)
    finally:
        REQUEST_ID.reset(token)
    if "x-request-id" not in response.headers and not _serve_request_id():
        response.headers["X-Request-ID"] = rid
    return response


def _serve_request_id() -> str:
    try:
        return serve.context._get_serve_request_context().request_id or ""
    except Exception:  # outside a Serve replica (e.g. plain FastAPI tests)
        return ""


@serve.deployment(name="Ingress")
@serve.ingress(fastapi_app)
class Ingress:
    """HTTP front: auth, limits, decoding, encoding; the model runs in the Model deployment."""

    def __init__(self, model, cfg: Config, key_digests_: list[str]):
        self.model = model
        self.cfg = cfg
        self.s = cfg.serve
        self.keys = KeyChecker(key_digests_)
        self.limiter = InflightLimiter(self.s.max_queued_requests)
        self.metrics = ServiceMetrics()
        self.index = _index_html()
        serve_openapi.install(fastapi_app, self.s)  # the contract of this configuration's limits
        # base64 JSON inflates the image by 4/3; leave room for the other fields
        self.max_body = (self.s.max_upload_bytes * 4) // 3 + 65536

    # ---- helpers -------------------------------------------------------------------------
    def _error(self, request: Request, status: int, message: str, headers: Optional[dict] = None,
               kind: Optional[str] = None) -> JSONResponse:
        body = {"error": message, "status": status, "request_id": request.state.request_id}
        if kind:
            body["kind"] = kind
        if kind in ("unsupported_lesion", "no_lesion", "several_lesions"):
            body["supported_lesions"] = list(LESIONS)
            body["example"] = INSTRUCTION_EXAMPLE
        return JSONResponse(body, status_code=status, headers=headers or {})

    def _auth(self, request: Request) -> None:
        status = self.keys.check(request.headers.get("authorization"))
        if status == 401:
            raise HTTPError(401, "missing API key: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})
        if status == 403:
            raise HTTPError(403, "invalid API key")

    async def _read_fields(self, request: Request) -> dict:
        """image bytes, instruction, format, preview from multipart or JSON, within the limits."""
        check_content_length(request.headers.get("content-length"), self.max_body)
        ctype = request.headers.get("content-type", "").lower()
        body = await read_limited(request.stream(), self.max_body)
        query = request.query_params
        fields: dict[str, Any] = {"format": _format(query.get("format", "json")), "preview": _flag(query.get("preview", "false"))}
        if ctype.startswith("multipart/form-data"):
            request._body = body  # let Starlette parse the already bounded body
            try:
                form = await request.form(max_files=2, max_fields=10, max_part_size=64 * 1024)
            except Exception as exc:
                raise HTTPError(422, f"malformed multipart body: {type(exc).__name__}") from None
            _no_unknown_fields(form.keys(), FORM_FIELDS)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPError(422, "multipart field 'image' (a file) is required")
            fields["image"] = await upload.read()
            fields["instruction"] = form.get("instruction")
            if form.get("format") is not None:
                fields["format"] = _format(form.get("format"))
            if form.get("preview") is not None:
                fields["preview"] = _flag(form.get("preview"))
        elif ctype.startswith("application/json"):
            try:
                data = json.loads(body)
            except ValueError:
                raise HTTPError(422, "body is not valid JSON") from None
            if not isinstance(data, dict):
                raise HTTPError(422, "JSON body must be an object")
            _no_unknown_fields(data.keys(), JSON_FIELDS)
            if not isinstance(data.get("image_b64"), str):
                raise HTTPError(422, "JSON field 'image_b64' (base64 string) is required")
            try:
                fields["image"] = codecs.b64decode_strict(data["image_b64"])
            except ValueError:
                raise HTTPError(422, "image_b64 is not valid base64") from None
            fields["instruction"] = data.get("instruction")
            if "format" in data:
                fields["format"] = _format(data["format"])
            if "preview" in data:
                if not isinstance(data["preview"], bool):
                    raise HTTPError(422, "JSON field 'preview' must be true or false")
                fields["preview"] = data["preview"]
        else:
            raise HTTPError(415, "send multipart/form-data (fields image, instruction) or application/json")
        if len(fields["image"]) > self.s.max_upload_bytes:
            raise HTTPError(413, f"image of {len(fields['image'])} bytes exceeds the limit of {self.s.max_upload_bytes} bytes")
        instruction = fields.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise HTTPError(422, "field 'instruction' must be a non-empty string")
        instruction = " ".join(instruction.split())
        if len(instruction) > self.s.max_instruction_chars:
            raise HTTPError(422, f"instruction longer than {self.s.max_instruction_chars} characters")
        fields["instruction"] = instruction
        try:
            fields["reading"] = normalize(instruction)
        except InstructionError as exc:
            raise HTTPError(422, str(exc), kind=exc.kind) from None
        return fields

    def _decode(self, data: bytes):
        from ils.imageio import ImageError, ImageTooLargeError, decode_image

        kind = codecs.sniff(data)  # 415 before any decoding
        try:
            return kind, decode_image(data, name="upload", max_pixels=self.s.max_image_pixels)
        except ImageTooLargeError as exc:
            raise HTTPError(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPError(422, str(exc)) from None
        except Exception as exc:  # a decoder bug must not crash the request handler
            raise HTTPError(422, f"undecodable image ({type(exc).__name__})") from None

    # ---- endpoints ------------------------------------------------------------------------
    @fastapi_app.get("/healthz", summary="liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @fastapi_app.get("/readyz", summary="readiness: the model is loaded")
    async def readyz(self, request: Request):
        try:
            info = await asyncio.wait_for(self.model.info.remote(), timeout=5.0)
        except Exception as exc:
            return self._error(request, 503, f"model not ready ({type(exc).__name__})")
        return {"ready": True, "model_id": info["model_id"]}

    @fastapi_app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(self) -> Response:
        self.metrics.inflight.set(self.limiter.current)
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    @fastapi_app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.index)

    @fastapi_app.get("/web/{name}", include_in_schema=False)
    async def web(self, name: str, request: Request) -> Response:
        if name not in WEB_FILES:
            return self._error(request, 404, "not found")
        return Response((WEB_DIR / name).read_bytes(), media_type=WEB_FILES[name])

    @fastapi_app.post("/v1/segment", summary="segment the lesion named by an instruction")
    async def segment(self, request: Request) -> Response:
        t0 = time.perf_counter()
        status = 500
        acquired = False
        try:
            self._auth(request)
            if not self.limiter.try_acquire():
                raise HTTPError(503, "service overloaded, retry later", {"Retry-After": str(self.s.retry_after_s)})
            acquired = True
            response = await self._segment(request, t0)
            status = response.status_code
            return response
        except PayloadTooLarge as exc:
            status = 413
            return self._error(request, 413, str(exc))
        except codecs.UnsupportedMediaError as exc:
            status = 415
            return self._error(request, 415, str(exc))
        except HTTPError as exc:
            status = exc.status
            log.info("rejected: %d %s", exc.status, exc.message if exc.status != 422 else "unprocessable request")
            return self._error(request, exc.status, exc.message, exc.headers, exc.kind)
        except Exception as exc:
            log.exception("internal error (%s)", type(exc).__name__)
            return self._error(request, 500, "internal error")
        finally:
            if acquired:
                self.limiter.release()
            self.metrics.observe(status, time.perf_counter() - t0)

    async def _segment(self, request: Request, t0: float) -> Response:
        from ray.serve.exceptions import BackPressureError

        fields = await self._read_fields(request)
        t_read = time.perf_counter()
        kind, decoded = await asyncio.to_thread(self._decode, fields["image"])
        if fields["format"] == "dicom-seg" and kind != codecs.KIND_DICOM:
            raise HTTPError(422, "format=dicom-seg needs a DICOM upload")
        t_dec = time.perf_counter()
        try:
            out = await asyncio.wait_for(
                self.model.segment.remote(decoded.pixels, fields["reading"].canonical), timeout=self.s.request_timeout_s
            )
        except BackPressureError:
            raise HTTPError(503, "model queue full, retry later", {"Retry-After": str(self.s.retry_after_s)}) from None
        except asyncio.TimeoutError:
            raise HTTPError(504, "the model did not answer in time") from None
        t_model = time.perf_counter()
        mask = out["mask"]
        self.metrics.batch_size.observe(out["batch_size"])
        self.metrics.observe_answer(out.get("answer_agreed"))
        reading = fields["reading"]
        parsed = _parse_structured(reading.canonical, out["answer"])
        rid = request.state.request_id
        log.info("answered: kind=%s size=%dx%d batch=%d present=%s", kind, mask.shape[1], mask.shape[0],
                 out["batch_size"], out["present"])
        if fields["format"] == "dicom-seg":
            label = codecs.seg_label(parsed.get("lesion"), parsed.get("locations"))
            try:
                data = await asyncio.to_thread(codecs.dicom_seg, fields["image"], mask, label=label, model_id=out["model_id"])
            except Exception as exc:
                raise HTTPError(422, f"cannot build a DICOM Segmentation for this image ({type(exc).__name__})") from None
            def hdr(text: str) -> str:
                return text.encode("ascii", "replace").decode("ascii")[:500]

            return Response(data, media_type="application/dicom", headers={
                "X-ILS-Answer": hdr(out["answer"]), "X-ILS-Message": hdr(out.get("message") or ""),
                "X-ILS-Present": str(out["present"]).lower(),
                "Content-Disposition": f'attachment; filename="seg-{rid}.dcm"'})
        body = {
            "request_id": rid,
            "instruction": fields["instruction"],
            "normalized_instruction": reading.canonical,
            "instruction_reading": reading.as_dict(),
            "answer": out["answer"],
            "message": out.get("message") or "",
            "raw_answer": out.get("raw_answer", out["answer"]),
            "raw_answer_agreed": out.get("answer_agreed"),
            "present": out["present"],
            "confidence": out["confidence"],
            "lesion": parsed.get("lesion"),
            "locations": parsed.get("locations"),
            "type": parsed.get("type"),
            "parsed": {k: v for k, v in parsed.items() if k.startswith("answer_") or k in ("inferred", "certainty")},
            "mask_png_b64": codecs.mask_png_b64(mask),
            "mask_rle": codecs.rle_encode(mask),
            "mask_rle_format": "coco-uncompressed-column-major",
            "mask_size": [int(mask.shape[0]), int(mask.shape[1])],
            "mask_pixels": int(mask.sum()),
            "model_id": out["model_id"],
            "batch_size": out["batch_size"],
            "timings": {
                "read_s": round(t_read - t0, 4), "decode_s": round(t_dec - t_read, 4),
                "queue_and_model_s": round(t_model - t_dec, 4), **{k: round(v, 4) for k, v in out["timings"].items()},
                "total_s": round(time.perf_counter() - t0, 4),
            },
        }
        if fields["preview"]:
            body["preview_png_b64"] = _preview_png_b64(decoded.pixels)
        return JSONResponse(body)


# ---- building, starting, stopping --------------------------------------------------------------
def build_app(cfg: Config, segmenter: str | Callable | None = None, *, env: Optional[dict] = None):
    """The Serve application (validated); raises UserError for configurations that cannot work."""
    validate(cfg)
    digests = key_digests(cfg.serve.api_keys_file, cfg.serve.allow_anonymous, env)
    if not digests:
        log.warning("anonymous access: no API key configured and serve.allow_anonymous=true")
    s, a = cfg.serve, cfg.serve.autoscaling
    model = ModelServer.options(
        autoscaling_config={
            "min_replicas": a.min_replicas, "initial_replicas": max(a.min_replicas, 1), "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests, "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s, "look_back_period_s": a.look_back_period_s,
            "metrics_interval_s": a.metrics_interval_s,
        },
        max_ongoing_requests=a.max_ongoing_requests,
        max_queued_requests=max(s.max_queued_requests, 1),
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
    ).bind(cfg, segmenter)
    return Ingress.options(
        max_ongoing_requests=s.max_queued_requests + 16,
        ray_actor_options={"num_cpus": s.ingress_num_cpus},
    ).bind(model, cfg, digests)


def app_builder(args: dict):
    """`serve deploy` entry point (serve/config.yaml): args {config: path, overrides: [k=v, ...]}."""
    args = dict(args or {})
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [o for o in overrides.split() if o]
    cfg = load_config(args.get("config"), overrides)
    return build_app(cfg)


@dataclass
class ServiceHandle:
    """A running local service: its URL; `stop()` deletes the app and shuts Serve down."""

    url: str
    app_name: str
    owns_ray: bool = False

    def stop(self, shutdown_ray: Optional[bool] = None) -> None:
        import ray

        try:
            serve.delete(self.app_name)
        except Exception as exc:  # pragma: no cover - best effort during shutdown
            log.debug("serve.delete: %s", exc)
        serve.shutdown()
        if (self.owns_ray if shutdown_ray is None else shutdown_ray) and ray.is_initialized():
            ray.shutdown()


def wait_ready(url: str, timeout_s: float = 120.0) -> dict:
    """Poll GET /readyz until it answers 200."""
    deadline = time.time() + timeout_s
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:  # noqa: S310 - loopback URL
                if resp.status == 200:
                    return json.loads(resp.read())
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"service at {url} not ready after {timeout_s:.0f} s ({last})")


def start_service(cfg: Config, *, port: Optional[int] = None, segmenter: str | Callable | None = None,
                  ready_timeout_s: float = 180.0) -> ServiceHandle:
    """Start Ray (via ils.runtime.init_ray) and Serve on cfg.serve.host:port, deploy, wait ready."""
    import ray

    from ils.runtime import init_ray

    app = build_app(cfg, segmenter)  # validate before starting anything
    owns_ray = not ray.is_initialized()
    init_ray(cfg)
    port = int(port or cfg.serve.port)
    serve.start(http_options={"host": cfg.serve.host, "port": port})
    serve.run(app, name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix)
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    prefix = cfg.serve.route_prefix.rstrip("/")
    url = f"http://{host}:{port}{prefix}"
    wait_ready(url, ready_timeout_s)
    log.info("service ready at %s", url)
    return ServiceHandle(url=url, app_name=cfg.serve.app_name, owns_ray=owns_ray)
