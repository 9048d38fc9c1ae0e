"""Anomaly `lite` with the anatomy network's lesion channels (`options.method`).

    NetAnomaly(cfg, image_size).anomaly_maps(images, anatomy) -> list[float32 (S, S) in [0, 1]]

`net`: the anomaly is the network's lesion probability, max(opacity, consolidation)
(ilsgen.anatomy_net.model), upsampled to the image size and kept inside the lungs of the anatomy
map. It needs no healthy-appearance fit, so a run without report-normal studies gets the same
maps as one with them. The network was trained on real radiographs' expert lesion masks
(ground-glass opacity, consolidation) and phantom lesions (ilsgen.anatomy_net.data).

`model`: the healthy-appearance z-score of `anomaly_lite.LiteAnomaly` (fitted on the run's
report-normal studies, or its local fallback when unfitted).

`auto` (default): where the run fitted a healthy model (at least `options.min_fit` normal
studies), the pixelwise max of that model's map and the network's; without a fit, the
network's alone (the local fallback is noise on real images). `describe()` says which was used;
the pipeline records it in the run (ilsgen.anomaly_fit).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ilsgen.stages.anatomy_lite import check_image
from ilsgen.stages.anomaly_lite import AnomalyError, LiteAnomaly, _masks

log = logging.getLogger(__name__)


class NetAnomaly(LiteAnomaly):
    """Lesion probability from the shipped network, the classic z-score, or their max."""

    def __init__(self, cfg: Any = None, image_size: int = 512) -> None:
        opts = dict(getattr(cfg, "options", None) or {})
        self.method = str(opts.get("method", "auto"))
        if self.method not in ("auto", "net", "model"):
            raise ValueError("options.method must be 'auto', 'net' or 'model'")
        self.weights_file = str(opts.get("net_weights", "") or "")
        self.threads = int(opts.get("threads", 0) or 0)
        super().__init__(cfg, image_size)

    @property
    def uses_fit(self) -> bool:
        return self.method != "net"

    def describe(self) -> dict[str, Any]:
        fit = f"healthy model fitted on {self.n_fit} report-normal studies" if self.fitted else "none"
        used = {"net": "network lesion probability",
                "model": "healthy-model z-score" if self.fitted else "unfitted local z-score",
                "auto": "max(healthy-model z-score, network lesion probability)" if self.fitted else "network lesion probability (no fit)"}
        return {"backend": "lite", "method": self.method, "fit": fit if self.uses_fit else "none needed", "map": used[self.method]}

    def anomaly_maps(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(images) != len(anatomy):
            raise AnomalyError("anomaly_maps needs one anatomy map per image")
        if self.method == "model":
            return super().anomaly_maps(images, anatomy)
        maps = self.net_maps(images, anatomy)
        if self.method == "auto" and self.fitted:
            maps = [np.maximum(a, b) for a, b in zip(maps, super().anomaly_maps(images, anatomy))]
        return maps

    def net_maps(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> list[np.ndarray]:
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
            a = np.clip(upsample(lesion, (self.size, self.size)), 0, 1)
            m = _masks(b if b.shape == (self.size, self.size) else _nearest(b, self.size))
            a[~(m["right"] | m["left"])] = 0
            out.append(a.astype(np.float32))
        return out


def _nearest(bits: np.ndarray, size: int) -> np.ndarray:
    iy = (np.arange(size) * bits.shape[0] // size).astype(np.intp)
    ix = (np.arange(size) * bits.shape[1] // size).astype(np.intp)
    return bits[np.ix_(iy, ix)]


__all__ = ["NetAnomaly"]
