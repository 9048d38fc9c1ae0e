"""Batched ROSALIA inference: many (image, instruction) pairs per forward pass (LISA is batch-1).

Per batch: preprocess -> greedy answer generation from prompts ending in [SEG] (the last-layer
state before [SEG] depends only on the prompt, so it equals the teacher-forced one) -> SAM mask
decoding -> presence gating -> optional connected-component cleanup -> one decision per answer
(`ils.answers.decide`: the answer text is rebuilt when the generation contradicts the decision;
a gated-present finding whose mask comes out empty is reported absent).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Sequence

import numpy as np
import torch

from ils.answers import decide
from ils.errors import UserError
from ils.templates import parse_answer
from rosalia.contract import SegResult
from rosalia.data import encode_texts, preprocess_images, share_slots
from rosalia.prompting import style_of

log = logging.getLogger(__name__)


class SegmenterError(UserError, ValueError):
    """Bad input to `Segmenter.segment`."""


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def clean_answer(text: str) -> str:
    """Tidy decoded text: no space before punctuation, single spaces, leading [SEG]."""
    text = re.sub(r"\s+([.,])", r"\1", " ".join(text.split())).strip()
    return f"[SEG] {text}".strip() if text else "[SEG]"


def remove_small_components(mask: np.ndarray, min_frac: float) -> np.ndarray:
    """Drop connected components (8-connected) smaller than `min_frac` of the image area."""
    if min_frac <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_frac * mask.size
    keep[0] = False
    return keep[lab]


def count_components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))[1]) if mask.any() else 0


class Segmenter:
    """Implements `rosalia.contract.SegmenterLike` over a `RosaliaModel`."""

    def __init__(self, checkpoint: str | None = None, model_cfg=None, device: str | None = None,
                 cleanup_min_component_frac: float = 0.0, batch_size: int = 16, model=None, store=None):
        from ils.config import ModelConfig
        from rosalia.model import build_random, load_model

        model_cfg = model_cfg or ModelConfig()
        self.device = pick_device(device)
        if model is not None:
            self.model, self.model_id = model, f"rosalia-{model.spec.get('size')}:in-memory"
        elif checkpoint:
            self.model = load_model(checkpoint, model_cfg, store=store)
            self.model_id = f"rosalia-{self.model.spec.get('size')}:{checkpoint.rstrip('/').rsplit('/', 1)[-1]}"
        else:
            log.warning("no checkpoint given: using a RANDOMLY INITIALISED %s model (answers and masks are noise)", model_cfg.size)
            self.model = build_random(model_cfg)
            self.model_id = f"rosalia-{model_cfg.size}:random"
        self.model.eval().to(self.device)
        self.use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.cleanup = float(cleanup_min_component_frac)
        self.batch_size = int(batch_size)
        self.threshold = float(self.model.spec.get("presence_threshold", 0.5))

    def segment(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> list[SegResult]:
        """One SegResult per (image, instruction); masks at each image's own (H, W).

        Passing the same array object for several instructions encodes it once per batch."""
        if len(images) != len(instructions):
            raise SegmenterError(f"{len(images)} images but {len(instructions)} instructions")
        for k, img in enumerate(images):
            a = np.asarray(img)
            if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.number):
                raise SegmenterError(f"image {k}: expected a non-empty 2-D numeric array, got shape {a.shape}")
        for k, text in enumerate(instructions):
            if not isinstance(text, str) or not text.strip():
                raise SegmenterError(f"instruction {k} is empty")
        out: list[SegResult] = []
        for b in range(0, len(images), self.batch_size):
            out += self._segment_batch(images[b : b + self.batch_size], instructions[b : b + self.batch_size])
        return out

    @torch.no_grad()
    def _segment_batch(self, images, instructions) -> list[SegResult]:
        m, dev = self.model, self.device
        t0 = time.perf_counter()
        index, firsts = share_slots(id(img) for img in images)  # the same array object asked again: one SAM pass
        arrays = [np.clip(np.asarray(images[k], dtype=np.float32), 0.0, 1.0) for k in firsts]
        idx = torch.tensor(index, dtype=torch.long)
        clip, sam, sizes = preprocess_images(arrays, m.spec["image_size"], m.spec["clip_size"])
        clip, sizes, arrays = clip[idx], sizes[idx], [arrays[k] for k in index]
        enc = encode_texts(m.tokenizer, list(instructions), None, int(m.llava.config.image_seq_length), left_pad=True, add_seg=True,
                           prompt_style=style_of(m))
        t1 = time.perf_counter()
        ctx = torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if self.use_bf16 else torch.autocast(device_type=dev.type, enabled=False)
        with ctx:
            seq, seg_state = m.generate(enc["input_ids"].to(dev), enc["attention_mask"].to(dev), clip.to(dev),
                                        int(m.spec.get("max_new_tokens", 24)))
            t2 = time.perf_counter()
            low, iou, _ = m.decode_masks(seg_state, m.image_embeddings(sam.to(dev))[idx.to(dev)])
            prob = torch.sigmoid(m.presence_logits(seg_state, low, iou)).float().cpu().numpy()
        t3 = time.perf_counter()
        texts = m.tokenizer.batch_decode(seq, skip_special_tokens=True)
        results = []
        for i, arr in enumerate(arrays):
            logits = m.upscale(low[i : i + 1], sizes[i : i + 1].to(dev), arr.shape)[0]
            raw = (logits > 0).cpu().numpy()
            gated = m.presence_head is not None and not str(m.spec.get("presence_head")).startswith("untrained")  # converted LISA: ungated
            present = bool(prob[i] >= self.threshold) if gated else bool(raw.any())
            mask = remove_small_components(raw, self.cleanup) if present else np.zeros_like(raw)
            present = present and bool(mask.any())  # one decision: an empty mask is an absent finding
            d = decide(instructions[i], clean_answer(texts[i]), present, float(prob[i]))
            try:
                p = parse_answer(instructions[i], d.answer)
                parsed = {"type": p.type, "lesion": p.lesion, "locations": list(d.locations), "presence": p.presence,
                          "inferred": d.inferred, "certainty": d.certainty}
            except ValueError:
                parsed = {}
            results.append(SegResult(mask=mask, answer=d.answer, present=present, confidence=float(prob[i]), parsed=parsed,
                                     raw_answer=d.raw_answer, agreed=d.agreed, message=d.message))
        t4 = time.perf_counter()
        timings = {"preprocess_s": t1 - t0, "generate_s": t2 - t1, "mask_s": t3 - t2, "postprocess_s": t4 - t3, "batch_size": len(arrays)}
        for r in results:
            r.timings = dict(timings)
        return results
