"""Phantom studies on real anatomy: synthetic lesions on a real radiograph (docs/real_base.md).

`make_study(seed, index, cfg)` is the `ils sample` dispatch: with `sample.real_base` set (and
present) a share `sample.real_fraction` of the indices, drawn per (seed, index), is built by
`generate_real_study`; the rest (and everything when the folder is absent, with one warning)
by the procedural `ils.phantom.sample.generate_study`. Output is a `PhantomStudy` exactly like
a procedural one, with the base recorded in `meta` (`source`, `base_set`, `base_name`).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from ils.config import Config, SampleConfig
from ils.phantom import composite as C
from ils.phantom import lesion_stats as S
from ils.phantom import real_base as RB
from ils.phantom import transplant as T
from ils.phantom.anatomy import label_map
from ils.phantom.report import Plan, Report, choose_words, compose
from ils.phantom.sample import (MIN_AREA_FRAC, PhantomStudy, _instances, _rng, generate_study, plan_lesions, study_id_for,
                                study_identity, truth_rows)
from ils.vocab import ZONE_KINDS, region_bit, zone_name

log = logging.getLogger(__name__)

#: On a real base (every one shows COVID-19 or another pneumonia) these are never negated;
#: consolidation is negated only where the radiologists outlined the image (ground-glass) but
#: drew no consolidation (`suppressed_negatives`).
NO_NEGATIVE = frozenset({"opacity", "pneumonia"})
CLEAR_LUNGS = ("lungs are clear", "expanded and clear")  # never true of a real base (all show disease)
FILL = 0.6  # lesion area / its bounding box (NIH boxes -> mask areas)
SIZE_FACTOR = (0.6, 2.2)  # limits of the rescale of a procedural lesion shape
TRANSPLANT_P = 0.6  # opacity / consolidation: share drawn as a real shape from another base


@lru_cache(maxsize=8)
def _warn_absent(root: str) -> None:
    log.warning("sample.real_base=%r: no realcxr-layout folder there (index.csv); all studies are procedural phantoms", root)


def real_enabled(scfg: SampleConfig) -> bool:
    root = scfg.real_base
    if not root or scfg.real_fraction <= 0:
        return False
    if not RB.available(root):
        _warn_absent(str(root))
        return False
    return True


def uses_real_base(seed: int, index: int, scfg: SampleConfig) -> bool:
    return real_enabled(scfg) and bool(_rng(seed, index, 11).random() < scfg.real_fraction)


def make_study(seed: int, index: int, cfg: Config) -> PhantomStudy:
    """The study of (seed, index): on a real base or procedural (see module doc)."""
    if uses_real_base(seed, index, cfg.sample):
        return generate_real_study(seed, index, cfg)
    return generate_study(seed, index, cfg)


# --- statistics ---------------------------------------------------------------------------


def _target_area(lesion: str, rng: np.random.Generator) -> float | None:
    """Target lesion area as a fraction of its lung (one side), from lesion_stats.json."""
    st = S.load()
    r = st["realcxr"]
    side = S.sample_q(r["lung_side_area_frac"], 0.5)
    if lesion == "opacity":
        return S.sample_q(r["ground_glass_opacity"]["component_area_frac_of_lung"], rng.uniform(0.05, 0.7))
    if lesion == "consolidation":
        return S.sample_q(r["consolidation"]["component_area_frac_of_lung"], rng.uniform(0.05, 0.7))
    nih = {"pneumonia": "Pneumonia", "atelectasis": "Atelectasis"}.get(lesion)
    if nih:
        return S.sample_q(st["nih"][nih]["area_frac"], rng.uniform(0.05, 0.9)) * FILL / side
    return None


def _target_contrast(lesion: str, severity: float, rng: np.random.Generator) -> float:
    """Mean attenuation (logit units) added over the lesion mask."""
    r = S.load()["realcxr"]
    ggo, cons = r["ground_glass_opacity"]["contrast_logit"], r["consolidation"]["contrast_logit"]
    if lesion in ("opacity", "edema"):
        c = max(S.sample_q(ggo, rng.uniform(0.5, 0.95)), 0.15)
        return c * (0.7 + 0.6 * severity) if lesion == "edema" else c
    c = max(S.sample_q(cons, rng.uniform(0.5, 1.0)), 0.3)
    return c * {"effusion": 1.4, "atelectasis": 0.8}.get(lesion, 1.0)


def _target_ctr(rng: np.random.Generator) -> float:
    """Cardiomegaly: NIH Cardiomegaly box width over the realcxr lungs' median width in the frame."""
    st = S.load()
    w = S.sample_q(st["nih"]["Cardiomegaly"]["w_frac"], rng.uniform(0.3, 0.95))
    return float(np.clip(w / S.sample_q(st["realcxr"]["thoracic_width_frac"], 0.5), 0.53, 0.68))


