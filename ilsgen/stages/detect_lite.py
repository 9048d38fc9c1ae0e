"""Detect `lite`: candidate boxes from connected components of the anomaly map (no weights).

    LiteDetector(cfg: StageConfig, image_size: int).detect(images, anomaly) -> list[list[Box]]

Per image: threshold the anomaly map at `options.threshold` (default 0.5), close small gaps,
label 8-connected components, drop those under `options.min_area_frac` (default 0.0005 of the
image), and return one Box per component in pixel coordinates of the map (x1, y1 exclusive),
score = mean anomaly over the component (its peak with `options.score: peak`), label None.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ilsgen.stages.base import Box


class DetectError(ValueError):
    """Anomaly maps the detector cannot read."""


class LiteDetector:
    """Boxes around thresholded anomaly components."""

    def __init__(self, cfg: Any = None, image_size: int = 512) -> None:
        opts = dict(getattr(cfg, "options", None) or {})
        self.size = int(image_size)
        self.threshold = float(opts.get("threshold", 0.5))
        self.min_area_frac = float(opts.get("min_area_frac", 0.0005))
        self.score = str(opts.get("score", "mean"))
        if self.score not in ("mean", "peak"):
            raise ValueError("options.score must be 'mean' or 'peak'")

    def detect(self, images: Sequence[np.ndarray], anomaly: Sequence[np.ndarray]) -> list[list[Box]]:
        if len(images) != len(anomaly):
            raise DetectError("detect needs one anomaly map per image")
        return [self.detect_one(a) for a in anomaly]

    def detect_one(self, amap: np.ndarray) -> list[Box]:
        a = np.asarray(amap, dtype=np.float32)
        if a.ndim != 2:
            raise DetectError(f"anomaly map must be 2-D, got shape {a.shape}")
        hot = ndi.binary_closing(a >= self.threshold, structure=np.ones((3, 3), bool))
        lab, n = ndi.label(hot, structure=np.ones((3, 3), bool))
        boxes: list[Box] = []
        min_px = self.min_area_frac * a.size
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            if sl is None:
                continue
            comp = lab[sl] == i
            if comp.sum() < min_px:
                continue
            vals = a[sl][comp]
            score = float(vals.max() if self.score == "peak" else vals.mean())
            boxes.append(Box(float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop), min(score, 1.0)))
        boxes.sort(key=lambda b: -b.score)
        return boxes
