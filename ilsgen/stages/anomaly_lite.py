"""Anomaly `lite`: a healthy-appearance model fitted on the run's own report-normal studies.

    m = LiteAnomaly(cfg: StageConfig, image_size: int)
    m.fit(images, anatomy) -> m             # normal studies only; images (S,S) float, anatomy bit maps
    state = m.to_state(); m2 = LiteAnomaly.from_state(state, cfg, image_size)   # broadcastable dict
    m.anomaly_maps(images, anatomy) -> list[float32 (S, S) in [0, 1]]

Method. Each lung is registered into a canonical frame (its bounding box stretched to a
`grid` x `grid` square, default 48), after intensity normalisation with two anchors that lesions
barely move: the 20th percentile of lung pixels (aerated lung) and the median of the heart
(soft tissue), xn = (x - p20_lung) / (heart_median - p20_lung). Fitting stores the per-pixel mean
and standard deviation of xn in that frame, per side. The anomaly of a lung pixel is the positive
z-score z = (xn - mean) / max(std, std_floor), mapped to [0, 1] as clip(z / z_scale, 0, 1)
(z_scale default 5, so the usual threshold 0.5 means z = 2.5; 6 and 7.5 measured worse on phantoms), lightly smoothed; outside the lungs
it is 0. Lesions are bright on a CXR, so only positive residuals count (|I - I_healthy| of SPEC
section 2 with the dark direction dropped).

Unfitted fallback (no normal studies yet, or `options.mode: local`): the healthy appearance is a
local background, the 30th percentile of the normalised lung intensities in a window of
`options.window` (default 1/6 of the image), and z is the residual over a robust global sigma.
A model fitted on fewer than `options.min_fit` (default 5) images stays in fallback mode.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ils.vocab import region_bit
from ilsgen.stages.anatomy_lite import check_image, resize

log = logging.getLogger(__name__)

_SIDES = ("right", "left")


class AnomalyError(ValueError):
    """Inputs the anomaly stage cannot use (shapes differ, bad state)."""


def _masks(bits: np.ndarray) -> dict[str, np.ndarray]:
    b = np.asarray(bits).astype(np.uint16)
    return {
        "right": (b & np.uint16(region_bit("right lung"))) != 0,
        "left": (b & np.uint16(region_bit("left lung"))) != 0,
        "heart": (b & np.uint16(region_bit("heart"))) != 0,
    }


def normalise(x: np.ndarray, m: dict[str, np.ndarray]) -> np.ndarray:
    """Intensity normalisation anchored on aerated lung (p20) and the heart median."""
    lung = m["right"] | m["left"]
    lo = float(np.percentile(x[lung], 20)) if lung.any() else float(np.percentile(x, 20))
    hi = float(np.median(x[m["heart"]])) if m["heart"].sum() > 10 else float(np.percentile(x, 80))
    return (x - lo) / max(hi - lo, 0.05)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if ys.size < 20:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


class LiteAnomaly:
    """Per-pixel healthy mean/std in a lung-registered frame; positive z-scores as anomaly."""

    def __init__(self, cfg: Any = None, image_size: int = 512) -> None:
        opts = dict(getattr(cfg, "options", None) or {})
        self.size = int(image_size)
        self.work = int(opts.get("work_size", 256))
        self.grid = int(opts.get("grid", 48))
        self.z_scale = float(opts.get("z_scale", 5.0))
        self.std_floor = float(opts.get("std_floor", 0.05))
        self.min_fit = int(opts.get("min_fit", 5))
        self.window = float(opts.get("window", 1 / 6))
        self.mode = str(opts.get("mode", "auto"))
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        self.n_fit = 0
        weights = getattr(cfg, "weights", None)
        if weights:
            with np.load(weights) as data:
                self.set_state({k: data[k] for k in data.files})

    # -- state --------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.n_fit >= self.min_fit and bool(self.mean) and self.mode != "local"

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"n_fit": np.int64(self.n_fit), "grid": np.int64(self.grid)}
        for side in self.mean:
            state[f"mean_{side}"] = self.mean[side]
            state[f"std_{side}"] = self.std[side]
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            self.n_fit = int(state["n_fit"])
            self.grid = int(state["grid"])
            self.mean = {s: np.asarray(state[f"mean_{s}"], np.float32) for s in _SIDES if f"mean_{s}" in state}
            self.std = {s: np.asarray(state[f"std_{s}"], np.float32) for s in _SIDES if f"std_{s}" in state}
        except (KeyError, TypeError, ValueError) as exc:
            raise AnomalyError(f"not a LiteAnomaly state: {exc}") from exc

    @classmethod
    def from_state(cls, state: dict[str, Any], cfg: Any = None, image_size: int = 512) -> "LiteAnomaly":
        obj = cls(cfg, image_size)
        obj.set_state(state)
        return obj

    # -- fit ----------------------------------------------------------------------------------
    def _prepare(self, image: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        img = check_image(image)
        b = np.asarray(bits)
        if b.ndim != 2:
            raise AnomalyError(f"anatomy map must be 2-D, got shape {b.shape}")
        x = resize(img, self.work)
        idx = (np.arange(self.work) * b.shape[0] // self.work).astype(np.intp)
        idy = (np.arange(self.work) * b.shape[1] // self.work).astype(np.intp)
        m = _masks(b[np.ix_(idx, idy)])
        return normalise(x, m), m

    def _to_canonical(self, xn: np.ndarray, lung: np.ndarray) -> np.ndarray | None:
        box = _bbox(lung)
        if box is None:
            return None
        y0, y1, x0, x1 = box
        g = self.grid
        ys = y0 + (np.arange(g) + 0.5) * (y1 - y0) / g - 0.5
        xs = x0 + (np.arange(g) + 0.5) * (x1 - x0) / g - 0.5
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        vals = ndi.map_coordinates(xn, [yy, xx], order=1, mode="nearest")
        inside = ndi.map_coordinates(lung.astype(np.float32), [yy, xx], order=1, mode="nearest") > 0.5
        return np.where(inside, vals, np.nan)

    def fit(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> "LiteAnomaly":
        if len(images) != len(anatomy):
            raise AnomalyError("fit needs one anatomy map per image")
        stacks: dict[str, list[np.ndarray]] = {s: [] for s in _SIDES}
        for img, bits in zip(images, anatomy):
            xn, m = self._prepare(img, bits)
            for side in _SIDES:
                c = self._to_canonical(xn, m[side])
                if c is not None:
                    stacks[side].append(c)
        n = min(len(v) for v in stacks.values())
        for side in _SIDES:
            if stacks[side]:
                arr = np.stack(stacks[side])
                with np.errstate(all="ignore"), _quiet():
                    mean = np.nanmedian(arr, axis=0)
                    std = 1.4826 * np.nanmedian(np.abs(arr - mean), axis=0)
                self.mean[side] = np.nan_to_num(mean, nan=float(np.nanmean(mean)) if np.isfinite(mean).any() else 0.0).astype(np.float32)
                self.std[side] = np.nan_to_num(std, nan=self.std_floor).astype(np.float32)
        self.n_fit = int(n)
        log.info("anomaly lite: fitted on %d normal studies", self.n_fit)
        return self

    # -- apply --------------------------------------------------------------------------------
    def anomaly_maps(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(images) != len(anatomy):
            raise AnomalyError("anomaly_maps needs one anatomy map per image")
        return [self.anomaly_one(i, a) for i, a in zip(images, anatomy)]

    def anomaly_one(self, image: np.ndarray, bits: np.ndarray) -> np.ndarray:
        xn, m = self._prepare(image, bits)
        z = self._z_model(xn, m) if self.fitted else self._z_local(xn, m)
        a = np.clip(z / self.z_scale, 0, 1)
        a = ndi.gaussian_filter(a, sigma=1.0)
        a[~(m["right"] | m["left"])] = 0
        return resize(a.astype(np.float32), self.size).clip(0, 1).astype(np.float32)

    def _z_model(self, xn: np.ndarray, m: dict[str, np.ndarray]) -> np.ndarray:
        z = np.zeros_like(xn)
        for side in _SIDES:
            box = _bbox(m[side])
            if box is None or side not in self.mean:
                continue
            y0, y1, x0, x1 = box
            ys, xs = np.nonzero(m[side])
            g = self.grid
            cy = (ys + 0.5 - y0) * g / (y1 - y0) - 0.5
            cx = (xs + 0.5 - x0) * g / (x1 - x0) - 0.5
            mu = ndi.map_coordinates(self.mean[side], [cy, cx], order=1, mode="nearest")
            sd = ndi.map_coordinates(self.std[side], [cy, cx], order=1, mode="nearest")
            z[ys, xs] = (xn[ys, xs] - mu) / np.maximum(sd, self.std_floor)
        return np.maximum(z, 0)

    def _z_local(self, xn: np.ndarray, m: dict[str, np.ndarray]) -> np.ndarray:
        lung = m["right"] | m["left"]
        if not lung.any():
            return np.zeros_like(xn)
        filled = np.where(lung, xn, np.percentile(xn[lung], 30))
        win = max(3, int(self.window * xn.shape[0]))
        bg = ndi.percentile_filter(filled, 30, size=win)
        resid = (xn - bg)[lung]
        sigma = max(1.4826 * float(np.median(np.abs(resid - np.median(resid)))), self.std_floor)
        z = np.where(lung, (xn - bg) / sigma, 0)
        return np.maximum(z, 0)


class _quiet:
    """Silence numpy's all-NaN slice warnings."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)
