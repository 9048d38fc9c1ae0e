"""The label ceiling (ilsgen's masks against phantom-truth pairs) and its model comparison, on tiny SYNTHETIC runs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ils.label_ceiling import compare, compare_lines, label_ceiling
from ils.store import Store


def _box(r0, r1, c0, c1, n=16):
    m = np.zeros((n, n), bool)
    m[r0:r1, c0:c1] = True
    return m


T1 = _box(2, 9, 8, 15)          # truth opacity, left lung
S1 = _box(3, 9, 9, 13)          # ilsgen's left-lung opacity (at 16 px; stored at 32 px)
S2 = _box(4, 10, 1, 6)          # ilsgen's right-lung opacity
SE = _box(10, 14, 1, 6)         # ilsgen's right-lung effusion


@pytest.fixture()
def runs(tmp_path):
    truth, gen = Store(str(tmp_path / "truth")), Store(str(tmp_path / "gen"))
    truth.write_png("m/t1.png", (T1 * 255).astype(np.uint8))
    rows = [
        dict(study_id="s1", lesion="opacity", target="opacity", type="basic", locations=["left lung"], presence=True, seg=True,
             seg_mask_path="m/t1.png", split="test"),
        dict(study_id="s1", lesion="opacity", target="opacity", type="global", locations=[], presence=True, seg=True,
             seg_mask_path="m/t1.png", split="test"),
        dict(study_id="s1", lesion="effusion", target="effusion", type="basic", locations=["right lung"], presence=False, seg=False,
             seg_mask_path=None, split="test"),
        dict(study_id="s1", lesion="consolidation", target="consolidation", type="basic", locations=["left lung"], presence=False,
             seg=False, seg_mask_path=None, split="test"),
        dict(study_id="s1", lesion="effusion", target="effusion", type="basic", locations=["right lung"], presence=False, seg=False,
             seg_mask_path=None, split="train"),  # another split: left out with split="test"
    ]
    truth.write_parquet("pairs/part-0.parquet", pa.Table.from_pylist(rows))
    big = lambda m: (np.kron(m, np.ones((2, 2), bool)) * 255).astype(np.uint8)  # 32 px: resized to the truth's 16
    for name, m in (("g1", S1), ("g2", S2), ("ge", SE)):
        gen.write_png(f"masks/{name}.png", big(m))
    idx = [dict(study_id="s1", lesion="opacity", mask_uri="masks/g1.png", grounded_locations=["left lung"]),
           dict(study_id="s1", lesion="opacity", mask_uri="masks/g2.png", grounded_locations=["right lung"]),
           dict(study_id="s1", lesion="effusion", mask_uri="masks/ge.png", grounded_locations=["right lung"])]
    gen.write_parquet("mask_index/part-0.parquet", pa.Table.from_pylist(idx))
    return truth, gen


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_label_ceiling_matches_independent_computation(runs):
    truth, gen = runs
    c = label_ceiling(truth.root_uri, gen.root_uri, split="test")
    basic, glob = _iou(S1, T1), _iou(S1 | S2, T1)  # basic left: the left mask only; global: every opacity mask
    o = c["overall"]
    assert c["n_pairs"] == 4 and o["n_pos"] == 2 and o["n_neg"] == 2 and c["masks_resized"] == 2
    assert o["gIoU"] == pytest.approx((basic + glob) / 2)
    assert o["cIoU"] == pytest.approx(((S1 & T1).sum() * 2) / ((S1 | T1).sum() + (S1 | S2 | T1).sum()))
    assert o["N-Acc"] == pytest.approx(0.5)  # ilsgen has a right-lung effusion where truth says none; no consolidation
    assert label_ceiling(truth, gen)["n_pairs"] == 5  # Store objects work; no split: every pair
    assert label_ceiling(truth, Store(str(truth.root) + "/none")) is None  # no mask_index


def test_compare_says_which_limits(runs):
    truth, gen = runs
    c = label_ceiling(truth, gen, split="test")
    rep = lambda g: {"overall": {"gated": {"gIoU": g, "cIoU": 0.3, "N-Acc": 0.9}},
                     "per_lesion": {"opacity": {"gated": {"gIoU": g, "cIoU": 0.3, "N-Acc": None}}}}
    low = compare(rep(0.1), c, "ds")
    assert low["labels_vs_truth"]["gIoU"] == pytest.approx(c["overall"]["gIoU"], abs=1e-4)
    assert low["limits"].startswith("the model") and low["per_lesion"]["opacity"]["model_vs_truth"]["gIoU"] == 0.1
    assert "within 0.05" in compare(rep(c["overall"]["gIoU"] - 0.01), c)["limits"]
    above = compare(rep(c["overall"]["gIoU"] + 0.2), c)["limits"]  # the model beats its own labels
    assert above.startswith("the labels") and "0.20 gIoU above them" in above
    lines = compare_lines(low)
    assert lines[1].split()[-3:] == ["10.0", "30.0", "90.0"] and lines[-1].startswith("limits: the model")
    assert compare(rep(0.1), None)["labels_vs_truth"] is None and compare_lines(compare(rep(0.1), None)) == []
