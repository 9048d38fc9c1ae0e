"""Training examples for the anatomy network: real radiographs with expert masks, and phantoms.

Real data (`realcxr` layout, see /work/shared/realcxr/README.md): `index.csv` rows with `set`
and `name`; `<set>/images/<name>.png`, `<set>/masks/<structure>/<name>.png` (0/255). Targets
per channel (ilsgen.anatomy_net.model.CHANNELS), each with a known/unknown flag (unknown
channels carry no loss):

- covid_radiologist: lung_right / lung_left -> the full-outline channels; lung minus
  cardiomediastinum -> `lung_visible`; `cardiac_part(cardiomediastinum)` -> `heart`;
  ground_glass_opacity -> `opacity`, consolidation -> `consolidation` (a missing lesion mask
  means none was outlined: an empty target).
- shenzhen_tb: lung -> `lung_visible` (its lungs stop at the heart border); the rest unknown
  (TB lesions are not outlined).
- phantoms (ils.phantom, exact synthetic truth): lungs -> `lung_visible`, heart -> `heart`,
  opacity-type lesion masks (opacity, pneumonia, atelectasis, edema, consolidation) -> `opacity`,
  consolidation -> `consolidation`; full outlines unknown.

Held-out rule (`held_out`): within each set, in index.csv order, every 5th image (position
% 5 == fold; the shipped weights use fold 4) is kept out of training, so development-split
figures of a trained model can be read on images it never saw; folds 0-4 together give a
5-fold cross-validation.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ilsgen.anatomy_net.model import CHANNELS, prepare

log = logging.getLogger(__name__)

HEART_WIDTH_FRACTION = 0.6
OPACITY_LIKE = ("opacity", "pneumonia", "atelectasis", "edema", "consolidation")


@dataclass
class Example:
    """One training image at the network's input size."""

    name: str
    set: str
    image: np.ndarray  # (N, N) float32 network input
    target: np.ndarray  # (C, N, N) float32 in [0, 1]
    known: np.ndarray  # (C,) float32 1 = supervised


@dataclass
class RealCase:
    """One real radiograph with its expert masks at the image's own size."""

    name: str
    set: str
    position: int  # index within its set, index.csv order
    image: np.ndarray  # (H, W) float32 in [0, 1]
    masks: dict[str, np.ndarray]  # structure -> bool (H, W)
    row: dict[str, str]

    def held_out(self, fold: int = 4) -> bool:
        return held_out(self.position, fold)


def held_out(position: int, fold: int = 4) -> bool:
    """The held-out part of each set for `fold`: every 5th image in index.csv order."""
    return position % 5 == fold


def read_index(root: Path) -> list[dict[str, str]]:
    path = Path(root) / "index.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no index.csv (expected the realcxr layout: <set>/images, <set>/masks/<structure>, index.csv)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_gray(path: Path) -> np.ndarray:
    """8-bit grayscale PNG -> float32 [0, 1] (via the project's decoder)."""
    from ils.imageio import decode_image

    return decode_image(Path(path).read_bytes(), name=Path(path).name).pixels


def load_real(root: Path, sets: tuple[str, ...] | None = None, limit: int | None = None) -> list[RealCase]:
    """Every image of the index (optionally some sets, the first `limit` per set)."""
    root = Path(root)
    cases, seen = [], {}
    for row in read_index(root):
        s = row["set"]
        if sets and s not in sets:
            continue
        pos = seen.get(s, 0)
        seen[s] = pos + 1
        if limit is not None and pos >= limit:
            continue
        base = root / s
        masks = {}
        mdir = base / "masks"
        for struct_dir in sorted(p for p in mdir.iterdir() if p.is_dir()) if mdir.is_dir() else []:
            f = struct_dir / f"{row['name']}.png"
            if f.is_file():
                masks[struct_dir.name] = np.asarray(Image.open(f).convert("L")) > 127
        cases.append(RealCase(row["name"], s, pos, load_gray(base / "images" / f"{row['name']}.png"), masks, row))
    return cases


