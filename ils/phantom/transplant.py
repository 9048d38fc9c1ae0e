"""Real lesion shapes moved into other lungs: a component of an expert ground-glass or
consolidation mask of one base (a donor, never held out) is carried through both bases'
canonical frames (composite.CanonFrame: lungs' midline, width, apex and base aligned), mirrored
when it changes side, restricted to the target lung and softened into a density.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ils.phantom import composite as C
from ils.phantom import real_base as RB
from ils.phantom.anatomy import ZONE_EDGES
from ils.vocab import ZONE_KINDS

DONOR_STRUCT = {"opacity": "ground_glass_opacity", "consolidation": "consolidation"}
MIN_COMPONENT = 0.002  # of the truth grid


@dataclass
class Donor:
    base: int
    mask: np.ndarray  # bool component on the donor's truth grid
    frame: C.CanonFrame
    side: str  # right | left (the patient's)
    kind: str  # zone kind of its centroid


@lru_cache(maxsize=8)
def donors(root: str, lesion: str, tsize: int) -> tuple[Donor, ...]:
    from scipy.ndimage import label

    out = []
    struct = DONOR_STRUCT[lesion]
    for i, b in enumerate(RB.load_bases(root)):
        if struct not in b.masks:
            continue
        m = RB.resized(root, i, 64, tsize)[1]
        frame = C.canon_frame(m["lung_right"], m["lung_left"])
        lab, k = label(m[struct], structure=np.ones((3, 3)))
        for j in range(1, k + 1):
            comp = lab == j
            if comp.mean() < MIN_COMPONENT:
                continue
            side = "right" if (comp & m["lung_right"]).sum() >= (comp & m["lung_left"]).sum() else "left"
            lung = m[f"lung_{side}"]
            rows = np.nonzero(lung.any(axis=1))[0]
            h = (np.nonzero(comp)[0].mean() - rows.min()) / max(np.ptp(rows), 1)
            kind = ZONE_KINDS[int(np.clip(np.searchsorted(ZONE_EDGES[1:-1], h, side="right"), 0, len(ZONE_KINDS) - 1))]
            out.append(Donor(i, comp, frame, side, kind))
    return tuple(out)


def transplant(root: str, lesion: str, target: C.CanonFrame, region: np.ndarray, side: str, kind: str,
               rng: np.random.Generator, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(mask, density in [0, 1]) of a donor component placed in `region` (one lung), or None."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    from ils.phantom.render import crop, texture_bank

    n = region.shape[0]
    pool = [d for d in donors(root, lesion, n) if d.base != exclude]
    if not pool:
        return None
    same = [d for d in pool if d.kind == kind]
    d = (same or pool)[int(rng.integers(len(same or pool)))]
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    X = (c - target.mid) * target.sx
    Y = C.CANON_APEX + (c - target.top) * target.sy
    flip = -1.0 if d.side != side else 1.0
    xd, yd = d.frame.to_image(flip * X, Y)
    jit = rng.uniform(-0.02, 0.02, size=2)  # a little freedom of placement (canonical units)
    xd, yd = xd + jit[0] / d.frame.sx, yd + jit[1] / d.frame.sy
    rr, cc = np.meshgrid(yd * n - 0.5, xd * n - 0.5, indexing="ij")
    m = map_coordinates(d.mask.astype(np.float32), [rr, cc], order=1, mode="constant", cval=0.0)
    soft = gaussian_filter(m, sigma=max(1.0, n / 256)) * region
    mask = (soft >= 0.5) & region
    if not mask.any():
        return None
    tex = crop(texture_bank(n), n, rng)
    density = (np.clip(soft * 1.15, 0, 1) * (np.float32(0.8) + np.float32(0.2) * tex) * region).astype(np.float32)
    density = np.where(density >= C.MIN_DENSITY, density, np.float32(0)).astype(np.float32)
    return mask & (density > 0), density
