"""`ils real-eval`: anatomy, the pipeline's lesion masks and (optionally) a ROSALIA checkpoint
scored on real radiographs.

    evaluate(data_dir, cfg, sets=None, limit=None, lesions=True, anatomy=True, checkpoint=None)
        -> (JSON record, picture material)

With a checkpoint, the model section (`ilsgen.real_eval_model`) adds per image `model` and per
set and group (`held_out`, `all`) a `model` summary; `anatomy=False` runs it alone.

Data: a realcxr-layout folder (`<set>/images`, `<set>/masks/<structure>`, `index.csv`).

Anatomy, per image, at the image's own size:
- lung (both), right and left lung Dice, in each set's own convention: `covid_radiologist`
  lungs are whole outlines (including the part behind the heart): scored with the network's
  whole-outline channels; `shenzhen_tb` lungs stop at the heart border: scored with the
  pipeline's lung map (the anatomy bit map; its lungs never overlap the heart). A one-mask set
  is split into right and left by its components' sides. Backends without whole-outline
  channels are scored with their bit map in both sets (and the JSON says so).
- heart: Dice against the cardiac part of the cardiomediastinum
  (`ilsgen.anatomy_net.data.cardiac_part`) and the fraction of heart pixels inside the
  radiologists' cardiomediastinum.
- zones: by construction (vertical fractions of each lung), not scored; their presence is counted.

Lesions (images with an outlined ground-glass opacity, consolidation or effusion): a report is
written from each image's outlined lesions and their side ("Ground glass opacities in both
lungs. Consolidation in the left lung."), parsed by the `rules` report backend, and the configured
anatomy -> anomaly -> detect -> fuse stages make the masks, as `ils gen` does. IoU of the union of
a lesion's masks against its expert mask, next to the whole-lung answer (the expert lung of the
reported side(s)). The anomaly model is used as configured; what it was fitted on is recorded.

Figures from images the shipped network was trained on are marked (`trained_on`); per-set
summaries are given for the held-out images and for all (the shipped network's held-out images
are the `held_out(position)` fifth, the same rule the model section groups by).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ilsgen.anatomy_net.data import RealCase, cardiac_part, load_real

log = logging.getLogger(__name__)

#: Expert mask name -> (pipeline lesion, report phrase for one finding).
LESION_MASKS = {
    "ground_glass_opacity": ("opacity", "Ground glass opacities"),
    "consolidation": ("consolidation", "Consolidation"),
    "effusion": ("effusion", "Pleural effusion"),
}
CONVENTION = {
    "covid_radiologist": "whole outline (the lung behind the heart included)",
    "shenzhen_tb": "stops at the heart border",
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask.astype(bool)
    img = Image.fromarray(mask.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(img) >= 0.5


def split_sides(lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) of a both-lungs mask: components by the side of their centroid (patient's
    right = image left)."""
    lab, n = ndi.label(lung)
    right, left = np.zeros_like(lung), np.zeros_like(lung)
    w = lung.shape[1]
    for i, com in enumerate(ndi.center_of_mass(lung, lab, range(1, n + 1)), start=1):
        (right if com[1] < w / 2 else left)[lab == i] = True
    return right, left


def sides_of(mask: np.ndarray, case: RealCase) -> list[str]:
    """The patient's side(s) holding at least 10 % of a lesion mask."""
    m = case.masks
    if "lung_right" in m and "lung_left" in m:
        r, l = m["lung_right"], m["lung_left"]
    else:
        r, l = split_sides(m.get("lung", np.zeros_like(mask)))
    total = max(int(mask.sum()), 1)
    out = [s for s, side in (("right", r), ("left", l)) if (mask & side).sum() >= 0.1 * total]
    return out or ["right", "left"]


