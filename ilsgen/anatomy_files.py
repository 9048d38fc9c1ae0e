"""`ils anatomy IMAGE... --out DIR`: region masks at each image's own size, and an overlay.

    segment_files(paths, out_dir, cfg) -> exit code (0 all written, 1 some image failed)
    region_masks(backend, pixels, image_size) -> dict location -> bool (H, W)

For each image, `DIR/<stem>/<region>.png` (0/255, the image's own height and width), one per
location of `ils.vocab.LOCATIONS` with spaces as underscores, and `DIR/<stem>/overlay.png`
(the image with the lungs' zones and the heart tinted). A backend with `bits_at` (the `lite`
network) draws the masks at the image's size directly; others segment the square working image
and their masks are resized (bilinear, 0.5). A bad image gets one line on stderr and the
others still run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ils.vocab import LOCATIONS, ZONES, region_bit

log = logging.getLogger(__name__)

#: Overlay colours (RGB) of the atomic regions.
ZONE_COLOURS = {
    "apical zone lung": (66, 135, 245), "upper zone lung": (60, 200, 120), "mid zone lung": (245, 190, 40),
    "lung base": (200, 80, 220),
}
HEART_COLOUR = (230, 50, 50)


def file_name(region: str) -> str:
    """`right upper zone lung` -> `right_upper_zone_lung.png`."""
    return region.replace(" ", "_") + ".png"


def resize_bits(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bit map at another (H, W): each atomic bit resized bilinearly, thresholded at 0.5."""
    from ils.vocab import ATOMIC_REGIONS

    if bits.shape == tuple(shape):
        return bits
    out = np.zeros(shape, np.uint16)
    for region in ATOMIC_REGIONS:
        b = np.uint16(region_bit(region))
        m = Image.fromarray(((bits & b) != 0).astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        out[np.asarray(m) >= 0.5] |= b
    return out


def image_bits(backend: Any, pixels: np.ndarray, image_size: int) -> np.ndarray:
    """The anatomy bit map of one decoded image at its own size."""
    from ils.imageio import resize_square

    shape = pixels.shape
    if hasattr(backend, "bits_at"):
        return backend.bits_at(resize_square(pixels, image_size), shape)
    return resize_bits(backend.segment([resize_square(pixels, image_size)])[0], shape)


def region_masks(bits: np.ndarray) -> dict[str, np.ndarray]:
    """location -> bool mask for every location of the vocabulary."""
    return {loc: (bits & np.uint16(region_bit(loc))) != 0 for loc in LOCATIONS}


def overlay(pixels: np.ndarray, bits: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """uint8 RGB (H, W, 3): the image with each zone and the heart tinted."""
    gray = np.clip(pixels * 255, 0, 255).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for zone in ZONES:
        kind = zone.split(" ", 1)[1]
        m = (bits & np.uint16(region_bit(zone))) != 0
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(ZONE_COLOURS[kind], np.float32)
    m = (bits & np.uint16(region_bit("heart"))) != 0
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(HEART_COLOUR, np.float32)
    return rgb.astype(np.uint8)


def _stems(paths: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n + 1}")
    return out


def segment_files(paths: Sequence[str], out_dir: str, cfg: Any) -> int:
    """Write the masks and overlay of every image; 1 when any image failed."""
    from ils.imageio import decode_image
    from ilsgen.stages.registry import make_backend

    backend = make_backend("anatomy", cfg.gen.anatomy, cfg.image.size)
    out = Path(out_dir)
    failed = 0
    for path, stem in zip(paths, _stems(paths)):
        try:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"no such file")
            data = p.read_bytes()
            if cfg.image.max_bytes and len(data) > cfg.image.max_bytes:
                raise ValueError(f"file of {len(data)} bytes is over image.max_bytes")
            pixels = decode_image(data, name=p.name, max_pixels=cfg.image.max_pixels).pixels
            bits = image_bits(backend, pixels, cfg.image.size)
            folder = out / stem
            folder.mkdir(parents=True, exist_ok=True)
            for loc, m in region_masks(bits).items():
                Image.fromarray((m * 255).astype(np.uint8), mode="L").save(folder / file_name(loc))
            Image.fromarray(overlay(pixels, bits), mode="RGB").save(folder / "overlay.png")
            log.info("anatomy: %s -> %s (%d x %d)", p.name, folder, pixels.shape[1], pixels.shape[0])
        except Exception as exc:  # one bad image must not stop the others
            failed += 1
            print(f"ils anatomy: {Path(path).name}: error: {exc}", file=sys.stderr)
    return 1 if failed else 0
