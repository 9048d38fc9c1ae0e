"""Mask fusion (c1-c4), location verification and pair generation on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest

from ils.config import FuseConfig, PairConfig
from ils.templates import parse_answer
from ils.vocab import region_bit
from ilsgen.fuse import FuseError, fuse_study
from ilsgen.pairs import make_pairs
from ilsgen.stages.base import Box
from ilsgen.verify import grounded_locations, lesion_free_locations, locations_agree

S = 128
ZONE_ROWS = {"apical zone lung": (20, 35), "upper zone lung": (35, 60), "mid zone lung": (60, 85), "lung base": (85, 110)}


def anatomy() -> np.ndarray:
    bits = np.zeros((S, S), np.uint16)
    for side, (c0, c1) in (("right", (15, 55)), ("left", (73, 113))):
        for kind, (r0, r1) in ZONE_ROWS.items():
            bits[r0:r1, c0:c1] |= region_bit(f"{side} {kind}")
    bits[70:100, 50:80] = region_bit("heart")
    return bits


def finding(idx, lesion, present=True, locs=(), certainty="definite"):
    return {"study_id": "1", "finding_idx": idx, "lesion": lesion, "present": present,
            "certainty": certainty if present else None, "locations": list(locs), "sent_idx": idx}


def blob(r0, r1, c0, c1, value=0.9):
    a = np.zeros((S, S), np.float32)
    a[r0:r1, c0:c1] = value
    return a


def test_verify_grounding_and_agreement():
    bits = anatomy()
    m = np.zeros((S, S), bool)
    m[90:105, 20:40] = True
    assert grounded_locations(m, bits) == ["right lung base"]
    m[70:80, 20:40] = True  # spills into the mid zone
    assert grounded_locations(m, bits) == ["right mid zone lung", "right lung base"]
    assert locations_agree(["right lung"], ["right lung base"])
    assert not locations_agree(["right lung base"], ["right mid zone lung", "right lung base"])
    assert not locations_agree(["right lung base", "left lung base"], ["right lung base"])
    assert not locations_agree([], ["right lung base"])
    free = lesion_free_locations(bits, [finding(0, "effusion", locs=["right lung base"])])
    assert "right lung base" not in free and "right mid zone lung" not in free  # one-zone margin
    assert "left lung" in free and "right apical zone lung" in free and "lung" not in free


def test_fuse_checks_and_cardiomegaly():
    bits = anatomy()
    amap = blob(90, 105, 20, 40) + blob(30, 50, 80, 100)  # right base + left upper
    boxes = [Box(20, 90, 40, 105, 0.9), Box(80, 30, 100, 50, 0.9), Box(20, 90, 22, 92, 0.9), Box(20, 90, 40, 105, 0.1)]
    findings = [finding(0, "effusion", locs=["right lung base"]), finding(1, "cardiomegaly"),
                finding(2, "pneumonia", present=False), finding(3, "opacity", locs=["left mid zone lung"])]
    rows, arrays = fuse_study("1", findings, bits, amap, boxes, FuseConfig(min_area_frac=0.01))
    by = {r["lesion"]: r for r in rows}
    assert set(by) == {"effusion", "cardiomegaly"}  # the left upper blob fails c1 for "left mid zone"
    eff = arrays[by["effusion"]["mask_uri"]]
    assert eff.dtype == np.uint8 and set(np.unique(eff)) == {0, 255}
    # effusion is a dependent layer: the blob, filled down to the base of the right lung
    base = (bits & region_bit("right lung base")) != 0
    assert (eff > 0)[90:105, 20:40].all() and not (eff > 0)[:90].any() and not ((eff > 0) & ~base).any()
    cols = np.arange(20, 40)
    assert all((eff[90:, c] > 0).sum() == base[90:, c].sum() for c in cols)
    assert by["effusion"]["grounded_locations"] == ["right lung base"]
    assert by["effusion"]["mask_id"] == "s1_effusion_0" and by["effusion"]["mask_uri"] == "masks/1/s1_effusion_0.png"
    heart = (bits & region_bit("heart")) != 0
    assert ((arrays[by["cardiomegaly"]["mask_uri"]] > 0) == heart).all()
    assert by["cardiomegaly"]["grounded_locations"] == ["heart"]
    # unlocalised finding: whole lung; low-confidence box alone fails c2
    rows2, _ = fuse_study("1", [finding(0, "opacity")], bits, amap, [Box(20, 90, 40, 105, 0.1)], FuseConfig())
    assert rows2 == []
    with pytest.raises(FuseError):
        fuse_study("1", findings, bits, amap[:10], boxes, FuseConfig())


def test_pairs_templates_negatives_and_determinism():
    bits = anatomy()
    amap = blob(90, 105, 20, 40)
    findings = [finding(0, "consolidation", locs=["right lung base"], certainty="tentative"),
                finding(1, "pneumonia", locs=["right lung base"], certainty="tentative"),
                finding(2, "effusion", present=False)]
    rows, arrays = fuse_study("1", findings, bits, amap, [Box(20, 90, 40, 105, 0.9)], FuseConfig())
    study = {"study_id": "1", "image_uri": "images/1.dcm", "split": "train"}
    cfg = PairConfig(negatives_per_study=8, seed=3)
    pairs, new = make_pairs(study, findings, rows, arrays, bits, cfg)
    pairs2, _ = make_pairs(study, findings, rows, arrays, bits, cfg)
    assert [p["pair_id"] for p in pairs] == [p["pair_id"] for p in pairs2]
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    pos = [p for p in pairs if p["presence"]]
    neg = [p for p in pairs if not p["presence"]]
    assert {p["type"] for p in pos} == {"basic", "global", "lesion_inference"}
    li = next(p for p in pos if p["type"] == "lesion_inference")
    assert li["answer"] == "[SEG] It possibly reflects pneumonia." and li["target"] == "opacity"
    glob = next(p for p in pos if p["type"] == "global" and p["lesion"] == "consolidation")
    assert glob["answer"] == "[SEG] It is located in the right lung base."
    assert all(p["seg_mask_path"] in arrays or p["seg_mask_path"] in new for p in pos)
    assert len(neg) == 8 and all(p["seg_mask_path"] is None and not p["seg"] for p in neg)
    for p in pairs:  # every pair parses back to its structured fields
        parsed = parse_answer(p["instruction"], p["answer"])
        assert parsed.presence == p["presence"] and parsed.type == p["type"]
    for p in neg:  # never contradicts the present findings
        assert not (p["type"] == "global" and p["lesion"] in {"consolidation", "pneumonia", "opacity"})
        assert not set(p["locations"]) & {"right lung base", "right mid zone lung", "right lung", "lung"}
    other, _ = make_pairs(study, findings, rows, arrays, bits, PairConfig(negatives_per_study=8, seed=4))
    assert {p["pair_id"] for p in other} != {p["pair_id"] for p in pairs}


def test_no_global_pair_when_locations_disagree():
    bits = anatomy()
    amap = blob(62, 105, 20, 40)  # mid zone and base, reported only at the base
    findings = [finding(0, "opacity", locs=["right lung base"])]
    rows, arrays = fuse_study("1", findings, bits, amap, [Box(20, 62, 40, 105, 0.9)], FuseConfig(min_anatomy_overlap=0.3))
    assert rows and rows[0]["grounded_locations"] == ["right mid zone lung", "right lung base"]
    pairs, _ = make_pairs({"study_id": "1", "image_uri": "x"}, findings, rows, arrays, bits, PairConfig(negatives_per_study=0))
    assert [p["type"] for p in pairs] == ["basic"]


def test_bilateral_finding_gives_one_instance_per_side():
    bits = anatomy()
    amap = blob(90, 105, 20, 40) + blob(90, 105, 80, 100)  # both lung bases
    boxes = [Box(20, 90, 40, 105, 0.9), Box(80, 90, 100, 105, 0.9)]
    findings = [finding(0, "effusion", locs=["right lung base", "left lung base"])]
    rows, arrays = fuse_study("1", findings, bits, amap, boxes, FuseConfig(min_anomaly_fraction=0.2))
    assert [r["grounded_locations"] for r in rows] == [["right lung base"], ["left lung base"]]
    assert [r["mask_id"] for r in rows] == ["s1_effusion_0", "s1_effusion_1"] and {r["finding_idx"] for r in rows} == {0}
    assert not ((arrays[rows[0]["mask_uri"]] > 0) & (arrays[rows[1]["mask_uri"]] > 0)).any()
    pairs, new = make_pairs({"study_id": "1", "image_uri": "x"}, findings, rows, arrays, bits, PairConfig(negatives_per_study=0))
    glob = [p for p in pairs if p["type"] == "global"]
    assert len(glob) == 1 and glob[0]["seg_mask_path"] in new  # the global pair points at the union
    union = sum((arrays[r["mask_uri"]] > 0).sum() for r in rows)  # effusion fills to the base
    assert union >= 2 * 15 * 20 and (new[glob[0]["seg_mask_path"]] > 0).sum() == union


def test_effusion_is_the_dependent_layer_grown_from_the_base():
    """A dense layer over the base (blind in its last rows, as the anomaly model is) becomes the
    mask down to the lung's bottom; a dense patch higher up, separated from it by aerated lung,
    does not join it."""
    from ilsgen.fuse import effusion_mask

    n = 200
    lung = np.zeros((n, n), bool)
    lung[40:160, 20:90] = True
    anomaly = np.zeros((n, n), np.float32)
    anomaly[125:155, 20:90] = 0.9  # the layer; rows 155-159 (the base) read as normal
    anomaly[60:80, 40:70] = 0.9  # a consolidation higher up
    box = Box(20, 60, 90, 160, 0.9)
    m = effusion_mask(lung, anomaly, [box], FuseConfig(), lung)
    assert m[125:160, 20:90].all()  # meniscus to the base
    assert not m[:124].any()  # nothing above the meniscus, the upper patch left out
    assert not effusion_mask(lung, anomaly, [Box(150, 150, 190, 190, 0.9)], FuseConfig(), lung).any()  # no evidence


def test_lesion_masks_give_the_edema_haze_back():
    """A consolidation whose component runs on into the perihilar edema keeps its own part (and
    a thin margin), not the haze; a lesion lying wholly inside the haze is left alone."""
    from ilsgen.fuse import yield_to_haze

    n = 100
    edema = np.zeros((n, n), bool)
    edema[30:60, 30:60] = True
    cons = np.zeros((n, n), bool)
    cons[40:50, 50:80] = True  # 10 of its 30 columns inside the haze
    inside = np.zeros((n, n), bool)
    inside[35:40, 35:40] = True
    claims = [({}, "edema", edema.copy(), 1.0), ({}, "consolidation", cons.copy(), 1.0), ({}, "opacity", inside.copy(), 1.0)]
    yield_to_haze(claims)
    got = claims[1][2]
    assert got[40:50, 60:80].all() and not got[40:50, 50:59].any()  # own part kept, haze given back
    assert got[40:50, 59].all()  # the one-pixel margin next to its own part
    assert np.array_equal(claims[2][2], inside) and np.array_equal(claims[0][2], edema)


def test_touching_lesions_at_different_places_are_split_at_the_saddle():
    """An opacity in the right upper zone touching a consolidation in the right mid zone forms
    one anomaly component (one box); each finding keeps its own lesion, cut along the dim
    neck between them, not along the zone border. Findings at the same place keep both."""
    bits = anatomy()
    amap = blob(38, 62, 20, 40, 0.9)  # opacity: rows 38-61, reaches 2 rows into the mid zone
    amap[62:64, 28:32] = 0.55  # a dim neck
    amap[64:82, 20:40] = 0.8  # consolidation, mid zone
    box = [Box(20, 38, 40, 82, 0.9)]
    cfg = FuseConfig(min_component_frac=0.0)
    findings = [finding(0, "opacity", locs=["right upper zone lung"]), finding(1, "consolidation", locs=["right mid zone lung"])]
    rows, arrays = fuse_study("1", findings, bits, amap, box, cfg)
    masks = {r["lesion"]: arrays[r["mask_uri"]] > 0 for r in rows}
    opacity, cons = masks["opacity"], masks["consolidation"]
    assert opacity[38:62, 20:40].all() and not opacity[64:82].any()  # up to the neck, not beyond
    assert cons[64:82, 20:40].all() and not cons[38:62].any()
    assert not (opacity & cons).any()
    same = [finding(0, "opacity", locs=["right mid zone lung"]), finding(1, "pneumonia", locs=["right mid zone lung"])]
    rows, arrays = fuse_study("1", same, bits, amap, box, cfg)
    a, b = (arrays[r["mask_uri"]] > 0 for r in rows)
    assert np.array_equal(a, b) and a[38:82, 20:40].sum() > 0.9 * 44 * 20


def test_each_side_of_a_bilateral_finding_passes_c3_on_its_own():
    """A small consolidation in the left base next to a large one in the right base: c3 weighs
    each box against its own side's anomaly, so the small side is not lost to the large one."""
    bits = anatomy()
    amap = blob(86, 110, 15, 55) + blob(95, 104, 80, 90)  # right: 960 px, left: 90 px
    boxes = [Box(15, 86, 55, 110, 0.9), Box(80, 95, 90, 104, 0.9)]
    findings = [finding(0, "consolidation", locs=["right lung base", "left lung base"])]
    cfg = FuseConfig(min_area_frac=0.005)
    rows, _ = fuse_study("1", findings, bits, amap, boxes, cfg)
    assert [r["grounded_locations"] for r in rows] == [["right lung base"], ["left lung base"]]
    from ilsgen.fuse import keep_boxes
    from ilsgen.verify import region_of

    region = region_of(bits, ["right lung base", "left lung base"])
    assert len(keep_boxes(boxes, region, amap, "consolidation", cfg)) == 1  # without sides: the small one fails c3
