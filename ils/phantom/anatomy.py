"""Phantom chest geometry: per-patient anatomy parameters, coordinate grids and label maps.

Coordinates: `x`, `y` in [0, 1] over the image (x to the image right, y down). The canonical
frame `X, Y` has X = 0 on the midline and Y = 0 at the top; a patient's pose (shift, scale,
rotation) maps image coordinates into it. PA convention: the patient's right lung is on the
image left (X < 0).

Label maps are uint16 with one bit per `ils.vocab.ATOMIC_REGIONS` (heart + 8 lung zones).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ils.vocab import ATOMIC_REGIONS, ZONE_KINDS, zone_name

#: Vertical split of each lung (fractions of its height) into apical, upper, mid zone and base.
ZONE_EDGES: tuple[float, ...] = (0.0, 0.17, 0.42, 0.68, 1.0)


@dataclass
class Geometry:
    """One patient's anatomy in the canonical frame (units: fractions of the image)."""

    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    angle: float = 0.0  # radians
    lung_cx: float = 0.19  # |X| of each lung ellipse centre
    lung_ax: float = 0.165
    lung_cy: float = 0.56
    apex_y: float = 0.12
    dome_right: float = 0.70  # Y of the right hemidiaphragm's dome
    dome_left: float = 0.725
    dome_k: float = 0.12  # how much the dome falls towards the costophrenic angle
    med_w: float = 0.055  # half-width of the upper mediastinum
    heart_cx: float = 0.035
    heart_cy: float = 0.60
    heart_ax: float = 0.14
    heart_ay: float = 0.12

    @property
    def thoracic_width(self) -> float:
        return 2.0 * (self.lung_cx + self.lung_ax)

    @property
    def heart_width(self) -> float:
        return 2.0 * self.heart_ax


def sample_geometry(rng: np.random.Generator) -> Geometry:
    """A normal patient with slight pose and shape variation."""
    u = rng.uniform
    dome_r = u(0.67, 0.73)
    return Geometry(
        shift_x=u(-0.025, 0.025),
        shift_y=u(-0.025, 0.02),
        scale=u(0.93, 1.05),
        angle=np.deg2rad(u(-3.0, 3.0)),
        lung_cx=u(0.18, 0.2),
        lung_ax=u(0.155, 0.175),
        apex_y=u(0.1, 0.14),
        dome_right=dome_r,
        dome_left=dome_r + u(0.01, 0.04),
        dome_k=u(0.09, 0.13),
        med_w=u(0.05, 0.06),
        heart_cx=u(0.045, 0.065),
        heart_cy=u(0.62, 0.64),
        heart_ax=u(0.125, 0.145),
        heart_ay=u(0.13, 0.15),
    )


@lru_cache(maxsize=8)
def base_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1] (x, y), float32, read-only."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def canonical_grid(geo: Geometry, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) canonical coordinates of every pixel for this patient's pose."""
    x, y = base_grid(size)
    ca, sa = np.float32(np.cos(geo.angle) / geo.scale), np.float32(np.sin(geo.angle) / geo.scale)
    dx = x - np.float32(0.5 + geo.shift_x)
    dy = y - np.float32(0.5 + geo.shift_y)
    X = ca * dx + sa * dy
    Y = -sa * dx + ca * dy + np.float32(0.5)
    return X, Y


def diaphragm(geo: Geometry, X: np.ndarray) -> np.ndarray:
    """Y of the diaphragm under each X (domes, lower towards the costophrenic angles)."""
    q = (np.abs(X) - np.float32(geo.lung_cx)) / np.float32(geo.lung_ax)
    q = np.where(q > 0, q, np.float32(0.6) * q)  # flatter towards the midline
    dome = np.where(X < 0, np.float32(geo.dome_right), np.float32(geo.dome_left))
    return dome + np.float32(geo.dome_k) * q * q


def heart_field(geo: Geometry, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Implicit value of the heart (< 1 inside): an ellipse whose lower half reaches the diaphragm."""
    dy = (Y - np.float32(geo.heart_cy)) / np.float32(geo.heart_ay)
    dy = np.where(dy > 0, np.float32(0.65) * dy, dy)
    return ((X - np.float32(geo.heart_cx)) / np.float32(geo.heart_ax)) ** 2 + dy * dy


@dataclass
class Fields:
    """Shared per-patient fields on one grid (used by rendering and label maps)."""

    X: np.ndarray
    Y: np.ndarray
    thorax: np.ndarray  # implicit lung-ellipse value (< 1 inside the hemithorax)
    dia: np.ndarray  # diaphragm Y per pixel
    heart: np.ndarray  # implicit heart value (< 1 inside)
    lung: np.ndarray  # bool lung fields (heart and mediastinum excluded)
    heart_mask: np.ndarray  # bool


def fields(geo: Geometry, size: int) -> Fields:
    X, Y = canonical_grid(geo, size)
    ax = np.abs(X)
    ay = np.float32(geo.lung_cy - geo.apex_y)
    thorax = ((ax - np.float32(geo.lung_cx)) / np.float32(geo.lung_ax)) ** 2 + ((Y - np.float32(geo.lung_cy)) / ay) ** 2
    dia = diaphragm(geo, X)
    heart = heart_field(geo, X, Y)
    heart_mask = (heart < 1.0) & (Y < dia + np.float32(0.015))
    lung = (thorax < 1.0) & (Y < dia) & (ax > np.float32(geo.med_w)) & ~heart_mask
    return Fields(X, Y, thorax, dia, heart, lung, heart_mask)


def zone_bounds(f: Fields, side: str) -> tuple[float, float]:
    """(top, bottom) canonical Y of one lung."""
    ys = f.Y[f.lung & ((f.X < 0) if side == "right" else (f.X >= 0))]
    if ys.size == 0:
        return 0.0, 1.0
    return float(ys.min()), float(ys.max())


def label_map(f: Fields) -> np.ndarray:
    """uint16 anatomy bit map: heart and the eight lung zones."""
    edges = np.asarray(ZONE_EDGES[1:-1], dtype=np.float32)
    lut = np.zeros(2 * len(ZONE_KINDS), dtype=np.uint16)
    t = np.empty(f.X.shape, dtype=np.float32)
    for s, side in enumerate(("right", "left")):
        top, bot = zone_bounds(f, side)
        sel = (f.X < 0) if side == "right" else (f.X >= 0)
        np.copyto(t, (f.Y - np.float32(top)) / np.float32(max(bot - top, 1e-6)), where=sel)
        for k, kind in enumerate(ZONE_KINDS):
            lut[s * len(ZONE_KINDS) + k] = 1 << ATOMIC_REGIONS.index(zone_name(side, kind))
    code = np.searchsorted(edges, t, side="right").astype(np.uint8)
    code += (f.X >= 0).astype(np.uint8) * np.uint8(len(ZONE_KINDS))
    out = np.where(f.lung, lut[code], np.uint16(0))
    out[f.heart_mask] |= np.uint16(1 << ATOMIC_REGIONS.index("heart"))
    return out
