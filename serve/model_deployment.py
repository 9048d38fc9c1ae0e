"""The model deployment: one batched Segmenter per replica, dynamic batching with @serve.batch.

Requests from the ingress (already decoded float32 images + instruction) are grouped by
`@serve.batch` (max size and wait from `serve.max_batch_size` / `serve.batch_wait_timeout_s`)
and run as one `Segmenter.segment` call in a worker thread, so the replica's event loop keeps
accepting requests while a batch runs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from typing import Any, Callable, Optional

import numpy as np
from ray import serve

from ils.config import Config
from ils.errors import UserError

log = logging.getLogger("ils.serve.model")


class ServeConfigError(UserError):
    """The serve configuration cannot work (e.g. autoscaling that can never scale)."""


def validate(cfg: Config) -> None:
    """Refuse configurations that Serve would accept but that cannot work."""
    s, a = cfg.serve, cfg.serve.autoscaling
    if a.min_replicas < 0 or a.max_replicas < 1:
        raise ServeConfigError("serve.autoscaling: need min_replicas >= 0 and max_replicas >= 1")
    if a.min_replicas > a.max_replicas:
        raise ServeConfigError(
            f"serve.autoscaling.min_replicas ({a.min_replicas}) > max_replicas ({a.max_replicas})"
        )
    if not 0 < a.target_ongoing_requests < a.max_ongoing_requests:
        raise ServeConfigError(
            f"serve.autoscaling.target_ongoing_requests ({a.target_ongoing_requests}) must be > 0 and below "
            f"max_ongoing_requests ({a.max_ongoing_requests}), otherwise the deployment never scales up"
        )
    if s.max_batch_size < 1 or s.batch_wait_timeout_s < 0:
        raise ServeConfigError("serve.max_batch_size must be >= 1 and serve.batch_wait_timeout_s >= 0")
    if s.max_batch_size > a.max_ongoing_requests:
        raise ServeConfigError(
            f"serve.max_batch_size ({s.max_batch_size}) exceeds autoscaling.max_ongoing_requests "
            f"({a.max_ongoing_requests}): batches could never fill"
        )
    if s.max_queued_requests < 1 or s.max_upload_bytes < 1 or s.max_instruction_chars < 1:
        raise ServeConfigError("serve.max_queued_requests, max_upload_bytes and max_instruction_chars must be >= 1")


def resolve_factory(spec: str | Callable) -> Callable:
    """A Segmenter class/factory from an import path 'module:attr' (or the callable itself)."""
    if callable(spec):
        return spec
    module, _, attr = str(spec).partition(":")
    if not module or not attr:
        raise ServeConfigError(f"serve.segmenter must look like 'module:Class', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ServeConfigError(f"cannot import serve.segmenter {spec!r}: {exc}") from exc


def _accepts(fn: Callable, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def checkpoint_of(cfg: Config) -> Optional[str]:
    return cfg.serve.checkpoint or cfg.model.checkpoint


def result_dict(res: Any, batch_size: int, model_s: float) -> dict:
    """A SegResult as a plain dict for the ingress (mask stays a numpy bool array)."""
    return {
        "mask": np.asarray(res.mask, dtype=bool),
        "answer": str(res.answer),
        "raw_answer": str(getattr(res, "raw_answer", "") or res.answer),
        "answer_agreed": getattr(res, "agreed", None),
        "message": str(getattr(res, "message", "") or ""),
        "present": bool(res.present),
        "confidence": float(res.confidence),
        "parsed": dict(res.parsed or {}),
        "timings": {**{k: float(v) for k, v in (res.timings or {}).items()}, "model_s": model_s},
        "batch_size": batch_size,
    }


@serve.deployment(name="Model")
class ModelServer:
    """Holds one Segmenter; `segment(image, instruction)` is batched across callers."""

    def __init__(self, cfg: Config, segmenter: str | Callable | None = None):
        factory = resolve_factory(segmenter or cfg.serve.segmenter)
        ckpt = checkpoint_of(cfg)
        if ckpt is None:
            log.warning("no checkpoint configured (serve.checkpoint / model.checkpoint): serving a tiny RANDOM model")
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"checkpoint": ckpt, "model_cfg": cfg.model, "device": None}
        if ckpt and _accepts(factory, "store"):  # checkpoints live in the store (local or s3://)
            from ils.store import Store

            kwargs["store"] = Store.from_config(cfg.store)
        self.segmenter = factory(**kwargs)
        self.model_id = str(getattr(self.segmenter, "model_id", "unknown"))
        self.delay_s = float(cfg.serve.model_delay_s)
        self.segment_batch.set_max_batch_size(int(cfg.serve.max_batch_size))
        self.segment_batch.set_batch_wait_timeout_s(float(cfg.serve.batch_wait_timeout_s))
        log.info("model %s loaded in %.1f s (max_batch_size=%d)", self.model_id, time.perf_counter() - t0,
                 cfg.serve.max_batch_size)

    def info(self) -> dict:
        return {"model_id": self.model_id, "ready": True}

    def _run(self, images: list[np.ndarray], instructions: list[str]) -> tuple[list, float]:
        t0 = time.perf_counter()
        results = self.segmenter.segment(images, instructions)
        if self.delay_s:
            time.sleep(self.delay_s)
        return results, time.perf_counter() - t0

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def segment_batch(self, images: list[np.ndarray], instructions: list[str]) -> list[dict]:
        results, model_s = await asyncio.to_thread(self._run, list(images), list(instructions))
        if len(results) != len(images):
            raise RuntimeError(f"segmenter returned {len(results)} results for {len(images)} inputs")
        return [result_dict(r, len(images), model_s) for r in results]

    async def segment(self, image: np.ndarray, instruction: str) -> dict:
        out = await self.segment_batch(image, instruction)
        out["model_id"] = self.model_id
        return out
