"""Render a phantom chest radiograph (display values in [0, 1], lungs dark) from its anatomy.

The smooth anatomy is computed on the truth grid (cfg.image.size) and upsampled to the image
size; fine-grained noise is added at full resolution from a cached noise bank (random crops), so
a 1024x1024 study costs a few tens of milliseconds on one core.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from ils.phantom.anatomy import Fields, Geometry


def _ramp(v: np.ndarray, k: float) -> np.ndarray:
    """Soft step: 0 for v << 0, 1 for v >> 0, linear over 1/k."""
    return np.clip(v * np.float32(k) + np.float32(0.5), 0.0, 1.0)


@lru_cache(maxsize=4)
def noise_bank(size: int) -> np.ndarray:
    """White gaussian noise, twice the image side, fixed (seed 0); crops of it vary per study."""
    return np.random.default_rng(0).standard_normal((2 * size, 2 * size), dtype=np.float32)


@lru_cache(maxsize=4)
def texture_bank(size: int) -> np.ndarray:
    """Smooth (low-pass) noise in about [-1, 1], twice the grid side: lung markings, patchiness."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    t = gaussian_filter(rng.standard_normal((2 * size, 2 * size)).astype(np.float32), sigma=size / 90.0, mode="wrap")
    fine = gaussian_filter(rng.standard_normal((2 * size, 2 * size)).astype(np.float32), sigma=size / 300.0, mode="wrap")
    t = t / (3.0 * t.std()) + 0.5 * fine / (3.0 * fine.std())
    return np.clip(t, -1.0, 1.0)


def crop(bank: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    oy, ox = rng.integers(0, bank.shape[0] - size, size=2)
    return bank[oy : oy + size, ox : ox + size]


def render_anatomy(geo: Geometry, f: Fields, rng: np.random.Generator) -> np.ndarray:
    """Healthy-appearance image on the grid of `f` (float32, not yet clipped)."""
    X, Y = f.X, f.Y
    n = X.shape[0]
    ax = np.abs(X)
    k1 = np.float32(n / 2.0)  # ramps about 2 px wide
    # body: soft tissue, air outside; shoulders wider than the neck
    body = _ramp(np.float32(1.0) - (X / np.float32(0.47)) ** 2 - ((Y - np.float32(0.7)) / np.float32(0.78)) ** 4, 25.0)
    img = np.float32(0.04) + np.float32(rng.uniform(0.38, 0.46)) * body
    # abdomen below the diaphragm
    img += np.float32(0.2) * _ramp(Y - f.dia, k1 / 1.5) * body
    # mediastinum (bright central column) with the spine faintly through it
    img += np.float32(0.16) * _ramp(np.float32(0.07) - ax, k1 / 3) * _ramp(Y - np.float32(0.05), 30.0)
    vert = np.cos(Y * np.float32(2 * np.pi / 0.048))
    img += _ramp(np.float32(0.035) - ax, k1 / 2) * (np.float32(0.06) + np.float32(0.03) * vert)
    # heart, sitting on the left hemidiaphragm
    heart = _ramp(np.float32(1.0) - f.heart, 12.0)
    img += np.float32(0.2) * heart * _ramp(f.dia - Y, k1 / 2)
    # lungs: dark, darkest in the middle, brighter towards the bases and the chest wall
    lung_soft = _ramp(np.float32(1.0) - f.thorax, 10.0) * _ramp(f.dia - Y, k1) * _ramp(ax - np.float32(geo.med_w), k1 / 2)
    lung_soft *= np.float32(1.0) - heart
    depth = np.float32(rng.uniform(0.3, 0.38))
    shade = np.float32(1.0) - np.float32(0.35) * f.thorax - np.float32(0.25) * np.clip((Y - np.float32(0.5)) * 3, 0, 1)
    tex = crop(texture_bank(n), n, rng)
    hd = ((ax - np.float32(0.1)) / np.float32(0.09)) ** 2 + ((Y - np.float32(0.45)) / np.float32(0.12)) ** 2
    hilum = np.float32(1.0) / (np.float32(1.0) + hd * hd)
    markings = np.float32(0.035) * tex * (np.float32(0.4) + hilum) + np.float32(0.05) * hilum
    img -= lung_soft * (depth * shade - markings)
    # ribs: posterior arcs (convex up) and fainter anterior ones, inside the chest wall
    chest = _ramp(np.float32(1.15) - f.thorax, 8.0) * _ramp(f.dia + np.float32(0.08) - Y, 20.0) * _ramp(ax - np.float32(0.04), 80.0)
    phi = Y + np.float32(0.25) * ax - np.float32(0.9) * ax * ax
    phase = np.sqrt(np.clip(phi - np.float32(0.06), 0, None)) * np.float32(rng.uniform(10.5, 11.5) * 2 * np.pi)
    ribs = np.clip((np.cos(phase) - np.float32(0.2)) * np.float32(1.25), 0, 1)
    phi2 = Y - np.float32(0.5) * ax + np.float32(0.3) * ax * ax
    ant = np.clip((np.cos(phi2 * np.float32(14.0 * 2 * np.pi)) - np.float32(0.6)) * np.float32(2.5), 0, 1)
    img += chest * (np.float32(0.075) * ribs + np.float32(0.03) * ant)
    # clavicles
    cy = np.float32(0.165) - np.float32(0.2) * (ax - np.float32(0.05))
    clav = _ramp(np.float32(0.013) - np.abs(Y - cy), k1 / 2) * _ramp(ax - np.float32(0.04), 80.0) * _ramp(np.float32(0.34) - ax, 60.0)
    img += np.float32(0.12) * clav
    return img


def _up2(a: np.ndarray, axis: int) -> np.ndarray:
    """Bilinear 2x upsampling along one axis (pixel-centre aligned, edges replicated)."""
    a = np.moveaxis(a, axis, 0)
    prev = np.concatenate([a[:1], a[:-1]])
    nxt = np.concatenate([a[1:], a[-1:]])
    out = np.empty((2 * a.shape[0],) + a.shape[1:], dtype=np.float32)
    out[0::2] = np.float32(0.75) * a + np.float32(0.25) * prev
    out[1::2] = np.float32(0.75) * a + np.float32(0.25) * nxt
    return np.moveaxis(out, 0, axis)


def upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square float32 image (fast path for 2x)."""
    if img.shape[0] == size:
        return img
    if size == 2 * img.shape[0]:
        return np.ascontiguousarray(_up2(_up2(img, 0), 1))
    return np.array(Image.fromarray(img, mode="F").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)  # writable copy


def expose(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure variation (gamma, gain, offset) on the smooth image; clipped to [0, 1]."""
    gamma = rng.uniform(0.85, 1.15)
    gain, offset = rng.uniform(0.9, 1.05), rng.uniform(-0.02, 0.03)
    out = np.clip(img, 0.0, 1.0)
    out **= np.float32(gamma)
    out *= np.float32(gain)
    out += np.float32(offset)
    return out


def finish(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Upsample to the image size, add quantum noise; float32 in [0, 1]."""
    out = upsample(img, size)
    if out is img:
        out = img.copy()
    sigma = np.float32(rng.uniform(0.008, 0.02))
    noise = crop(noise_bank(size), size, rng)
    out += sigma * noise
    np.clip(out, 0.0, 1.0, out=out)
    return out
