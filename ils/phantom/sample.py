"""`generate_study(seed, index, cfg)`: one synthetic phantom study (image, report, ground truth).

Each study draws from its own random streams seeded by (seed, index, stream), so a study is the
same whatever `n` is, and the same seed always gives the same study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ils.config import Config, SampleConfig
from ils.phantom import lesions as L
from ils.phantom.anatomy import fields, label_map, sample_geometry
from ils.phantom.render import expose, finish, render_anatomy, upsample
from ils.phantom.report import Plan, choose_words, compose
from ils.vocab import ATOMIC_REGIONS, LESIONS, canonical_locations

MIN_AREA_FRAC = 0.0012  # smallest lesion instance, fraction of the image
GROUND_FRAC = 0.1  # a zone counts as grounded when it holds this fraction of a mask
LUNG_KINDS = ("apical zone lung", "upper zone lung", "mid zone lung", "lung base")


@dataclass
class PhantomStudy:
    """One synthetic study. Arrays on the truth grid are `truth_size` square."""

    study_id: str
    subject_id: str
    dicom_id: str
    split: str
    seed: int
    index: int
    image: np.ndarray  # float32 (S, S) in [0, 1], lungs dark
    report: str
    findings: list[dict[str, Any]]  # ils.schema.FINDING rows (source="truth")
    masks: dict[str, list[np.ndarray]]  # lesion -> instance bool masks (truth size)
    mask_rows: list[dict[str, Any]]  # ils.schema.MASK rows (mask_uri relative to truth/)
    anatomy: np.ndarray  # uint16 bit map (truth size), bits = ils.vocab.ATOMIC_REGIONS
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    meta: dict[str, Any] = field(default_factory=dict)  # fake DICOM attributes (no real person)

    @property
    def is_normal(self) -> bool:
        return not any(r["present"] for r in self.findings)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), stream])


def study_id_for(seed: int, index: int) -> str:
    """MIMIC-like 8-digit id, unique within a seed (a bijection of the index modulo 10^7)."""
    offset = int(np.random.default_rng([int(seed), 7]).integers(10_000_000))
    return str(50_000_000 + (index * 7919 + offset) % 10_000_000)


def plan_lesions(rng: np.random.Generator, normal_fraction: float) -> list[Plan]:
    """Which lesion types a study has, where, how sure the report is."""
    if rng.random() < normal_fraction:
        return []
    k = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    types = list(rng.choice(np.array(LESIONS), size=k, replace=False))
    plans: list[Plan] = []
    used: set[tuple[str, str]] = set()
    for lesion in types:
        lesion = str(lesion)
        tent = rng.random() < 0.2
        sev = float(rng.uniform(0, 1))
        if lesion == "cardiomegaly":
            p = Plan(lesion, "definite" if not tent else "tentative", (), None, sev)
        elif lesion == "edema":
            p = Plan(lesion, "tentative" if tent else "definite", ("right", "left"), "mid zone lung", sev)
        elif lesion == "effusion":
            sides = [("right",), ("left",), ("right", "left")][int(rng.choice(3, p=[0.35, 0.3, 0.35]))]
            p = Plan(lesion, "tentative" if tent else "definite", sides, "lung base", sev)
        else:
            for _ in range(6):
                if lesion == "atelectasis":
                    kind = "lung base" if rng.random() < 0.7 else "mid zone lung"
                    both = kind == "lung base" and rng.random() < 0.3
                else:
                    kind = str(rng.choice(LUNG_KINDS, p=[0.08, 0.24, 0.26, 0.42]))
                    both = rng.random() < 0.15
                sides = ("right", "left") if both else (str(rng.choice(["right", "left"])),)
                if not any((s, kind) in used for s in sides):
                    break
            used.update((s, kind) for s in sides)
            diff = lesion in ("pneumonia", "atelectasis") and "opacity" not in types and rng.random() < 0.3
            p = Plan(lesion, "tentative" if tent else "definite", sides, kind, sev, differential=diff)
        choose_words(p, rng)
        plans.append(p)
    return plans


def _instances(p: Plan, f, geo, anat, rng: np.random.Generator) -> list[L.Instance]:
    if p.lesion == "cardiomegaly":
        return [L.Instance(None, f.heart_mask.copy(), None)]
    out = []
    for side in p.sides:
        for _ in range(4):
            if p.lesion == "effusion":
                inst = L.effusion(f, geo, side, p.severity, rng)
            elif p.lesion == "edema":
                inst = L.edema(f, side, p.severity, rng)
            elif p.lesion == "atelectasis":
                inst = L.atelectasis(f, anat, side, p.kind, rng, medial=p.medial)
            elif p.lesion == "opacity":
                inst = L.ill_defined(f, anat, side, p.kind, rng)
            else:
                inst = L.patchy(f, anat, side, p.kind, rng, dense=p.lesion == "consolidation", medial=p.medial)
            if inst.mask.mean() >= MIN_AREA_FRAC:
                break
        out.append(inst)
    return out


def grounded_locations(mask: np.ndarray, anat: np.ndarray) -> list[str]:
    """Atomic regions holding at least GROUND_FRAC of the mask, canonicalised."""
    vals = anat[mask]
    if vals.size == 0:
        return []
    locs = [r for i, r in enumerate(ATOMIC_REGIONS) if np.count_nonzero(vals & np.uint16(1 << i)) >= GROUND_FRAC * vals.size]
    return canonical_locations(locs)


def _mask_row(study_id: str, lesion: str, idx: int, m: np.ndarray, finding_idx: int | None, p: Plan, anat: np.ndarray, certainty: str) -> dict:
    from scipy.ndimage import label

    n = m.shape[0]
    rows, cols = np.nonzero(m)
    bbox = [cols.min() / n, rows.min() / n, (cols.max() + 1) / n, (rows.max() + 1) / n] if rows.size else [0.0, 0.0, 0.0, 0.0]
    mask_id = f"s{study_id}_{lesion}_{idx}"
    return {
        "study_id": study_id,
        "mask_id": mask_id,
        "lesion": lesion,
        "instance_idx": idx,
        "finding_idx": finding_idx,
        "mask_uri": f"masks/{mask_id}.png",
        "certainty": certainty,
        "reported_locations": list(p.reported),
        "grounded_locations": ["heart"] if lesion == "cardiomegaly" else grounded_locations(m, anat),
        "area_frac": float(m.mean()),
        "n_components": int(label(m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])[1]) if rows.size else 0,
        "bbox": [float(v) for v in bbox],
        "score": 1.0,
    }


def truth_rows(study_id: str, report: Any, inst_by_plan: list[tuple[Plan, list[L.Instance]]], anat: np.ndarray
               ) -> tuple[list[dict], dict[str, list[np.ndarray]], list[dict]]:
    """(FINDING rows of the report's mentions, lesion -> instance masks, MASK rows) of one study;
    a differential pneumonia/atelectasis is also an opacity."""
    findings: list[dict] = []
    first: dict[str, int] = {}
    for i, m in enumerate(report.mentions):
        findings.append({
            "study_id": study_id, "finding_idx": i, "lesion": m.lesion, "present": m.present,
            "certainty": m.certainty, "locations": m.locations, "sent_idx": m.sent_idx,
            "sentence": report.sentences[m.sent_idx], "entity": m.entity, "source": "truth",
        })
        if m.present and m.lesion not in first:
            first[m.lesion] = i
    masks: dict[str, list[np.ndarray]] = {}
    mask_rows = []
    for p, insts in inst_by_plan:
        names = [(p.lesion, p.certainty)] + ([("opacity", "definite")] if p.differential else [])
        for lesion, cert in names:
            for inst in insts:
                idx = len(masks.setdefault(lesion, []))
                masks[lesion].append(inst.mask)
                mask_rows.append(_mask_row(study_id, lesion, idx, inst.mask, first.get(lesion), p, anat, cert))
    return findings, masks, mask_rows


def study_identity(m_rng: np.random.Generator, scfg: SampleConfig, seed: int, index: int
                   ) -> tuple[str, str, str, str, int, dict[str, Any]]:
    """(subject id, dicom id, split, photometric, bits stored, fake DICOM meta): no real person."""
    subject = str(10_000_000 + int(m_rng.integers(10_000_000)))
    dicom_id = "-".join(f"{int(v):08x}" for v in m_rng.integers(0, 2**32, size=5))
    u = m_rng.random()
    split = "test" if u < scfg.test_fraction else "val" if u < scfg.test_fraction + scfg.val_fraction else "train"
    photometric = "MONOCHROME1" if m_rng.random() < scfg.monochrome1_fraction else "MONOCHROME2"
    bits = int(m_rng.choice([12, 14, 16]))
    meta = {"seed": int(seed), "index": int(index), "fake_patient": int(m_rng.integers(100000, 999999)),
            "day_offset": int(m_rng.integers(0, 3650)), "tod_s": int(m_rng.integers(0, 86400)),
            "gain": float(m_rng.uniform(0.75, 0.98)), "floor": float(m_rng.uniform(0.0, 0.06)),
            "intercept": float(m_rng.choice([0.0, 0.0, -1024.0])), "sex": str(m_rng.choice(["F", "M"])),
            "age": int(m_rng.integers(25, 90))}
    return subject, dicom_id, split, photometric, bits, meta


def generate_study(seed: int, index: int, cfg: Config | SampleConfig | None = None, *, truth_size: int | None = None) -> PhantomStudy:
    """One phantom study. `cfg`: a Config (uses cfg.sample and cfg.image.size) or a SampleConfig."""
    if cfg is None:
        cfg = Config()
    scfg = cfg.sample if isinstance(cfg, Config) else cfg
    tsize = truth_size or (cfg.image.size if isinstance(cfg, Config) else 512)
    size = int(scfg.size)
    if size < 32 or tsize < 32:
        raise ValueError(f"phantom size too small: image {size}, truth {tsize} (need >= 32)")

    g_rng, r_rng, n_rng, m_rng = (_rng(seed, index, k) for k in range(4))
    study_id = study_id_for(seed, index)
    geo = sample_geometry(g_rng)
    plans = plan_lesions(g_rng, scfg.normal_fraction)
    if any(p.lesion == "cardiomegaly" for p in plans):
        L.enlarge_heart(geo, g_rng)
    f = fields(geo, tsize)
    anat = label_map(f)
    # smooth anatomy at half the truth grid, upsampled; lesions at the truth grid
    half = tsize // 2 if tsize % 2 == 0 and tsize >= 64 else tsize
    img = upsample(render_anatomy(geo, fields(geo, half) if half != tsize else f, n_rng), tsize)
    inst_by_plan = []
    for p in plans:
        insts = _instances(p, f, geo, anat, g_rng)
        inst_by_plan.append(insts)
        for inst in insts:
            if inst.density is not None:
                img += inst.density
    image = finish(expose(img, n_rng), size, n_rng)

    report = compose(plans, r_rng)
    findings, masks, mask_rows = truth_rows(study_id, report, list(zip(plans, inst_by_plan)), anat)
    subject, dicom_id, split, photometric, bits, meta = study_identity(m_rng, scfg, seed, index)
    return PhantomStudy(study_id, subject, dicom_id, split, int(seed), int(index), image, report.text, findings,
                        masks, mask_rows, anat, photometric, bits, meta)
