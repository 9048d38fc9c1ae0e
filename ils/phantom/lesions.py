"""Lesion shapes on the truth grid: each instance is a density field (added to the image) and
its mask (where that density actually is, restricted to the lungs or the heart).

Forms: effusion = basal density with a meniscus blunting the costophrenic angle; consolidation and
pneumonia = dense patchy airspace opacity (consolidation may show air bronchograms);
atelectasis = linear (plate-like) or wedge-shaped density; edema = perihilar haze per side;
opacity = ill-defined density. Cardiomegaly changes the geometry (see `enlarge_heart`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ils.phantom.anatomy import Fields, Geometry
from ils.phantom.render import crop, texture_bank
from ils.vocab import ATOMIC_REGIONS, zone_name


@dataclass
class Instance:
    """One lesion instance on the truth grid."""

    side: str | None
    mask: np.ndarray  # bool
    density: np.ndarray | None  # float32 added to the image (None: drawn by the anatomy)


def enlarge_heart(geo: Geometry, rng: np.random.Generator) -> None:
    """Cardiomegaly: heart width 52-65% of the thoracic width."""
    geo.heart_ax = 0.5 * geo.thoracic_width * float(rng.uniform(1.04, 1.3)) / 2.0
    geo.heart_ay *= float(rng.uniform(1.05, 1.15))
    geo.heart_cx += float(rng.uniform(0.0, 0.02))


def _side_sel(f: Fields, side: str) -> np.ndarray:
    return (f.X < 0) if side == "right" else (f.X >= 0)


def _center(anat: np.ndarray, side: str, kind: str, rng: np.random.Generator, medial: bool = False) -> tuple[float, float]:
    """A point (row, col) well inside a zone."""
    bit = np.uint16(1 << ATOMIC_REGIONS.index(zone_name(side, kind)))
    rows, cols = np.nonzero(anat & bit)
    if rows.size == 0:
        raise ValueError(f"empty zone {zone_name(side, kind)}")
    cy, cx = rows.mean(), cols.mean()
    i = int(rng.integers(rows.size))
    py, px = rows[i], cols[i]
    if medial:  # towards the mediastinum (retrocardiac)
        px = cols.max() if side == "right" else cols.min()
    w = 0.45
    return float(cy + w * (py - cy)), float(cx + w * (px - cx))


def _window(n: int, cy: float, cx: float, rad: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """A square window around (cy, cx) and its pixel-centre row/col coordinates."""
    r0, r1 = max(0, int(cy - rad)), min(n, int(cy + rad) + 1)
    c0, c1 = max(0, int(cx - rad)), min(n, int(cx + rad) + 1)
    rr = np.arange(r0, r1, dtype=np.float32)[:, None] + np.float32(0.5)
    cc = np.arange(c0, c1, dtype=np.float32)[None, :] + np.float32(0.5)
    return (slice(r0, r1), slice(c0, c1)), rr, cc


def _finish(f: Fields, win, field: np.ndarray, amp: float, tex: np.ndarray, region: np.ndarray, side: str | None) -> Instance:
    """Mask = field above half its range inside the lungs; density follows the field."""
    n = f.X.shape[0]
    core = np.clip((field - np.float32(0.4)) / np.float32(0.2), 0.0, 1.0)
    reg = region[win]
    density = np.zeros((n, n), np.float32)
    mask = np.zeros((n, n), bool)
    density[win] = np.float32(amp) * core * (np.float32(0.85) + np.float32(0.15) * tex[win]) * reg
    mask[win] = (core >= 0.5) & reg
    return Instance(side, mask, density)


def patchy(f: Fields, anat: np.ndarray, side: str, kind: str, rng: np.random.Generator, *, dense: bool, medial: bool = False) -> Instance:
    """Consolidation / pneumonia: a cluster of overlapping blobs, patchy edges."""
    n = f.X.shape[0]
    cy, cx = _center(anat, side, kind, rng, medial)
    r = n * rng.uniform(0.045, 0.085)
    win, rr, cc = _window(n, cy, cx, 3.2 * r)
    field = np.zeros((rr.shape[0], cc.shape[1]), np.float32)
    for _ in range(int(rng.integers(3, 6))):
        oy, ox = rng.normal(0, 0.45 * r, size=2)
        s = r * rng.uniform(0.45, 0.75)
        g = np.exp(-(((rr - (cy + oy)) ** 2 + ((cc - (cx + ox)) * rng.uniform(0.8, 1.25)) ** 2) / np.float32(2 * s * s)))
        np.maximum(field, g, out=field)
    tex = crop(texture_bank(n), n, rng)
    field = field + np.float32(0.2) * tex[win]
    amp = rng.uniform(0.24, 0.36) if dense else rng.uniform(0.18, 0.28)
    inst = _finish(f, win, field, amp, tex, f.lung & _side_sel(f, side), side)
    if dense and rng.random() < 0.5 and inst.mask.sum() > 200:  # air bronchograms
        ang = rng.uniform(0, np.pi)
        for k in range(3):
            a = ang + rng.uniform(-0.5, 0.5)
            d = np.abs((rr - cy) * np.cos(a) - (cc - cx) * np.sin(a))
            along = (rr - cy) * np.sin(a) + (cc - cx) * np.cos(a)
            tube = (d < max(1.0, n / 400)) & (np.abs(along) < r * 0.6) & inst.mask[win]
            inst.density[win][tube] *= np.float32(0.6)
    return inst


def ill_defined(f: Fields, anat: np.ndarray, side: str, kind: str, rng: np.random.Generator) -> Instance:
    """Opacity: one ill-defined elliptical density."""
    n = f.X.shape[0]
    cy, cx = _center(anat, side, kind, rng)
    sy, sx = n * rng.uniform(0.03, 0.06, size=2)
    win, rr, cc = _window(n, cy, cx, 3.0 * max(sy, sx))
    field = np.exp(-(((rr - cy) / sy) ** 2 + ((cc - cx) / sx) ** 2) / np.float32(2.0))
    tex = crop(texture_bank(n), n, rng)
    field = np.float32(1.15) * field + np.float32(0.1) * tex[win]
    return _finish(f, win, field, rng.uniform(0.18, 0.28), tex, f.lung & _side_sel(f, side), side)


def atelectasis(f: Fields, anat: np.ndarray, side: str, kind: str, rng: np.random.Generator, *, medial: bool = False) -> Instance:
    """Linear (plate-like) band or a wedge pointing to the hilum."""
    n = f.X.shape[0]
    cy, cx = _center(anat, side, kind, rng, medial)
    tex = crop(texture_bank(n), n, rng)
    win, rr, cc = _window(n, cy, cx, 0.16 * n)
    if rng.random() < 0.5:
        a = rng.uniform(-0.35, 0.35)  # near horizontal
        half_len, half_th = n * rng.uniform(0.05, 0.08), n * rng.uniform(0.008, 0.013)
        d = np.abs(-(cc - cx) * np.sin(a) + (rr - cy) * np.cos(a))
        along = np.abs((cc - cx) * np.cos(a) + (rr - cy) * np.sin(a))
        field = np.minimum(1.0 - d / (2 * half_th), 1.0 - (along - half_len) / (2 * half_th)) + np.float32(0.5)
        field = np.clip(field, 0, 1.2).astype(np.float32)
    else:  # wedge: apex towards the hilum, base at the periphery
        hil_c = n * (0.5 + (-0.1 if side == "right" else 0.1))
        hil_r = n * 0.47
        vy, vx = cy - hil_r, cx - hil_c
        norm = float(np.hypot(vy, vx)) or 1.0
        vy, vx = vy / norm, vx / norm
        length = n * rng.uniform(0.09, 0.13)
        ay, ax_ = cy - vy * length * 0.5, cx - vx * length * 0.5
        along = (rr - ay) * vy + (cc - ax_) * vx
        across = np.abs(-(rr - ay) * vx + (cc - ax_) * vy)
        half_ang = rng.uniform(0.25, 0.4)
        field = np.minimum(np.minimum(along / 4.0, (length - along) / 4.0), (along * np.tan(half_ang) - across) / 4.0)
        field = (np.clip(field, -1, 1) * 0.5 + 0.5).astype(np.float32)
    return _finish(f, win, field, rng.uniform(0.24, 0.34), tex, f.lung & _side_sel(f, side), side)


def edema(f: Fields, side: str, severity: float, rng: np.random.Generator) -> Instance:
    """Perihilar haze on one side (edema is drawn on both sides)."""
    n = f.X.shape[0]
    ax = np.abs(f.X)
    tex = crop(texture_bank(n), n, rng)
    sx, sy = 0.085 + 0.04 * severity, 0.12 + 0.05 * severity
    field = np.exp(-(((ax - np.float32(0.1)) / np.float32(sx)) ** 2 + ((f.Y - np.float32(0.47)) / np.float32(sy)) ** 2))
    field = np.float32(1.1) * field + np.float32(0.15) * tex
    full = (slice(0, n), slice(0, n))
    return _finish(f, full, field, 0.15 + 0.12 * severity, tex, f.lung & _side_sel(f, side), side)


def effusion(f: Fields, geo: Geometry, side: str, size: float, rng: np.random.Generator) -> Instance:
    """Dependent basal density whose upper surface is a meniscus rising along the chest wall."""
    n = f.X.shape[0]
    px = 1.0 / n
    ax = np.abs(f.X)
    lateral = geo.lung_cx + geo.lung_ax
    t = np.clip((lateral - ax) / (lateral - geo.med_w), 0.0, 1.0)  # 0 lateral, 1 medial
    h = 0.035 + 0.2 * size  # canonical height of the fluid at the chest wall
    thick = np.float32(h) * ((np.float32(1.0) - t) ** 1.5 * np.float32(0.85) + np.float32(0.12))
    top = f.dia - thick
    region = f.lung & _side_sel(f, side)
    depth = (f.Y - top) / np.float32(h)
    field = np.clip((f.Y - top) / np.float32(6 * px) + np.float32(0.5), 0.0, 1.0)
    tex = crop(texture_bank(n), n, rng)
    amp = rng.uniform(0.28, 0.38)
    grad = np.float32(0.75) + np.float32(0.25) * np.clip(depth, 0.0, 1.0)
    core = np.clip((field - np.float32(0.4)) / np.float32(0.2), 0.0, 1.0)
    density = (np.float32(amp) * core * grad * (np.float32(0.92) + np.float32(0.08) * tex) * region).astype(np.float32)
    return Instance(side, (core >= 0.5) & region, density)
