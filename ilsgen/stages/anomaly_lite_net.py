"""Anomaly `lite` with the anatomy network's lesion channels (`options.method`, default `net`).

    NetAnomaly(cfg, image_size).anomaly_maps(images, anatomy) -> list[float32 (S, S) in [0, 1]]

`net`: the anomaly is the network's lesion probability, max(opacity, consolidation)
(ilsgen.anatomy_net.model), upsampled to the image size and kept inside the lungs of the anatomy
map. It needs no healthy-appearance fit, so a run without report-normal studies is scored the
same as one with them; `fit` is then a no-op and the run records `fit: none needed`.
The network was trained on real radiographs' expert lesion masks (ground-glass opacity,
consolidation) and phantom lesions; see ilsgen.anatomy_net.data.

`model` / `local`: the healthy-appearance z-score of `anomaly_lite.LiteAnomaly` (fitted on the
run's report-normal studies, or its local fallback).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ilsgen.stages.anatomy_lite import check_image
from ilsgen.stages.anomaly_lite import AnomalyError, LiteAnomaly, _masks

log = logging.getLogger(__name__)


class NetAnomaly(LiteAnomaly):
    """Lesion probability from the shipped network (method `net`), or the classic z-score."""

    def __init__(self, cfg: Any = None, image_size: int = 512) -> None:
        opts = dict(getattr(cfg, "options", None) or {})
        self.method = str(opts.get("method", "net"))
        if self.method not in ("net", "model"):
            raise ValueError("options.method must be 'net' or 'model'")
        self.weights_file = str(opts.get("net_weights", "") or "")
        self.threads = int(opts.get("threads", 0) or 0)
        self.gain = float(opts.get("net_gain", 1.0))
        super().__init__(cfg, image_size)

    def describe(self) -> dict[str, Any]:
        if self.method == "net":
            return {"backend": "lite", "method": "net", "fit": "none needed (lesion probability of the anatomy network)"}
        return {"backend": "lite", "method": "model",
                "fit": f"healthy model on {self.n_fit} report-normal studies" if self.fitted else "unfitted local fallback"}

    def fit(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> "NetAnomaly":
        if self.method == "net":
            log.info("anomaly lite (net): no healthy-appearance fit needed")
            return self
        return super().fit(images, anatomy)

    def anomaly_maps(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.method != "net":
            return super().anomaly_maps(images, anatomy)
        if len(images) != len(anatomy):
            raise AnomalyError("anomaly_maps needs one anatomy map per image")
        from ilsgen.anatomy_net.model import CHANNELS, shared, upsample

        arrs = [check_image(im) for im in images]
        if not arrs:
            return []
        probs = shared(self.weights_file, self.threads).predict(arrs)
        out = []
        for p, bits in zip(probs, anatomy):
            b = np.asarray(bits)
            if b.ndim != 2:
                raise AnomalyError(f"anatomy map must be 2-D, got shape {b.shape}")
            lesion = np.maximum(p[CHANNELS.index("opacity")], p[CHANNELS.index("consolidation")])
            a = np.clip(upsample(lesion, (self.size, self.size)) * self.gain, 0, 1)
            m = _masks(b if b.shape == (self.size, self.size) else _nearest(b, self.size))
            a[~(m["right"] | m["left"])] = 0
            out.append(a.astype(np.float32))
        return out


def _nearest(bits: np.ndarray, size: int) -> np.ndarray:
    iy = (np.arange(size) * bits.shape[0] // size).astype(np.intp)
    ix = (np.arange(size) * bits.shape[1] // size).astype(np.intp)
    return bits[np.ix_(iy, ix)]


__all__ = ["NetAnomaly"]
