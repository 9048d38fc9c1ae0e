"""Anatomy `lite` (default method `net`): the project's own small U-Net, weights shipped.

    NetAnatomy(cfg: StageConfig, image_size: int).segment(images) -> list[uint16 (S, S)]
    NetAnatomy(...).maps(image, shape) -> dict channel -> float32 probability (H, W)
    NetAnatomy(...).bits_at(image, shape) -> uint16 bit map at any (H, W)

The network (ilsgen.anatomy_net.model) predicts both lungs' whole outlines, the visible lungs
(stopping at the heart/mediastinal border, the pipeline's and the phantoms' convention), the
cardiac region and two lesion probabilities, from the image stretched to its input size (160).
Probabilities are upsampled bilinearly to the requested size and thresholded at 0.5, the heart at
`options.heart_level` (0.7: only where the network is sure, so the heart stays inside the
cardiomediastinum; chosen after seeing the fold-4 held-out figures at 0.5-0.8, see
docs/real_images.md): heart = the largest heart component (holes filled); each lung = the visible-lung pixels outside
the heart on its side of the midline (`midline`: the emptiest column between the lungs), kept as
its largest component plus pieces of at least 10 % of it. Zones split each lung by its vertical
extent at `options.zone_fractions` (CXAS-style, as `classic`). Where the network finds no
plausible lung on a side (under 1 % of the image) or no heart, the fixed template of `classic`
is used for that part and a warning is logged.

`options.method: classic` selects the intensity/shape-model method of `anatomy_lite.LiteAnatomy`
(shaped for phantoms); `options.weights` a different weights file; `options.threads` torch threads.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ils.vocab import ZONE_KINDS, region_bit, zone_name
from ilsgen.stages.anatomy_lite import LiteAnatomy, check_image, largest_component, template

log = logging.getLogger(__name__)


def _components(mask: np.ndarray, keep_fraction: float = 0.1) -> np.ndarray:
    """The largest component plus those of at least `keep_fraction` of its size, holes filled."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return ndi.binary_fill_holes(mask)
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1
    return ndi.binary_fill_holes(np.isin(lab, keep))


def midline(lungs: np.ndarray) -> int:
    """The column between the lungs: the emptiest column of the central 30-70 % (lungs never
    cross the mediastinum), the middle of the widest such gap."""
    w = lungs.shape[1]
    lo, hi = int(0.3 * w), int(0.7 * w)
    prof = lungs[:, lo:hi].sum(axis=0)
    if prof.size == 0:
        return w // 2
    low = np.flatnonzero(prof <= prof.min())
    runs = np.split(low, np.flatnonzero(np.diff(low) > 1) + 1)
    best = max(runs, key=len)
    return lo + int(round(float(best.mean()))) + 1


class NetAnatomy(LiteAnatomy):
    """Lungs, heart and zones from the shipped anatomy network (CPU, no download)."""

    def __init__(self, cfg: Any = None, image_size: int = 512) -> None:
        super().__init__(cfg, image_size)
        opts = dict(getattr(cfg, "options", None) or {})
        self.method = str(opts.get("method", "net"))
        if self.method not in ("net", "classic"):
            raise ValueError("options.method must be 'net' or 'classic'")
        self.weights = str(opts.get("weights", "") or "")
        self.threads = int(opts.get("threads", 0) or 0)
        self.heart_level = float(opts.get("heart_level", 0.7))
        self._net = None

    @property
    def net(self):
        if self._net is None:
            from ilsgen.anatomy_net.model import shared

            self._net = shared(self.weights, self.threads)
        return self._net

    def describe(self) -> dict[str, Any]:
        """What made the anatomy (for run records)."""
        if self.method == "classic":
            return {"backend": "lite", "method": "classic"}
        meta = self.net.meta
        return {"backend": "lite", "method": "net", "weights": str(self.net.path), "command": meta.get("command"),
                "held_out_rule": meta.get("data", {}).get("held_out_rule")}

    # -- public -----------------------------------------------------------------------------
    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.method == "classic":
            return super().segment(images)
        arrs = [check_image(im) for im in images]
        probs = self.net.predict(arrs) if arrs else []
        return [self.bits_from(p, (self.size, self.size)) for p in probs]

    def segment_one(self, image: np.ndarray) -> np.ndarray:
        if self.method == "classic":
            return super().segment_one(image)
        return self.segment([image])[0]

    def maps(self, image: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Every channel's probability at `shape` (H, W)."""
        from ilsgen.anatomy_net.model import CHANNELS, upsample

        p = self.net.predict([check_image(image)])[0]
        return {c: upsample(p[i], shape) for i, c in enumerate(CHANNELS)}

    def bits_at(self, image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """uint16 bit map at `shape` (H, W) of one image."""
        if self.method == "classic":
            from ilsgen.anatomy_files import resize_bits

            return resize_bits(super().segment_one(image), shape)
        return self.bits_from(self.net.predict([check_image(image)])[0], shape)

    # -- steps --------------------------------------------------------------------------------
    def regions(self, prob: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(right lung, left lung, heart) boolean masks at `shape` from the (C, N, N) probabilities."""
        from ilsgen.anatomy_net.model import CHANNELS, upsample

        c = {n: i for i, n in enumerate(CHANNELS)}
        up = lambda name: upsample(prob[c[name]], shape)
        heart = up("heart") > self.heart_level
        heart = ndi.binary_fill_holes(largest_component(heart)) if heart.any() else heart
        vis = (up("lung_visible") > 0.5) & ~heart
        cols = np.arange(shape[1])[None, :]
        mid = midline(vis)
        right = _components(vis & (cols < mid))
        left = _components(vis & (cols >= mid)) & ~right
        h, w = shape
        tr, tl, th = (self._template(m, shape) for m in template(128))
        if right.sum() < 0.01 * h * w:
            log.warning("anatomy lite: no plausible right lung found; using the template")
            right = tr & ~heart
        if left.sum() < 0.01 * h * w:
            log.warning("anatomy lite: no plausible left lung found; using the template")
            left = tl & ~heart & ~right
        if heart.sum() < 0.003 * h * w:
            log.warning("anatomy lite: no plausible heart found; using the template")
            heart = th & ~(right | left)
        return right, left, heart

    @staticmethod
    def _template(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        from ilsgen.anatomy_net.model import upsample

        return upsample(mask.astype(np.float32), shape) >= 0.5

    def bits_from(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        right, left, heart = self.regions(prob, shape)
        bits = np.zeros(shape, np.uint16)
        bits[heart] |= region_bit("heart")
        for side, lung in (("right", right), ("left", left)):
            for kind, zone in zip(ZONE_KINDS, self.split_zones(lung)):
                bits[zone] |= region_bit(zone_name(side, kind))
        return bits


__all__ = ["NetAnatomy"]
