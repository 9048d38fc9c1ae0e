"""Generation-quality metrics on small hand-made cases, including empty ones."""

from __future__ import annotations

import numpy as np
import pytest

from ilsgen.quality import negative_correct, score_run


def f(study, lesion, present=True, certainty="definite", locs=()):
    return {"study_id": study, "lesion": lesion, "present": present, "certainty": certainty if present else None, "locations": list(locs)}


def m(study, lesion, key):
    return {"study_id": study, "lesion": lesion, "key": key}


def neg(study, type_, lesion, locs=()):
    return {"study_id": study, "type": type_, "target": "opacity" if type_ == "lesion_inference" else lesion,
            "lesion": lesion, "locations": list(locs), "presence": False}


ARR = {}


def box(key, r0, r1, c0, c1):
    a = np.zeros((20, 20), bool)
    a[r0:r1, c0:c1] = True
    ARR[key] = a
    return key


def load(row):
    return ARR[row["key"]]


def test_scores_on_a_small_case():
    truth_f = [f("1", "effusion", locs=["left lung base"]), f("1", "edema", present=False), f("2", "cardiomegaly", locs=["heart"])]
    pred_f = [f("1", "effusion", certainty="tentative", locs=["left lung base"]), f("1", "edema", present=False),
              f("2", "opacity", locs=["right lung"])]
    truth_m = [m("1", "effusion", box("t1", 0, 10, 0, 10)), m("2", "cardiomegaly", box("t2", 0, 10, 0, 10))]
    pred_m = [m("1", "effusion", box("p1", 0, 10, 0, 5)), m("1", "effusion", box("p1b", 15, 20, 15, 20))]
    pairs = [neg("1", "global", "pneumonia"), neg("1", "basic", "effusion", ["left lung base"]),
             neg("1", "lesion_inference", "opacity", ["right lung"]), {"study_id": "1", "type": "basic", "presence": True, "lesion": "effusion"}]
    res = score_run(pairs, pred_f, pred_m, truth_f, truth_m, load, load)
    strict, loose = res["findings"]["strict"], res["findings"]["lesion_presence"]
    assert strict["tp"] == 1 and strict["precision"] == pytest.approx(1 / 3) and strict["recall"] == pytest.approx(1 / 3)
    assert loose["tp"] == 2 and loose["f1"] == pytest.approx(2 / 3)
    assert res["location_accuracy"] == 1.0  # only the effusion is matched, same location
    assert res["mask_iou"]["per_lesion"] == {"cardiomegaly": 0.0, "effusion": 0.5}
    assert res["mask_iou"]["union_per_lesion"]["effusion"] == pytest.approx(50 / 125)
    assert res["mask_iou"]["mean"] == pytest.approx(0.25)
    assert res["negatives"]["n"] == 3 and res["negatives"]["correct_fraction"] == pytest.approx(2 / 3)
    assert res["negatives"]["by_type"]["basic"] == 0.0


def test_empty_inputs():
    res = score_run([], [], [], [], [], load, load)
    assert res["findings"]["strict"]["precision"] is None and res["findings"]["strict"]["f1"] is None
    assert res["mask_iou"]["mean"] is None and res["negatives"]["correct_fraction"] is None
    truth_f = [f("1", "opacity", locs=["right lung base"])]
    truth_m = [m("1", "opacity", box("t3", 0, 5, 0, 5))]
    res = score_run([], [], [], truth_f, truth_m, load, load)  # no predictions at all
    assert res["findings"]["strict"]["recall"] == 0.0 and res["findings"]["strict"]["precision"] is None
    assert res["mask_iou"]["per_lesion"] == {"opacity": 0.0}
    res = score_run([], truth_f, [m("1", "opacity", box("p3", 0, 5, 0, 5))], [], [], load, load)  # no truth
    assert res["findings"]["strict"]["precision"] == 0.0 and res["mask_iou"]["mean"] is None


def test_negative_correctness_rules():
    truth = {"1": [f("1", "pneumonia", locs=["right lung base"]), f("1", "effusion")]}
    assert not negative_correct(neg("1", "lesion_inference", "opacity", ["right lung"]), truth)  # pneumonia is an opacity
    assert negative_correct(neg("1", "lesion_inference", "opacity", ["left lung base"]), truth)
    assert not negative_correct(neg("1", "basic", "effusion", ["left lung base"]), truth)  # unlocalised = whole lung
    assert not negative_correct(neg("1", "global", "opacity"), truth)
    assert negative_correct(neg("1", "global", "cardiomegaly"), truth)
    assert negative_correct(neg("2", "global", "pneumonia"), truth)
