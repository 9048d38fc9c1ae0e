"""Rendering synthetic lesions onto real radiographs (docs/real_base.md).

- `augment`: a small affine (rotation, scale, shift) applied alike to the image and its masks.
- `blend`: X-ray attenuation blending. A display value v in (0, 1) (lungs dark) is read as a
  sigmoid of the total attenuation A along the ray, A = logit(v), i.e. transmitted intensity
  T = exp(-A) = (1 - v) / v. A lesion adds attenuation d >= 0: T' = T exp(-d), v' = 1 / (1 + T')
  = sigmoid(A + d). Denser tissue adds to what is there (ribs and vessels stay visible through a
  haze, their attenuation differences are kept), a dense lesion saturates towards white, and a
  lesion never darkens a pixel.
- `enlarge_heart`: cardiomegaly as a smooth outward warp around the cardiac silhouette
  (no folding: the radial map stays monotone).
- `real_fields`: an `ils.phantom.anatomy.Fields` (+ `Geometry`) built from real lung and heart
  masks, so the shape functions of `ils.phantom.lesions` and `label_map` work on real anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ils.phantom.anatomy import Fields, Geometry

MIN_DENSITY = 1e-3  # attenuation below this is dropped (the lesion's support is exact)
#: canonical phantom frame the real lungs are mapped into (anatomy.py conventions)
CANON_LATERAL, CANON_APEX, CANON_BASE = 0.355, 0.12, 0.73


@dataclass
class Affine:
    """Output point -> input point in normalised [0, 1] coordinates (rotation about the centre)."""

    angle: float = 0.0  # radians
    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    def pil_data(self, n: int) -> tuple[float, ...]:
        ca, sa = np.cos(self.angle) / self.scale, np.sin(self.angle) / self.scale
        cx, cy = n * (0.5 + self.tx), n * (0.5 + self.ty)
        return (ca, sa, n / 2 - (ca * cx + sa * cy), -sa, ca, n / 2 - (-sa * cx + ca * cy))


def random_affine(rng: np.random.Generator) -> Affine:
    return Affine(float(np.deg2rad(rng.uniform(-4, 4))), float(rng.uniform(0.94, 1.06)),
                  float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03)))


def warp_image(img: np.ndarray, aff: Affine, fill: float) -> np.ndarray:
    n = img.shape[0]
    out = Image.fromarray(np.ascontiguousarray(img, np.float32), mode="F").transform(
        (n, n), Image.Transform.AFFINE, aff.pil_data(n), resample=Image.Resampling.BILINEAR, fillcolor=float(fill))
    return np.array(out, dtype=np.float32)


def warp_mask(m: np.ndarray, aff: Affine) -> np.ndarray:
    n = m.shape[0]
    out = Image.fromarray(m.astype(np.uint8) * np.uint8(255)).transform(
        (n, n), Image.Transform.AFFINE, aff.pil_data(n), resample=Image.Resampling.NEAREST, fillcolor=0)
    return np.asarray(out) > 127


def tone(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma and contrast variation about the mean; clipped to [0, 1]."""
    gamma, contrast = rng.uniform(0.8, 1.25), rng.uniform(0.88, 1.12)
    out = np.clip(img, 0.0, 1.0) ** np.float32(gamma)
    mean = np.float32(out.mean())
    out = mean + np.float32(contrast) * (out - mean)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def blend(v: np.ndarray, d: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Attenuation blending of lesion attenuation `d` (>= 0, same grid) into display values `v`."""
    v64 = v.astype(np.float64)
    vc = np.clip(v64, eps, 1 - eps)
    a = np.log(vc) - np.log1p(-vc)
    lit = 1.0 / (1.0 + np.exp(-(a + d)))
    out = np.where(d > 0, np.maximum(lit, v64), v64)
    return out.astype(np.float32)


def upsample_density(d: np.ndarray, size: int) -> np.ndarray:
    """Density on the truth grid -> image grid (bilinear), tiny values dropped."""
    if d.shape[0] != size:
        d = np.asarray(Image.fromarray(d.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return np.where(d >= MIN_DENSITY, d, np.float32(0.0)).astype(np.float32)


# --- cardiomegaly -------------------------------------------------------------------------


@dataclass
class HeartWarp:
    cx: float  # heart centre (normalised)
    cy: float
    hw: float  # half width / height (normalised)
    hh: float
    sx: float  # scale inside the heart
    sy: float

    def source(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Source (row, col) pixel coordinates of every output pixel on an n grid."""
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        x, y = np.meshgrid(c, c)
        qx, qy = (x - self.cx) / self.hw, (y - self.cy) / self.hh
        w = np.exp(-(qx * qx + qy * qy) / np.float32(2 * 1.3**2))
        gx = 1 + (self.sx - 1) * w
        gy = 1 + (self.sy - 1) * w
        sxn = self.cx + (x - self.cx) / gx
        syn = self.cy + (y - self.cy) / gy
        return syn * n - 0.5, sxn * n - 0.5


def heart_warp(heart: np.ndarray, ctr: float, target_ctr: float, rng: np.random.Generator) -> HeartWarp | None:
    rows, cols = np.nonzero(heart)
    if rows.size == 0 or ctr <= 0:
        return None
    n = heart.shape[0]
    sx = float(np.clip(target_ctr / ctr, 1.08, 1.5))
    return HeartWarp(float(cols.mean() + 0.5) / n, float(rows.mean() + 0.5) / n, float(np.ptp(cols) + 1) / (2 * n),
                     float(np.ptp(rows) + 1) / (2 * n), sx, float(1 + (sx - 1) * rng.uniform(0.1, 0.3)))


def apply_heart_warp(a: np.ndarray, hw: HeartWarp, *, order: int) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    r, c = hw.source(a.shape[0])
    if a.dtype == bool:
        return map_coordinates(a.astype(np.uint8), [r, c], order=0, mode="constant", cval=0).astype(bool)
    return map_coordinates(a, [r, c], order=order, mode="nearest").astype(np.float32)


# --- anatomy fields from real masks -------------------------------------------------------


@dataclass
class CanonFrame:
    """Axis-aligned map image (x, y in [0, 1]) -> canonical (X, Y): X = (x - mid) sx, Y = APEX + (y - top) sy."""

    mid: float
    top: float
    sx: float
    sy: float

    def to_image(self, X, Y):
        return self.mid + X / self.sx, self.top + (Y - CANON_APEX) / self.sy


def canon_frame(lung_right: np.ndarray, lung_left: np.ndarray) -> CanonFrame:
    n = lung_right.shape[0]
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    full = lung_right | lung_left
    rc, lc = np.nonzero(lung_right.any(axis=0))[0], np.nonzero(lung_left.any(axis=0))[0]
    rows = np.nonzero(full.any(axis=1))[0]
    if rc.size == 0 or lc.size == 0 or rows.size == 0:
        raise ValueError("a base needs both lungs outlined")
    half = max((c[lc.max()] - c[rc.min()]) / 2, 1e-3)
    top, bot = float(c[rows.min()]), float(c[rows.max()])
    return CanonFrame(float((c[rc.max()] + c[lc.min()]) / 2), top, float(CANON_LATERAL / half),
                      float((CANON_BASE - CANON_APEX) / max(bot - top, 1e-3)))


def real_fields(lung_right: np.ndarray, lung_left: np.ndarray, cardiomediastinum: np.ndarray, heart: np.ndarray) -> tuple[Fields, Geometry]:
    """Fields/Geometry on the masks' grid: the real lungs mapped into the phantoms' canonical frame.

    `lung` = the visible lung (full outlines minus the cardiomediastinum, the phantoms'
    convention); X = 0 on the midline between the lungs, the patient's right (image left) X < 0;
    the lungs' lateral edges map to |X| = 0.355, apex and base to Y = 0.12 and 0.73.
    """
    from scipy.ndimage import uniform_filter1d

    n = lung_right.shape[0]
    full = lung_right | lung_left
    lung = full & ~cardiomediastinum
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    rc, lc = np.nonzero(lung_right.any(axis=0))[0], np.nonzero(lung_left.any(axis=0))[0]
    cf = canon_frame(lung_right, lung_left)
    mid, top, sx, sy = cf.mid, cf.top, cf.sx, cf.sy
    xs = (c - mid) * sx
    ys = CANON_APEX + (c - top) * sy
    X = np.broadcast_to(xs[None, :], (n, n)).astype(np.float32)
    Y = np.broadcast_to(ys[:, None], (n, n)).astype(np.float32)
    # diaphragm: the lowest lung pixel of each column, interpolated and smoothed
    has = full.any(axis=0)
    low = np.where(has, n - 1 - np.argmax(full[::-1], axis=0), 0).astype(np.float32)
    cols = np.nonzero(has)[0]
    low = np.interp(np.arange(n), cols, low[cols]).astype(np.float32)
    low = uniform_filter1d(low, size=max(3, n // 40), mode="nearest")
    dia_col = CANON_APEX + ((low + 0.5) / n - top) * sy
    dia = np.broadcast_to(dia_col[None, :], (n, n)).astype(np.float32)
    ax = np.abs(X)
    lv = ax[lung] if lung.any() else ax[full]
    medial, lateral = float(np.percentile(lv, 3)), float(np.percentile(lv, 99.5))
    lys = Y[full]
    apex = float(lys.min())
    dome_r = float(np.median(dia_col[rc])) if rc.size else CANON_BASE
    dome_l = float(np.median(dia_col[lc])) if lc.size else CANON_BASE
    hr, hc = np.nonzero(heart)
    if hr.size:
        hx, hy = X[0, hc], Y[hr, 0]
        h_cx, h_ax = float(hx.mean()), float(max(np.ptp(hx) / 2, 1e-3))
        h_cy, h_ay = float(hy.mean()), float(max(np.ptp(hy) / 2, 1e-3))
    else:
        h_cx, h_ax, h_cy, h_ay = 0.05, 0.13, 0.62, 0.14
    geo = Geometry(lung_cx=(medial + lateral) / 2, lung_ax=max((lateral - medial) / 2, 1e-3), lung_cy=(apex + max(dome_r, dome_l)) / 2,
                   apex_y=apex, dome_right=dome_r, dome_left=dome_l, med_w=medial,
                   heart_cx=h_cx, heart_cy=h_cy, heart_ax=h_ax, heart_ay=h_ay)
    ay = np.float32(max(geo.lung_cy - geo.apex_y, 1e-3))
    thorax = ((ax - np.float32(geo.lung_cx)) / np.float32(geo.lung_ax)) ** 2 + ((Y - np.float32(geo.lung_cy)) / ay) ** 2
    dy = (Y - np.float32(h_cy)) / np.float32(h_ay)
    hfield = ((X - np.float32(h_cx)) / np.float32(h_ax)) ** 2 + dy * dy
    hfield = np.where(heart, np.minimum(hfield, np.float32(0.99)), np.maximum(hfield, np.float32(1.0))).astype(np.float32)
    return Fields(X, Y, thorax.astype(np.float32), dia, hfield, lung, heart.copy()), geo


def rescale(mask: np.ndarray, density: np.ndarray | None, factor: float, region: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Zoom a lesion about its mask centroid by `factor`, kept inside `region`."""
    from scipy.ndimage import affine_transform

    rows, cols = np.nonzero(mask)
    if rows.size == 0 or abs(factor - 1.0) < 1e-3:
        return mask, density
    cy, cx = rows.mean(), cols.mean()
    mat = np.array([1.0 / factor, 1.0 / factor])
    off = np.array([cy - cy / factor, cx - cx / factor])
    m = affine_transform(mask.astype(np.float32), mat, off, order=1, mode="constant") >= 0.5
    d = None
    if density is not None:
        d = affine_transform(density.astype(np.float32), mat, off, order=1, mode="constant").astype(np.float32)
        d *= region
    return m & region, d