# --- report -------------------------------------------------------------------------------


def suppressed_negatives(base_masks: dict, kept: set[str] | dict, cardio: str) -> set[str]:
    """Lesion types a study on this base must never negate."""
    out = set(NO_NEGATIVE) | set(kept)
    if "ground_glass_opacity" not in base_masks or "consolidation" in base_masks:
        out.add("consolidation")
    if cardio != "absent":
        out.add("cardiomegaly")
    return out


def drop_sentences(rep: Report, suppress: frozenset[str] | set[str]) -> Report:
    """Remove FINDINGS sentences that negate a suppressed lesion (or call the lungs clear)."""
    head, rest = rep.text.split(" FINDINGS:\n \n ", 1)
    findings_text = rest.split("\n \n IMPRESSION:", 1)[0]
    nf = next(k for k in range(len(rep.sentences) + 1) if " ".join(rep.sentences[:k]) == findings_text)
    bad = {m.sent_idx for m in rep.mentions if not m.present and m.lesion in suppress}
    bad |= {i for i, s in enumerate(rep.sentences[:nf]) if any(c in s.lower() for c in CLEAR_LUNGS)}
    keep = [i for i in range(len(rep.sentences)) if i not in bad]
    new = {old: k for k, old in enumerate(keep)}
    sentences = [rep.sentences[i] for i in keep]
    mentions = [m for m in rep.mentions if m.sent_idx in new]
    for m in mentions:
        m.sent_idx = new[m.sent_idx]
    nf2 = sum(1 for i in keep if i < nf)
    text = rep.text.replace(" FINDINGS:\n \n " + findings_text + "\n \n IMPRESSION:",
                            " FINDINGS:\n \n " + " ".join(sentences[:nf2]) + "\n \n IMPRESSION:", 1)
    return Report(text, sentences, mentions)


def _kept_plan(lesion: str, mask: np.ndarray, f, anat: np.ndarray, rng: np.random.Generator) -> tuple[Plan, list] | None:
    """A Plan (definite, sides and zone from the mask) and per-side instances for a real lesion mask."""
    from ils.phantom.lesions import Instance

    sides, insts, kinds = [], [], {}
    for side in ("right", "left"):
        part = mask & ((f.X < 0) if side == "right" else (f.X >= 0))
        if part.mean() < MIN_AREA_FRAC:
            continue
        sides.append(side)
        insts.append(Instance(side, part, None))
        for kind in ZONE_KINDS:
            bit = np.uint16(region_bit(zone_name(side, kind)))
            kinds[kind] = kinds.get(kind, 0) + int(np.count_nonzero(anat[part] & bit))
    if not sides:
        return None
    kind = "lung base" if lesion == "effusion" else max(ZONE_KINDS, key=lambda k: (kinds.get(k, 0), k == "mid zone lung"))
    sev = float(np.clip(mask.mean() / 0.03, 0.05, 1.0)) if lesion == "effusion" else float(rng.uniform(0.3, 0.8))
    p = Plan(lesion, "definite", tuple(sides), kind, sev)
    choose_words(p, rng)
    return p, insts


# --- the study ----------------------------------------------------------------------------


