"""Anatomy `lite`: lungs, heart and the eight lung zones from intensity and shape (no weights).

    LiteAnatomy(cfg: StageConfig, image_size: int).segment(images) -> list[uint16 (S, S)]

Bits follow `ils.vocab.ATOMIC_REGIONS` (heart, then the zones right side first). Image left is
the patient's right (radiological convention), so "right lung" is the dark field left of the
midline.

Method, per image, at a working resolution (`options.work_size`, default 256):
1. Smooth, stretch to percentiles 1-99; Otsu splits the central field into dark and bright, and
   the lung threshold lies `options.lung_threshold` (0.5) of the way from the dark median to the
   20th percentile of the bright class (the chest-wall soft tissue, not the brighter mediastinum
   and abdomen); dark components touching the image border (air outside the body) are dropped.
2. Midline = the brightest column band (spine/mediastinum) in the central third.
3. Each lung = the largest dark component on its side of the midline, holes filled, closed with
   a disc, and made column-convex (each column an interval; the heart kept out), so a dense
   lesion inside a lung or across its top stays inside the lung mask.
4. Shape prior against lesions that erase part of a lung (effusion at the base, apical or lateral
   consolidation): the other lung, mirrored about the midline, is added where it lies beyond
   this lung's top, bottom or lateral edge (never medially, so the heart is not swallowed).
5. Heart (see `heart`): residual over each column's upper-chest median (cancels the mediastinum
   and spine column), above `options.heart_threshold` (0.4) of the soft-tissue/lung contrast and
   not dark; lower border = a robust quadratic through the heart/abdomen overlap peak under the
   diaphragm; components around the chest centre joined row by row across the spine.
6. Zones split each lung by its own vertical extent at fractions `options.zone_fractions`
   (default 0.17, 0.42, 0.68 of lung height, as the phantom truth: apical < 0.17 <= upper
   < 0.42 <= mid < 0.68 <= base).
When a step finds nothing plausible (e.g. a non-CXR image), a fixed template of two lung
ellipses and a heart ellipse is used for the missing part, so the output is always well formed.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ils.vocab import ATOMIC_REGIONS, ZONE_KINDS, region_bit, zone_name

log = logging.getLogger(__name__)


class AnatomyError(ValueError):
    """An image the anatomy stage cannot read (wrong shape or values)."""


def check_image(image: np.ndarray) -> np.ndarray:
    """float32 2-D finite image or AnatomyError."""
    arr = np.asarray(image)
    if arr.ndim != 2 or min(arr.shape) < 16:
        raise AnatomyError(f"expected a 2-D image of at least 16x16 pixels, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise AnatomyError("image holds NaN or infinite values")
    return arr


def resize(arr: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Stretch a 2-D array to (size, size)."""
    if arr.shape == (size, size):
        return arr
    zoom = (size / arr.shape[0], size / arr.shape[1])
    out = ndi.zoom(arr.astype(np.float32) if order else arr, zoom, order=order, grid_mode=True, mode="nearest")
    return out[:size, :size]


def otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-9)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-9)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def interval_fill(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill each row (axis=1) or column (axis=0) between its first and last set pixel."""
    m = mask if axis == 1 else mask.T
    out = np.zeros_like(m)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size:
        first = m[rows].argmax(axis=1)
        last = m.shape[1] - 1 - m[rows, ::-1].argmax(axis=1)
        cols = np.arange(m.shape[1])
        out[rows] = (cols[None, :] >= first[:, None]) & (cols[None, :] <= last[:, None])
    return out if axis == 1 else out.T


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def fit_ellipse(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float, float] | None:
    """Axis-aligned ellipse (cx, cy, ax, ay) through points, least squares; None if degenerate."""
    if xs.size < 8:
        return None
    A = np.stack([xs * xs, ys * ys, xs, ys], axis=1)
    try:
        (a, c, d, e), *_ = np.linalg.lstsq(A, np.ones_like(xs), rcond=None)
    except np.linalg.LinAlgError:
        return None
    if a <= 0 or c <= 0:
        return None
    cx, cy = -d / (2 * a), -e / (2 * c)
    rhs = 1 + a * cx * cx + c * cy * cy
    if rhs <= 0:
        return None
    return float(cx), float(cy), float(np.sqrt(rhs / a)), float(np.sqrt(rhs / c))


def template(w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fallback (right lung, left lung, heart) ellipses at working size w."""
    yy, xx = np.mgrid[0:w, 0:w] / w
    right = ((xx - 0.30) / 0.15) ** 2 + ((yy - 0.47) / 0.30) ** 2 <= 1
    left = ((xx - 0.70) / 0.15) ** 2 + ((yy - 0.47) / 0.30) ** 2 <= 1
    heart = ((xx - 0.53) / 0.13) ** 2 + ((yy - 0.66) / 0.11) ** 2 <= 1
    return right, left & ~heart, heart


class LiteAnatomy:
    """Lungs, heart and zones by thresholding, morphology and a mirrored-lung shape prior."""

    def __init__(self, cfg: Any = None, image_size: int = 512) -> None:
        opts = dict(getattr(cfg, "options", None) or {})
        self.size = int(image_size)
        self.work = int(opts.get("work_size", 256))
        self.zone_fractions = tuple(float(f) for f in opts.get("zone_fractions", (0.17, 0.42, 0.68)))
        self.lung_threshold = float(opts.get("lung_threshold", 0.5))
        self.heart_threshold = float(opts.get("heart_threshold", 0.4))
        if len(self.zone_fractions) != 3 or not 0 < self.zone_fractions[0] < self.zone_fractions[1] < self.zone_fractions[2] < 1:
            raise ValueError("options.zone_fractions must be three increasing fractions in (0, 1)")

    # -- public -----------------------------------------------------------------------------
    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.segment_one(im) for im in images]

    def segment_one(self, image: np.ndarray) -> np.ndarray:
        """uint16 bit map (S, S) of one image."""
        right, left, heart = self.lungs_and_heart(image)
        w = self.work
        bits = np.zeros((w, w), np.uint16)
        bits[heart] |= region_bit("heart")
        for side, lung in (("right", right), ("left", left)):
            for kind, zone in zip(ZONE_KINDS, self.split_zones(lung)):
                bits[zone] |= region_bit(zone_name(side, kind))
        return self._upsample_bits(bits)

    # -- steps --------------------------------------------------------------------------------
    def lungs_and_heart(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(right lung, left lung, heart) boolean masks at the working size."""
        w = self.work
        x = resize(check_image(image), w)
        x = ndi.gaussian_filter(x, sigma=max(0.5, w / 170))
        lo, hi = np.percentile(x, [1, 99])
        x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
        m = int(0.08 * w)
        central = x[m:-m, m:-m].ravel()
        t0 = otsu(central)
        below, above = central[central < t0], central[central >= t0]
        if below.size == 0 or above.size == 0:  # featureless image: threshold nothing
            t = -1.0
        else:
            t = float(np.median(below)) + self.lung_threshold * (float(np.percentile(above, 20)) - float(np.median(below)))
        dark = x < t
        lab, n = ndi.label(dark)
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        inner = dark & ~np.isin(lab, border[border > 0])
        inner = ndi.binary_opening(inner, structure=disk(max(1, w // 100)))
        mid = self.midline(x)
        tr, tl, th = template(w)
        cols = np.arange(w)[None, :]
        raw = []
        for side_mask, fallback in ((cols < mid, tr), (cols >= mid, tl)):
            cand = self.side_components(inner & side_mask)
            if cand.sum() < 0.01 * w * w:
                log.debug("anatomy lite: no plausible lung on one side; using the template")
                cand = fallback.copy()
            raw.append(cand)
        contrast = max(float(np.median(above)) - float(np.median(below)), 0.05) if below.size and above.size else 0.3
        heart = self.heart(x, raw[0], raw[1], mid, contrast, dark)
        if heart.sum() < 0.003 * w * w:
            heart = th & ~(raw[0] | raw[1])
        right = self.regularise(raw[0], heart)
        left = self.regularise(raw[1], heart)
        right, left = self.mirror_prior(right, left, mid)
        return right & ~heart, left & ~heart, heart

    def side_components(self, dark: np.ndarray) -> np.ndarray:
        """The largest dark component plus sizeable pieces above or below it (cut off by ribs or
        clavicles) whose columns overlap it."""
        w = dark.shape[0]
        lab, n = ndi.label(dark)
        if n == 0:
            return dark
        sizes = ndi.sum(dark, lab, index=np.arange(1, n + 1))
        main = 1 + int(np.argmax(sizes))
        out = lab == main
        xs = np.flatnonzero(out.any(axis=0))
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            if i == main or sl is None or sizes[i - 1] < 0.002 * w * w:
                continue
            if sl[1].start <= xs[-1] and sl[1].stop > xs[0]:
                out |= lab == i
        return out

    def midline(self, x: np.ndarray) -> int:
        w = x.shape[1]
        a, b = int(0.35 * w), int(0.65 * w)
        prof = ndi.uniform_filter1d(x[int(0.15 * w) : int(0.7 * w), a:b].mean(axis=0), size=max(3, w // 25))
        return a + int(np.argmax(prof))

    def regularise(self, lung: np.ndarray, heart: np.ndarray) -> np.ndarray:
        """Fill holes, close, and make rows and columns intervals, keeping the heart out."""
        w = lung.shape[0]
        lung = ndi.binary_fill_holes(lung | heart) & ~heart
        pad = w // 10
        padded = np.pad(lung | heart, pad)
        padded = ndi.binary_closing(padded, structure=disk(w // 30))
        lung = padded[pad:-pad, pad:-pad] & ~heart
        lung = interval_fill(lung | heart, axis=0) & ~heart
        return largest_component(lung)
    def mirror_prior(self, right: np.ndarray, left: np.ndarray, mid: int) -> tuple[np.ndarray, np.ndarray]:
        """Add the mirrored other lung beyond each lung's top, bottom or lateral edge."""
        w = right.shape[1]
        out = []
        for lung, other, sign in ((right, left, -1), (left, right, +1)):
            mir = np.zeros_like(other)
            src = np.arange(w)
            dst = 2 * mid - src
            ok = (dst >= 0) & (dst < w)
            mir[:, dst[ok]] = other[:, src[ok]]
            if not lung.any() or not mir.any():
                out.append(lung)
                continue
            ys, xs = np.nonzero(lung)
            # lateral coordinate: distance from the midline on this lung's side
            lat = sign * (np.arange(w) - mid)
            extra = np.zeros_like(lung)
            rows = np.flatnonzero(mir.any(axis=1))
            for y in rows:
                row_l = np.flatnonzero(lung[y])
                row_m = np.flatnonzero(mir[y])
                if row_l.size == 0:
                    extra[y, row_m] = True  # above or below this lung: take the mirror row
                    continue
                medial_l = lat[row_l].min()
                lateral_l = lat[row_l].max()
                keep = row_m[(lat[row_m] > lateral_l) | (lat[row_m] >= medial_l)]
                extra[y, keep] = True
            merged = lung | (extra & (sign * (np.arange(w)[None, :] - mid) > 0))
            out.append(largest_component(interval_fill(merged, 0)))
        return out[0], out[1]

    def heart(self, x: np.ndarray, right: np.ndarray, left: np.ndarray, mid: int, contrast: float, dark: np.ndarray) -> np.ndarray:
        """Heart = the soft-tissue island between the lungs that stands out of its column.

        1. Column background: each column's median over the upper chest (rows 15-35% down the
           lungs, above any heart), so the mediastinum and spine column cancel out; the residual
           r = x - background is ~0 there, a heart adds soft-tissue density (r > 0.45 of the
           lung/soft-tissue contrast).
        2. The heart's lower border: where the heart overlaps the abdomen under the diaphragm the
           column profile peaks (heart + abdomen); a robust quadratic through those peaks (outside
           the spine band) is the lower border, extrapolated under the spine.
        3. Heart = the component of r above threshold, above that border, nearest the centre of
           the chest; holes filled, opened so that lesions touching it are cut off.
        """
        w = x.shape[0]
        lungs = right | left
        rows = np.flatnonzero(lungs.any(axis=1))
        if rows.size == 0:
            return np.zeros_like(lungs)
        top, bottom = int(rows[0]), int(rows[-1])
        h = max(bottom - top, w // 4)
        r0, r1 = top + int(0.15 * h), top + int(0.35 * h)
        bg = np.median(x[r0 : r1 + 1], axis=0)
        r = x - bg[None, :]
        # contrast: non-lung soft tissue versus lung in the same upper rows
        upper = np.zeros_like(lungs)
        upper[r0 : r1 + 1] = True
        lcols = np.flatnonzero(lungs.any(axis=0))
        upper[:, : max(0, lcols[0] - w // 20)] = False
        upper[:, lcols[-1] + w // 20 :] = False
        if (upper & lungs).sum() > 20 and (upper & ~lungs).sum() > 20:
            contrast = max(float(np.median(x[upper & ~lungs])) - float(np.median(x[upper & lungs])), 0.05)
        thr = self.heart_threshold * contrast
        cand = (r > thr) & ~dark
        cand[: top + int(0.3 * h)] = False
        lo, hi = max(0, mid - int(0.25 * w)), min(w, mid + int(0.25 * w))
        cand[:, :lo] = False
        cand[:, hi:] = False
        # lower border from the heart/abdomen overlap peak
        spine = int(0.05 * w)
        ys_all = np.arange(w)
        px, py = [], []
        start = top + int(0.5 * h)
        for c in range(lo, hi):
            if abs(c - mid) <= spine:
                continue
            col = ndi.uniform_filter1d(x[:, c], 3)
            seg = col[start : min(w, bottom + int(0.25 * h))]
            if seg.size < 5:
                continue
            k = int(np.argmax(seg))
            y = start + k
            below = col[min(w - 1, y + int(0.06 * w))]
            above = col[max(0, y - int(0.06 * w))]
            if col[y] - below > 0.35 * contrast and col[y] - above > 0.2 * contrast and cand[max(0, y - int(0.04 * w)), c]:
                px.append(c)
                py.append(y)
        band = None
        if len(px) >= 6:
            px_a, py_a = np.asarray(px, float), np.asarray(py, float)
            keep = np.ones(px_a.size, bool)
            for _ in range(3):
                deg = 2 if keep.sum() >= 10 else 1
                coef = np.polyfit(px_a[keep], py_a[keep], deg)
                res = py_a - np.polyval(coef, px_a)
                keep = np.abs(res) <= max(2.0, 2.5 * float(np.median(np.abs(res[keep]))) + 1)
            band = np.polyval(coef, np.arange(w))
        if band is None:  # fall back to the lungs' lowest rows
            band = np.full(w, float(bottom))
        cand &= ys_all[:, None] <= band[None, :]
        cand = ndi.binary_opening(cand, structure=disk(max(1, w // 40)))
        lab, n = ndi.label(cand)
        if n == 0:
            return np.zeros_like(lungs)
        # components around the chest centre (the spine column may split the heart in two)
        cy = float(np.median(band[lo:hi])) - 0.12 * h
        heart = np.zeros_like(lungs)
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            yy, xx = np.nonzero(lab[sl] == i)
            if yy.size < 0.002 * w * w:
                continue
            mx, my = xx.mean() + sl[1].start, yy.mean() + sl[0].start
            if mid - 0.15 * w <= mx <= mid + 0.2 * w and abs(my - cy) <= 0.15 * w:
                heart |= lab == i
        if not heart.any():
            return heart
        heart = interval_fill(heart, axis=1)  # bridge the spine column row by row
        heart = ndi.binary_fill_holes(heart) & (ys_all[:, None] <= band[None, :])
        heart = largest_component(heart)
        return heart

    def split_zones(self, lung: np.ndarray) -> list[np.ndarray]:
        """Four boolean zones (apical, upper, mid, base) of one lung by its vertical extent."""
        rows = np.flatnonzero(lung.any(axis=1))
        if rows.size == 0:
            return [np.zeros_like(lung) for _ in ZONE_KINDS]
        top, bottom = rows[0], rows[-1] + 1
        cuts = [top] + [top + f * (bottom - top) for f in self.zone_fractions] + [bottom]
        y = np.arange(lung.shape[0])[:, None]
        return [lung & (y >= cuts[i]) & (y < cuts[i + 1]) for i in range(4)]

    def _upsample_bits(self, bits: np.ndarray) -> np.ndarray:
        if self.work == self.size:
            return bits
        idx = (np.arange(self.size) * self.work // self.size).astype(np.intp)
        return bits[np.ix_(idx, idx)]


def region_mask(bits: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of an atomic or composite region in a bit map."""
    return (bits & np.uint16(region_bit(region))) != 0


__all__ = ["LiteAnatomy", "AnatomyError", "region_mask", "ATOMIC_REGIONS"]
