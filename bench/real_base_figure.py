"""A grid of phantom studies on real bases with truth outlines (docs/real_base.md).

python bench/real_base_figure.py --data ../shared/realcxr --out real_base_samples.png [--n 8 --seed 3]
Colours: opacity yellow, consolidation red, pneumonia orange, atelectasis magenta, edema cyan,
effusion blue, cardiomegaly green; the label says which lesions were kept from the base (real masks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLOURS = {"opacity": (255, 230, 0), "consolidation": (255, 40, 40), "pneumonia": (255, 140, 0), "atelectasis": (255, 0, 255),
           "edema": (0, 230, 230), "effusion": (60, 120, 255), "cardiomegaly": (0, 220, 0)}


def tile(study, px: int) -> Image.Image:
    from scipy.ndimage import binary_erosion

    g = Image.fromarray(np.clip(study.image * 255, 0, 255).astype(np.uint8)).resize((px, px), Image.Resampling.BILINEAR)
    rgb = np.stack([np.asarray(g)] * 3, -1).copy()
    for lesion, masks in study.masks.items():
        for m in masks:
            mm = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((px, px), Image.Resampling.NEAREST)) > 127
            edge = mm & ~binary_erosion(mm, iterations=2)
            rgb[edge] = COLOURS[lesion]
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    kept = ",".join(study.meta.get("kept_lesions", [])) or "-"
    syn = ",".join(sorted(set(study.masks) - set(study.meta.get("kept_lesions", [])))) or "-"
    d.rectangle([0, 0, px, 26], fill=(0, 0, 0))
    d.text((4, 2), f"synthetic: {syn}", fill=(255, 255, 255))
    d.text((4, 14), f"kept real: {kept}", fill=(200, 200, 200))
    return im


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--px", type=int, default=384)
    a = ap.parse_args()
    from ils.config import Config
    from ils.phantom.real_sample import generate_real_study

    cfg = Config()
    cfg.sample.real_base = a.data
    tiles = [tile(generate_real_study(a.seed, i, cfg), a.px) for i in range(a.n)]
    cols = 4
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * a.px, rows * a.px))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % cols) * a.px, (k // cols) * a.px))
    grid.save(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