def cardiac_part(cm: np.ndarray, fraction: float = HEART_WIDTH_FRACTION) -> np.ndarray:
    """The cardiac silhouette of a cardiomediastinum mask: its rows from the first one (top down)
    whose width reaches `fraction` (0.6) of the widest row, downwards. The upper mediastinum
    (trachea, great vessels) is narrow; the mask widens where the heart begins."""
    cm = np.asarray(cm, bool)
    width = ndi.uniform_filter1d(cm.sum(axis=1).astype(np.float32), size=max(3, cm.shape[0] // 50))
    if width.max() <= 0:
        return np.zeros_like(cm)
    start = int(np.argmax(width >= fraction * width.max()))
    out = cm.copy()
    out[:start] = False
    return out


def _down(mask: np.ndarray, n: int) -> np.ndarray:
    """Area-averaged (n, n) version of a boolean mask (soft target)."""
    img = Image.fromarray(mask.astype(np.float32), mode="F").resize((n, n), Image.Resampling.BOX)
    return np.clip(np.asarray(img), 0, 1)


def real_targets(case: RealCase) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) targets and (C,) known flags at the image's own size."""
    h, w = case.image.shape
    t = np.zeros((len(CHANNELS), h, w), np.float32)
    known = np.zeros(len(CHANNELS), np.float32)
    m = case.masks
    c = {n: i for i, n in enumerate(CHANNELS)}
    if "lung_right" in m and "lung_left" in m:
        t[c["lung_right_full"]], t[c["lung_left_full"]] = m["lung_right"], m["lung_left"]
        known[[c["lung_right_full"], c["lung_left_full"]]] = 1
    if "cardiomediastinum" in m:
        if "lung_right" in m and "lung_left" in m:  # one image has only its right lung outlined
            t[c["lung_visible"]] = (m["lung_right"] | m["lung_left"]) & ~m["cardiomediastinum"]
            known[c["lung_visible"]] = 1
        t[c["heart"]] = cardiac_part(m["cardiomediastinum"])
        known[c["heart"]] = 1
        # lesions: outlined by the same radiologists; a missing mask means none was outlined
        t[c["opacity"]] = m.get("ground_glass_opacity", np.zeros((h, w), bool))
        t[c["consolidation"]] = m.get("consolidation", np.zeros((h, w), bool))
        known[[c["opacity"], c["consolidation"]]] = 1
    elif "lung" in m:
        t[c["lung_visible"]] = m["lung"]
        known[c["lung_visible"]] = 1
    return t, known


def real_examples(cases: list[RealCase], n: int) -> list[Example]:
    out = []
    for case in cases:
        t, known = real_targets(case)
        out.append(Example(case.name, case.set, prepare(case.image, n), np.stack([_down(x > 0.5, n) for x in t]), known))
    return out


def phantom_examples(count: int, n: int, seed: int = 101) -> list[Example]:
    """`count` phantom studies (ils.phantom, exact synthetic truth) at input size n."""
    from ils.config import SampleConfig
    from ils.phantom.sample import generate_study
    from ils.vocab import region_bit

    size = 256
    cfg = SampleConfig(size=size)
    c = {k: i for i, k in enumerate(CHANNELS)}
    out = []
    for i in range(count):
        st = generate_study(seed, i, cfg, truth_size=size)
        a = st.anatomy
        t = np.zeros((len(CHANNELS), size, size), np.float32)
        known = np.zeros(len(CHANNELS), np.float32)
        t[c["lung_visible"]] = (a & np.uint16(region_bit("lung"))) != 0
        t[c["heart"]] = (a & np.uint16(region_bit("heart"))) != 0
        for lesion in OPACITY_LIKE:
            for mk in st.masks.get(lesion, []):
                t[c["opacity"]] = np.maximum(t[c["opacity"]], mk)
        for mk in st.masks.get("consolidation", []):
            t[c["consolidation"]] = np.maximum(t[c["consolidation"]], mk)
        known[[c["lung_visible"], c["heart"], c["opacity"], c["consolidation"]]] = 1
        out.append(Example(f"phantom-{seed}-{i}", "phantom", prepare(st.image, n),
                           np.stack([_down(x > 0.5, n) for x in t]), known))
    return out