def generate_real_study(seed: int, index: int, cfg: Config, *, base: int | None = None) -> PhantomStudy:
    """One study on a real base (`base`: index into real_base.load_bases; default drawn per (seed, index))."""
    from scipy.ndimage import gaussian_filter

    from ils.phantom.lesions import Instance
    from ils.phantom.render import crop, texture_bank

    scfg, tsize, size = cfg.sample, int(cfg.image.size), int(cfg.sample.size)
    root = str(scfg.real_base)
    bases = RB.load_bases(root)
    g_rng, r_rng, n_rng, m_rng = (_rng(seed, index, k) for k in range(4))
    a_rng = _rng(seed, index, 12)
    bi = int(a_rng.integers(len(bases))) if base is None else int(base)
    b = bases[bi]
    img0, masks0 = RB.resized(root, bi, size, tsize)
    aff = C.random_affine(a_rng)
    fill = float(np.median(np.concatenate([img0[0], img0[-1]])))
    img = C.tone(C.warp_image(img0, aff, fill), a_rng)
    masks = {k: C.warp_mask(m, aff) for k, m in masks0.items()}

    from ilsgen.anatomy_net.data import cardiac_part

    heart = cardiac_part(masks["cardiomediastinum"])
    study_id = study_id_for(seed, index)
    kept = {RB.KEPT_LESIONS[k]: masks[k] for k in RB.KEPT_LESIONS if k in masks and masks[k].mean() >= MIN_AREA_FRAC}
    cardio = b.cardiomegaly
    plans = plan_lesions(g_rng, scfg.normal_fraction)
    blocked = set(kept) | ({"cardiomegaly"} if cardio != "absent" else set())
    plans = [p for p in plans if p.lesion not in blocked]
    if not plans and not kept and cardio != "present":
        plans = [p for p in plan_lesions(g_rng, 0.0) if p.lesion not in blocked]
    for p in plans:
        if p.differential and "opacity" in kept:
            p.differential = False
    # cardiomegaly: warp the cardiac region outward (image and every mask alike)
    if any(p.lesion == "cardiomegaly" for p in plans):
        hw = C.heart_warp(heart, b.ctr, _target_ctr(g_rng), g_rng)
        if hw is not None:
            img = C.apply_heart_warp(img, hw, order=1)
            masks = {k: C.apply_heart_warp(m, hw, order=0) for k, m in masks.items()}
            kept = {k: C.apply_heart_warp(m, hw, order=0) for k, m in kept.items()}
            heart = C.apply_heart_warp(heart, hw, order=0)
        else:
            plans = [p for p in plans if p.lesion != "cardiomegaly"]
    f, geo = C.real_fields(masks["lung_right"], masks["lung_left"], masks["cardiomediastinum"], heart)
    anat = label_map(f)

    inst_by_plan: list[tuple[Plan, list]] = []
    density = np.zeros((tsize, tsize), np.float32)
    frame = C.canon_frame(masks["lung_right"], masks["lung_left"])
    for p in plans:
        insts, moved = [], False
        if p.lesion in T.DONOR_STRUCT and g_rng.random() < TRANSPLANT_P:  # a real lesion shape from another base
            for side in p.sides:
                region = f.lung & ((f.X < 0) if side == "right" else (f.X >= 0))
                got = T.transplant(root, p.lesion, frame, region, side, str(p.kind), g_rng, exclude=bi)
                if got is not None:
                    insts.append(Instance(side, got[0], got[1]))
            moved = bool(insts)
        if not insts:
            try:
                insts = _instances(p, f, geo, anat, g_rng)
            except ValueError:  # an empty zone on this base
                continue
        good = []
        for inst in insts:
            region = f.lung & ((f.X < 0) if inst.side == "right" else (f.X >= 0))
            if inst.density is not None and not moved:
                target = _target_area(p.lesion, g_rng)
                if target is not None and region.any() and inst.mask.any():
                    cur = inst.mask.sum() / region.sum()
                    factor = float(np.clip(np.sqrt(target / max(cur, 1e-6)), *SIZE_FACTOR))
                    inst.mask, inst.density = C.rescale(inst.mask, inst.density, factor, region)
            if inst.mask.mean() < MIN_AREA_FRAC / 4:
                continue  # nothing left of it on this base: neither drawn nor in the truth
            if inst.density is not None and not moved:  # soften the procedural shape's edges, keep it in its lung
                tex = crop(texture_bank(tsize), tsize, g_rng)  # real opacities are not flat inside
                soft = gaussian_filter(inst.density * (np.float32(0.75) + np.float32(0.25) * tex), sigma=max(1.0, tsize / 200))
                inst.density = (soft * region).astype(np.float32)
            if inst.density is not None:
                gain = _target_contrast(p.lesion, p.severity, g_rng) / max(float(inst.density[inst.mask].mean()), 1e-6)
                inst.density = (inst.density * np.float32(gain)).astype(np.float32)
                density += inst.density
            good.append(inst)
        insts = good
        if insts:
            inst_by_plan.append((p, insts))
    if cardio == "present":
        p = Plan("cardiomegaly", "definite", (), None, 0.5)
        choose_words(p, g_rng)
        inst_by_plan.append((p, [Instance(None, heart.copy(), None)]))
    for lesion, m in kept.items():
        kp = _kept_plan(lesion, m, f, anat, g_rng)
        if kp:
            inst_by_plan.append(kp)

    image = C.blend(img, C.upsample_density(density, size))
    image += np.float32(n_rng.uniform(0.004, 0.012)) * n_rng.standard_normal(image.shape, dtype=np.float32)
    np.clip(image, 0.0, 1.0, out=image)

    all_plans = [p for p, _ in inst_by_plan]
    suppress = suppressed_negatives(b.masks, kept, cardio)
    report = drop_sentences(compose(all_plans, r_rng), suppress)
    findings, out_masks, mask_rows = truth_rows(study_id, report, inst_by_plan, anat)
    subject, dicom_id, split, photometric, bits, meta = study_identity(m_rng, scfg, seed, index)
    meta.update({"source": "real_base", "base_set": b.set, "base_name": b.name, "base_position": int(b.position),
                 "kept_lesions": sorted(kept), "base_cardiomegaly": cardio})
    return PhantomStudy(study_id, subject, dicom_id, split, int(seed), int(index), image, report.text, findings,
                        out_masks, mask_rows, anat, photometric, bits, meta)
