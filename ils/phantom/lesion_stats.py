"""Lesion statistics for real-base phantoms: measured once, shipped as a small JSON.

`compute(realcxr, xrv_data)` measures, on the real-base images only (non-held-out
`covid_radiologist`, see ils.phantom.real_base), the expert ground-glass and consolidation
masks (component area as a fraction of its lung, components per image, centroid height in the
lung, attenuation contrast logit(v) inside vs the rest of the visible lung), the lungs' size in
the frame, and the NIH (BBox_List_2017) and VinDr (vinbigdata-train) box lists that ship in
torchxrayvision's package data. Distributions are stored as quantiles (0, 0.05, ..., 1).
`python -m ils.phantom.lesion_stats --data ../shared/realcxr` rewrites the JSON.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STATS_PATH = Path(__file__).resolve().parent / "data" / "lesion_stats.json"
QS = [round(q, 2) for q in np.linspace(0, 1, 21)]
NIH_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Pneumonia", "Nodule", "Mass")
VINDR_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Infiltration", "Lung Opacity", "Pleural effusion")
MIN_COMPONENT = 0.0005  # of the image: smaller specks of an expert mask are ignored


def _q(values) -> list[float]:
    v = np.asarray(list(values), np.float64)
    return [round(float(x), 5) for x in np.quantile(v, QS)] if v.size else []


def sample_q(qs: list[float], u: float) -> float:
    """Inverse-CDF sample from stored quantiles (linear between them)."""
    return float(np.interp(u, QS, qs))


def _logit(v: np.ndarray) -> np.ndarray:
    v = np.clip(v.astype(np.float64), 1e-3, 1 - 1e-3)
    return np.log(v) - np.log1p(-v)


def realcxr_stats(root: str) -> dict:
    from scipy.ndimage import label

    from ils.phantom.real_base import load_bases

    bases = load_bases(str(root))
    out: dict = {"images": [f"{b.set}/{b.name}" for b in bases]}
    side_frac, thor_w, ctr = [], [], []
    for b in bases:
        n = b.image.shape[0] * b.image.shape[1]
        for s in ("lung_right", "lung_left"):
            side_frac.append(b.masks[s].sum() / n)
        cols = np.nonzero((b.masks["lung_right"] | b.masks["lung_left"]).any(axis=0))[0]
        thor_w.append(np.ptp(cols) / b.image.shape[1])
        ctr.append(b.ctr)
    out["lung_side_area_frac"] = _q(side_frac)
    out["thoracic_width_frac"] = _q(thor_w)
    out["ctr"] = _q(ctr)
    for struct in ("ground_glass_opacity", "consolidation"):
        area, ncomp, height, contrast, dcontrast = [], [], [], [], []
        for b in bases:
            m = b.masks.get(struct)
            if m is None or not m.any():
                continue
            v = b.image.astype(np.float32) / 255.0
            lab, k = label(m, structure=np.ones((3, 3)))
            n = m.size
            kept = 0
            for i in range(1, k + 1):
                comp = lab == i
                if comp.sum() < MIN_COMPONENT * n:
                    continue
                kept += 1
                side = "lung_right" if (comp & b.masks["lung_right"]).sum() >= (comp & b.masks["lung_left"]).sum() else "lung_left"
                lung = b.masks[side]
                area.append(comp.sum() / max(lung.sum(), 1))
                rows = np.nonzero(lung.any(axis=1))[0]
                cy = np.nonzero(comp)[0].mean()
                height.append((cy - rows.min()) / max(np.ptp(rows), 1))
            ncomp.append(kept)
            visible = (b.masks["lung_right"] | b.masks["lung_left"]) & ~b.masks["cardiomediastinum"]
            inside = m & visible
            rest = visible & ~m
            rest = rest & ~b.masks.get("consolidation", np.zeros_like(m)) & ~b.masks.get("ground_glass_opacity", np.zeros_like(m))
            if inside.sum() > 50 and rest.sum() > 50:
                lv = _logit(v)
                contrast.append(float(lv[inside].mean() - lv[rest].mean()))
                dcontrast.append(float(v[inside].mean() - v[rest].mean()))
        out[struct] = {"n_images": len(ncomp), "component_area_frac_of_lung": _q(area), "components_per_image": _q(ncomp),
                       "centroid_height_in_lung": _q(height), "contrast_logit": _q(contrast), "contrast_display": _q(dcontrast)}
    return out


def nih_stats(path: Path) -> dict:
    rows: dict[str, list[tuple[float, float]]] = {}
    with gzip.open(path, "rt") as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            cls = row[1]
            w, h = float(row[4]) / 1024.0, float(row[5]) / 1024.0  # NIH images are 1024 x 1024
            rows.setdefault(cls, []).append((w, h))
    return {c: {"n": len(v), "w_frac": _q(x for x, _ in v), "h_frac": _q(y for _, y in v), "area_frac": _q(x * y for x, y in v)}
            for c, v in sorted(rows.items()) if c in NIH_CLASSES}


def vindr_stats(path: Path) -> dict:
    """Aspect ratios and boxes per (image, reader): the CSV has no image sizes, so no relative sizes."""
    asp: dict[str, list[float]] = {}
    per: dict[tuple[str, str, str], int] = {}
    with gzip.open(path, "rt") as f:
        for row in csv.DictReader(f):
            c = row["class_name"]
            if c not in VINDR_CLASSES or not row["x_min"]:
                continue
            w, h = float(row["x_max"]) - float(row["x_min"]), float(row["y_max"]) - float(row["y_min"])
            if w > 0 and h > 0:
                asp.setdefault(c, []).append(h / w)
                per[(c, row["image_id"], row["rad_id"])] = per.get((c, row["image_id"], row["rad_id"]), 0) + 1
    return {c: {"n": len(v), "aspect_h_over_w": _q(v), "boxes_per_image_reader": _q(n for (cc, _, _), n in per.items() if cc == c)}
            for c, v in sorted(asp.items())}


def compute(realcxr: str, xrv_data: str) -> dict:
    xrv = Path(xrv_data)
    return {
        "how": ("python -m ils.phantom.lesion_stats --data REALCXR: realcxr = non-held-out covid_radiologist images "
                "(ilsgen.anatomy_net.data.held_out excluded) at their own size, components >= 0.05% of the image; "
                "contrast = mean logit(display) inside the mask minus the rest of the visible lung (lungs minus "
                "cardiomediastinum, other lesions excluded); NIH = BBox_List_2017.csv.gz sizes / 1024; VinDr = "
                "vinbigdata-train.csv.gz aspect ratios and boxes per image and reader (no image sizes in that CSV). "
                "Quantiles at 0, 0.05, ..., 1."),
        "quantiles": QS,
        "realcxr": realcxr_stats(realcxr),
        "nih": nih_stats(xrv / "BBox_List_2017.csv.gz"),
        "vindr": vindr_stats(xrv / "vinbigdata-train.csv.gz"),
    }


@lru_cache(maxsize=1)
def load() -> dict:
    return json.loads(STATS_PATH.read_text())


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="realcxr-layout folder")
    ap.add_argument("--out", default=str(STATS_PATH))
    a = ap.parse_args(argv)
    spec = importlib.util.find_spec("torchxrayvision")  # located without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchxrayvision is not installed (its package data holds the box lists)")
    xrv = Path(list(spec.submodule_search_locations)[0]) / "data"
    stats = compute(a.data, str(xrv))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(stats, indent=1) + "\n")
    logging.getLogger(__name__).info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
