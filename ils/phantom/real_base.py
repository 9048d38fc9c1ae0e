"""Real radiographs as bases for phantom studies (`sample.real_base`, docs/real_base.md).

A base is a non-held-out `covid_radiologist` image of a realcxr-layout folder
(`ilsgen.anatomy_net.data.load_real`, held-out rule `held_out(position)`) with its expert
lung_right, lung_left and cardiomediastinum masks; its outlined lesions (ground-glass opacity,
consolidation, effusion) are kept as truth. `shenzhen_tb` is never a base: it shows TB that
nobody outlined, so any negative drawn on it could be false.

Images are padded to a square (centred, border value) so the study and truth grids stay
square; decoded bases are cached per process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

BASE_SETS: tuple[str, ...] = ("covid_radiologist",)
#: realcxr structure -> platform lesion kept in the truth
KEPT_LESIONS: dict[str, str] = {"ground_glass_opacity": "opacity", "consolidation": "consolidation", "effusion": "effusion"}
ANATOMY = ("lung_right", "lung_left", "cardiomediastinum")
CTR_PRESENT = 0.5  # cardiothoracic ratio above which a PA base counts as cardiomegaly
CTR_UNSURE = 0.47  # between this and CTR_PRESENT (or on any AP base): no cardiomegaly claim either way


@dataclass
class RealBase:
    """One base radiograph, padded to a square, with its masks (same square grid)."""

    set: str
    name: str
    position: int
    view: str
    image: np.ndarray  # uint8 (S, S), lungs dark
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # structure -> bool (S, S)
    ctr: float = 0.0  # cardiothoracic ratio from the expert masks

    @property
    def cardiomegaly(self) -> str:
        """'present' | 'absent' | 'unsure' (AP views magnify the heart: never 'absent' or 'present')."""
        if self.view.upper() != "PA" or CTR_UNSURE < self.ctr <= CTR_PRESENT:
            return "unsure"
        return "present" if self.ctr > CTR_PRESENT else "absent"


def cardiothoracic_ratio(lungs: np.ndarray, heart: np.ndarray) -> float:
    """Widest row of the cardiac silhouette over the widest horizontal extent of the lungs."""
    cols = np.nonzero(lungs.any(axis=0))[0]
    if cols.size == 0 or not heart.any():
        return 0.0
    rows = np.nonzero(heart.any(axis=1))[0]
    widths = [np.ptp(np.nonzero(heart[r])[0]) + 1 for r in rows]
    return float(max(widths) / (cols.max() - cols.min() + 1))


def _square(a: np.ndarray, fill) -> np.ndarray:
    h, w = a.shape
    s = max(h, w)
    out = np.full((s, s), fill, dtype=a.dtype)
    y0, x0 = (s - h) // 2, (s - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = a
    return out


def _from_case(case) -> RealBase:
    from ilsgen.anatomy_net.data import cardiac_part

    from ils.imageio import to_uint8

    img = to_uint8(case.image)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    sq = _square(img, np.uint8(np.median(border)))
    masks = {k: _square(np.asarray(v, bool), False) for k, v in case.masks.items()
             if k in ANATOMY or k in KEPT_LESIONS}
    ctr = cardiothoracic_ratio(masks["lung_right"] | masks["lung_left"], cardiac_part(masks["cardiomediastinum"]))
    return RealBase(case.set, case.name, case.position, str(case.row.get("view") or "PA"), sq, masks, ctr)


def available(root: str | Path | None) -> bool:
    return bool(root) and (Path(root) / "index.csv").is_file()


@lru_cache(maxsize=4)
def load_bases(root: str) -> tuple[RealBase, ...]:
    """The usable bases under `root` (non-held-out, all three anatomy masks), cached per process."""
    from ilsgen.anatomy_net.data import load_real

    cases = load_real(Path(root), sets=BASE_SETS)
    bases = tuple(_from_case(c) for c in cases if not c.held_out() and all(k in c.masks for k in ANATOMY))
    if not bases:
        raise ValueError(f"{root}: no usable base images (non-held-out {BASE_SETS} with {ANATOMY} masks)")
    log.info("real bases: %d images of %s from %s (held-out fifth excluded)", len(bases), BASE_SETS, root)
    return bases


@lru_cache(maxsize=128)
def resized(root: str, i: int, size: int, tsize: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Base `i` as float32 image at `size` and bool masks at `tsize` (cached, read-only)."""
    b = load_bases(root)[i]
    img = np.asarray(Image.fromarray(b.image).resize((size, size), Image.Resampling.BILINEAR), np.float32) / np.float32(255.0)
    img.setflags(write=False)
    masks = {}
    for k, m in b.masks.items():
        r = np.asarray(Image.fromarray(m.astype(np.uint8) * np.uint8(255)).resize((tsize, tsize), Image.Resampling.BILINEAR)) > 127
        r.setflags(write=False)
        masks[k] = r
    return img, masks