def report_for(case: RealCase) -> tuple[str, dict[str, list[str]]]:
    """A report naming each outlined lesion and its side, and lesion -> sides."""
    sentences, sides = [], {}
    for name, (lesion, phrase) in LESION_MASKS.items():
        mk = case.masks.get(name)
        if mk is None or not mk.any():
            continue
        s = sides_of(mk, case)
        sides[lesion] = s
        where = "in both lungs" if len(s) == 2 else f"in the {s[0]} lung"
        sentences.append(f"{phrase} {where}.")
    return " ".join(sentences), sides


class Scorer:
    """The configured stages, built once."""

    def __init__(self, cfg: Any, lesions: bool = True) -> None:
        from ilsgen.stages.registry import make_backend

        self.cfg = cfg
        self.size = cfg.image.size
        self.anatomy = make_backend("anatomy", cfg.gen.anatomy, self.size)
        self.lesions = lesions
        if lesions:
            from ilsgen.report import make_report_backend

            self.report = make_report_backend(type(cfg.gen.report)(backend="rules"))
            self.anomaly = make_backend("anomaly", cfg.gen.anomaly, self.size)
            self.detect = make_backend("detect", cfg.gen.detect, self.size)

    def anatomy_maps(self, square: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, dict[str, np.ndarray] | None, np.ndarray]:
        """(bit map at shape, whole-outline (right, left) at shape or None, bit map at S)."""
        from ilsgen.anatomy_files import resize_bits

        if hasattr(self.anatomy, "net") and getattr(self.anatomy, "method", "") == "net":
            prob = self.anatomy.net.predict([square])[0]
            from ilsgen.anatomy_net.model import CHANNELS, upsample

            full = {side: upsample(prob[CHANNELS.index(f"lung_{side}_full")], shape) > 0.5 for side in ("right", "left")}
            return self.anatomy.bits_from(prob, shape), full, self.anatomy.bits_from(prob, (self.size, self.size))
        bits_s = self.anatomy.segment([square])[0]
        return resize_bits(bits_s, shape), None, bits_s

    def score_anatomy(self, case: RealCase, square: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
        from ils.vocab import ZONES, region_bit

        shape = case.image.shape
        bits, full, bits_s = self.anatomy_maps(square, shape)
        reg = lambda r: (bits & np.uint16(region_bit(r))) != 0
        m = case.masks
        row: dict[str, Any] = {}
        if "lung_right" in m or "lung_left" in m:  # per-side masks: the whole-outline convention
            pr, pl = (full["right"], full["left"]) if full else (reg("right lung"), reg("left lung"))
            tr, tl = m.get("lung_right"), m.get("lung_left")
            row["lung_scored_with"] = "whole-outline channels" if full else "bit map"
        else:
            pr, pl = reg("right lung"), reg("left lung")
            tr, tl = split_sides(m["lung"])
            row["lung_scored_with"] = "bit map"
        # a side without an expert outline is not scored (one image has only its right lung)
        sides = [(p, t) for p, t in ((pr, tr), (pl, tl)) if t is not None]
        truth_lung = np.logical_or.reduce([t for _, t in sides])
        pred_lung = np.logical_or.reduce([p for p, _ in sides])
        row.update(lung_dice=dice(pred_lung, truth_lung), right_lung_dice=None if tr is None else dice(pr, tr),
                   left_lung_dice=None if tl is None else dice(pl, tl))
        if len(sides) < 2:
            row["note"] = "only one lung outlined by the experts; the other side is not scored"
        heart = reg("heart")
        if "cardiomediastinum" in m:
            cm = m["cardiomediastinum"]
            row["heart_dice"] = dice(heart, cardiac_part(cm))
            row["heart_inside_cm"] = float((heart & cm).sum() / max(int(heart.sum()), 1))
            if len(sides) == 2:
                row["visible_lung_dice"] = dice(reg("lung"), truth_lung & ~cm)
        row["zones_present"] = int(sum(reg(z).any() for z in ZONES))
        return row, {"lung": pred_lung, "heart": heart, "truth_lung": truth_lung}, bits_s

    def score_lesions(self, case: RealCase, square: np.ndarray, bits_s: np.ndarray) -> tuple[dict[str, Any], dict]:
        from ilsgen.study_outputs import study_outputs

        text, sides = report_for(case)
        if not sides:
            return {}, {}
        sid = f"real{case.position:04d}"
        findings = self.report.structure(sid, text)
        anomaly = self.anomaly.anomaly_maps([square], [bits_s])[0]
        boxes = self.detect.detect([square], [anomaly])[0]
        study = {"study_id": sid, "subject_id": None, "dicom_id": None, "image_uri": "", "split": None, "view": None}
        mask_rows, _, arrays = study_outputs(self.cfg, study, findings, bits_s, anomaly, boxes)
        shape = case.image.shape
        out, pics = {"report": text}, {}
        for name, (lesion, _) in LESION_MASKS.items():
            if lesion not in sides:
                continue
            pred = np.zeros((self.size, self.size), bool)
            for r in mask_rows:
                if r["lesion"] == lesion and r["mask_uri"] in arrays:
                    pred |= arrays[r["mask_uri"]] > 127
            pred = resize_mask(pred, shape)
            truth = case.masks[name]
            m = case.masks
            lung_sides = [m.get(f"lung_{s}", m.get("lung")) for s in sides[lesion]]
            baseline = np.logical_or.reduce(lung_sides)
            out[lesion] = {"iou": iou(pred, truth), "whole_lung_iou": iou(baseline, truth), "sides": sides[lesion],
                           "predicted_fraction_of_lung": float(pred.sum() / max(int(baseline.sum()), 1))}
            pics[lesion] = (pred, truth)
        return out, pics


def _trained_names(scorer: Scorer) -> set | None:
    """(set, name) of the real images the shipped anatomy network was trained on (None: no network)."""
    net = getattr(scorer.anatomy, "net", None) if getattr(scorer.anatomy, "method", "") == "net" else None
    if net is None:
        return None
    data = net.meta.get("data", {})
    return {tuple(x) for x in data.get("real_trained", [])}


def summarise(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = {"mean": round(float(np.mean(vals)), 4), "min": round(float(np.min(vals)), 4), "n": len(vals)}
    return out


def evaluate(data_dir: str | Path, cfg: Any, sets: tuple[str, ...] | None = None, limit: int | None = None,
             lesions: bool = True, anatomy: bool = True, checkpoint: str | None = None,
             segmenter: Any = None) -> tuple[dict[str, Any], dict]:
    """(JSON record, picture material for the figure).

    `anatomy=False` skips the anatomy and lesion-mask sections (the model section alone);
    `checkpoint` (or a ready `segmenter`) adds the model section (ilsgen.real_eval_model)."""
    t0 = time.perf_counter()
    cases = load_real(Path(data_dir), sets, limit)
    if not cases:  # before any backend or model is built
        from ils.errors import UserError

        raise UserError(f"no image of {', '.join(sets) if sets else 'any set'} found in {data_dir}")
    if anatomy:
        record, pics = _evaluate_anatomy(cases, cfg, lesions)
    else:
        rows = [{"set": c.set, "image": c.name, "position": c.position} for c in cases]
        record = {"note": "anatomy and lesion-mask sections not run (--model-only)", "per_set": {s: {} for s in sorted({c.set for c in cases})},
                  "per_image": rows, "seconds": {}}
        pics = {(c.set, c.name): (c.image, {}, {}) for c in cases}
    record = {"data": str(Path(data_dir).resolve()), **record}
    if checkpoint or segmenter is not None:
        from ilsgen import real_eval_model as rem

        t = time.perf_counter()
        seg = segmenter if segmenter is not None else rem.load_segmenter(checkpoint, cfg)
        mrows, mpics = rem.score_cases(cases, seg)
        record["model"] = rem.describe(seg, checkpoint or "(in memory)")
        by_key = {(r["set"], r["image"]): r for r in mrows}
        for row in record["per_image"]:
            m = dict(by_key[(row["set"], row["image"])])
            for k in ("set", "image", "position"):
                m.pop(k)
            row["model"] = m
        for s, sec in rem.model_per_set(mrows).items():
            entry = record["per_set"].setdefault(s, {})
            if "note" in sec:
                entry["model_note"] = sec["note"]
            for g in ("held_out", "all"):
                entry.setdefault(g, {})["model"] = sec[g]
        for key, lp in mpics.items():
            image, apics, lpics = pics[key]
            pics[key] = (image, apics, lpics, lp)
        record["seconds"]["model_per_image"] = round((time.perf_counter() - t) / max(len(mrows), 1), 4)
    record["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    return record, pics


def _evaluate_anatomy(cases: list[RealCase], cfg: Any, lesions: bool) -> tuple[dict[str, Any], dict]:
    from ils.imageio import resize_square

    scorer = Scorer(cfg, lesions)
    trained = _trained_names(scorer)
    rows, pics, t_anat = [], {}, 0.0
    for case in cases:
        square = resize_square(case.image, cfg.image.size)
        t = time.perf_counter()
        row, apics, bits_s = scorer.score_anatomy(case, square)
        t_anat += time.perf_counter() - t
        row = {"set": case.set, "image": case.name, "position": case.position, **row}
        row["trained_on"] = None if trained is None else (case.set, case.name) in trained
        if lesions and case.set == "covid_radiologist":
            les, lpics = scorer.score_lesions(case, square, bits_s)
            row["lesions"] = les
        else:
            lpics = {}
        rows.append(row)
        pics[(case.set, case.name)] = (case.image, apics, lpics)
        log.info("real-eval: %s %s lung Dice %.3f", case.set, case.name[:8], row["lung_dice"])
    anat_keys = ("lung_dice", "right_lung_dice", "left_lung_dice", "heart_dice", "heart_inside_cm", "visible_lung_dice")
    per_set: dict[str, Any] = {}
    for s in sorted({r["set"] for r in rows}):
        sr = [r for r in rows if r["set"] == s]
        groups = {"all": sr}
        if trained is not None:
            groups["held_out"] = [r for r in sr if r["trained_on"] is False]
        entry: dict[str, Any] = {"lung_convention": CONVENTION.get(s, "as its masks"),
                                 "lung_scored_with": sorted({r["lung_scored_with"] for r in sr})}
        for g, gr in groups.items():
            entry[g] = {"anatomy": summarise(gr, anat_keys)}
            if lesions:
                les = {}
                for lesion in ("opacity", "consolidation", "effusion"):
                    lr = [r["lesions"][lesion] for r in gr if lesion in r.get("lesions", {})]
                    if lr:
                        les[lesion] = {"n": len(lr), "mean_iou": round(float(np.mean([x["iou"] for x in lr])), 4),
                                       "whole_lung_mean_iou": round(float(np.mean([x["whole_lung_iou"] for x in lr])), 4)}
                if les:
                    entry[g]["lesions"] = les
        per_set[s] = entry
    anatomy_desc = scorer.anatomy.describe() if hasattr(scorer.anatomy, "describe") else {"backend": cfg.gen.anatomy.backend}
    record = {
        "note": "development split figures; images the network was trained on are marked trained_on and left out of the held_out summaries",
        "anatomy_backend": anatomy_desc,
        "anomaly": _anomaly_desc(scorer) if lesions else None,
        "pipeline_lung_convention": "the anatomy bit map's lungs stop at the heart border (never overlap the heart)",
        "per_set": per_set,
        "per_image": rows,
        "seconds": {"anatomy_per_image": round(t_anat / max(len(rows), 1), 4)},
    }
    return record, pics


def _anomaly_desc(scorer: Scorer) -> dict[str, Any]:
    a = scorer.anomaly
    if hasattr(a, "describe"):
        return a.describe()
    return {"backend": scorer.cfg.gen.anomaly.backend, "fit": "none (the run has no report-normal studies)"}
