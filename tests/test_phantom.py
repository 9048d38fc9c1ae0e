"""Synthetic phantom studies: determinism, DICOM validity, report/truth agreement, anatomy, S3."""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pydicom
import pytest

from ils.config import load_config
from ils.phantom import generate_study, write_phantoms
from ils.schema import FINDING, MASK, STUDY
from ils.store import S3Options, Store
from ils.vocab import ATOMIC_REGIONS, LESIONS, LOCATIONS, region_bit

SMALL = ["sample.size=64", "image.size=64"]

# Independent check of the prose: words that name each lesion in a report.
LESION_WORDS = {
    "effusion": ("effusion",),
    "cardiomegaly": ("cardiomegaly", "enlarged"),
    "edema": ("edema", "congestion"),
    "consolidation": ("consolidation",),
    "pneumonia": ("pneumonia", "infection"),
    "atelectasis": ("atelectasis",),
    "opacity": ("opacity",),
}


@pytest.fixture(scope="module")
def many():
    cfg = load_config(None, SMALL)
    return [generate_study(3, i, cfg) for i in range(300)]


def test_generate_study_is_deterministic_and_shaped():
    cfg = load_config(None, ["sample.size=128", "image.size=64"])
    a, b = generate_study(5, 7, cfg), generate_study(5, 7, cfg)
    assert a.study_id == b.study_id and re.fullmatch(r"\d{8}", a.study_id)
    assert a.image.shape == (128, 128) and a.image.dtype == np.float32
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert np.array_equal(a.image, b.image) and a.report == b.report and a.findings == b.findings
    assert a.anatomy.shape == (64, 64) and a.anatomy.dtype == np.uint16
    for ms in a.masks.values():
        assert all(m.shape == (64, 64) and m.dtype == bool for m in ms)
    assert generate_study(6, 7, cfg).study_id != a.study_id or not np.array_equal(generate_study(6, 7, cfg).image, a.image)
    ids = {generate_study(5, i, cfg).study_id for i in range(30)}
    assert len(ids) == 30


def test_write_is_byte_identical_and_pydicom_opens(tmp_path):
    cfg = load_config(None, SMALL + ["sample.monochrome1_fraction=0.5"])
    runs = []
    for name in ("a", "b"):
        store = Store(str(tmp_path / name))
        write_phantoms(store, 12, 1, cfg, progress=False)
        runs.append({p: store.read_bytes(p) for p in store.list()})
    assert runs[0].keys() == runs[1].keys() and runs[0] == runs[1]
    store = Store(str(tmp_path / "a"))
    manifest = store.read_parquet("manifest.parquet")
    assert manifest.schema.equals(STUDY)
    assert store.read_parquet("truth/findings.parquet").schema.equals(FINDING)
    assert store.read_parquet("truth/masks.parquet").schema.equals(MASK)
    photometric = Counter()
    for row in manifest.to_pylist():
        assert row["view"] == "PA" and row["split"] in ("train", "val", "test")
        ds = pydicom.dcmread(io.BytesIO(store.read_bytes(row["image_uri"])))
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "DX" and ds.ViewPosition == "PA" and ds.BitsAllocated == 16
        assert 12 <= ds.BitsStored <= 16 and ds.pixel_array.shape == (64, 64)
        assert int(ds.pixel_array.max()) < (1 << ds.BitsStored)
        assert str(ds.PatientName).startswith("PHANTOM^") and ds.StudyDate.startswith("21")
        assert ds.PixelSpacing and ds.WindowWidth and ds.RescaleSlope is not None
        photometric[ds.PhotometricInterpretation] += 1
        report = store.read_text(f"reports/{row['study_id']}.txt")
        assert report == row["report"] and "FINDINGS:" in report and "IMPRESSION:" in report
    assert photometric["MONOCHROME1"] > 0 and photometric["MONOCHROME2"] > 0
    masks = store.read_parquet("truth/masks.parquet").to_pylist()
    for m in masks[:10]:
        png = store.child("truth").read_png(m["mask_uri"])
        assert png.shape == (64, 64) and set(np.unique(png)) <= {0, 255} and png.any()


def test_every_lesion_appears_and_normal_fraction(many):
    present = Counter(l for s in many for l in {f["lesion"] for f in s.findings if f["present"]})
    assert set(present) == set(LESIONS), present
    assert min(present.values()) >= 15
    normal = sum(s.is_normal for s in many) / len(many)
    assert 0.2 <= normal <= 0.4
    multi_side = sum(len({r["grounded_locations"][0].split()[0] for r in s.mask_rows if r["lesion"] == les and r["grounded_locations"]}) == 2
                     for s in many for les in s.masks)
    assert multi_side > 10  # bilateral lesions exist


def test_reports_match_truth(many):
    negated = uncertain = 0
    for s in many:
        text = s.report.lower()
        present = {f["lesion"] for f in s.findings if f["present"]}
        assert present == set(s.masks), (s.study_id, present, set(s.masks))
        for les in present:
            assert any(w in text for w in LESION_WORDS[les]), (les, s.report)
        for f in s.findings:
            assert f["sentence"] in s.report and f["lesion"] in LESIONS and f["source"] == "truth"
            assert set(f["locations"]) <= set(LOCATIONS)
            if f["present"]:
                assert f["certainty"] in ("definite", "tentative")
            else:
                negated += 1
                assert f["certainty"] is None
            if f["certainty"] == "tentative":
                uncertain += 1
                assert re.search(r"possibl|may represent|cannot be excluded|likely|concerning|suspicious|question|differential|correlate", f["sentence"].lower()), f["sentence"]
        if s.is_normal:
            assert "no acute" in text
    assert negated > 100 and uncertain > 20
    allt = " ".join(s.report for s in many).lower()
    for phrase in ("no pleural effusion", "pneumothorax", "bibasilar", "retrocardiac", "right lower lobe", "perihilar", "lingula"):
        assert phrase in allt, phrase


def test_masks_inside_lungs_or_heart_and_grounded(many):
    lung, heart = region_bit("lung"), region_bit("heart")
    n = 0
    for s in many:
        for r in s.mask_rows:
            m = s.masks[r["lesion"]][r["instance_idx"]]
            assert m.any() and r["area_frac"] > 0
            allowed = heart if r["lesion"] == "cardiomegaly" else lung
            assert np.all(s.anatomy[m] & allowed), r["mask_id"]
            assert r["grounded_locations"] and set(r["grounded_locations"]) <= set(LOCATIONS)
            assert r["mask_id"] == f"s{s.study_id}_{r['lesion']}_{r['instance_idx']}"
            n += 1
    assert n > 200


def test_label_maps_cover_every_location_and_cardiomegaly_is_wide(many):
    for s in many[:50]:
        for loc in LOCATIONS:
            assert np.any(s.anatomy & region_bit(loc)), loc
        assert int(s.anatomy.max()) < (1 << len(ATOMIC_REGIONS))
    ratios = {True: [], False: []}
    for s in many:
        cols_heart = np.flatnonzero((s.anatomy & region_bit("heart")).any(axis=0))
        cols_lung = np.flatnonzero((s.anatomy & region_bit("lung")).any(axis=0))
        ratios["cardiomegaly" in s.masks].append((np.ptp(cols_heart) + 1) / (np.ptp(cols_lung) + 1))
    assert min(ratios[True]) > 0.5 and max(ratios[False]) < 0.5


def test_rendering_lungs_dark_and_lesions_visible(many):
    lung, heart = region_bit("lung"), region_bit("heart")
    for s in many[:40]:
        lung_px = s.image[(s.anatomy & lung) > 0]
        heart_px = s.image[(s.anatomy & heart) > 0]
        assert lung_px.mean() + 0.15 < heart_px.mean()
    for s in many[:80]:
        healthy = (s.anatomy & lung) > 0
        for les, ms in s.masks.items():
            if les == "cardiomegaly":
                continue
            for m in ms:
                healthy &= ~m
        for les, ms in s.masks.items():
            if les != "cardiomegaly":
                for m in ms:
                    assert s.image[m].mean() > s.image[healthy].mean(), (s.study_id, les)


def test_s3_output(s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = load_config(None, SMALL)
    store = Store(f"s3://{bucket}/ph", S3Options(endpoint=endpoint))
    summary = write_phantoms(store, 3, 2, cfg, progress=False)
    assert summary.n == 3
    manifest = store.read_parquet("manifest.parquet").to_pylist()
    assert len(manifest) == 3
    ds = pydicom.dcmread(io.BytesIO(store.read_bytes(manifest[0]["image_uri"])))
    assert ds.Rows == 64


def test_cli_sample(tmp_path, capsys):
    from ils.cli import main

    out = tmp_path / "ph"
    assert main(["sample", "--n", "3", "--seed", "1", "--out", str(out)] + SMALL) == 0
    assert (out / "manifest.parquet").is_file() and len(list((out / "images").glob("*.dcm"))) == 3
    assert "wrote 3 synthetic phantom studies" in capsys.readouterr().out
    assert main(["sample", "--n", "0", "--out", str(out)]) == 2
    assert main(["sample", "--n", "2", "--out", str(out), "sample.val_fraction=0.9", "sample.test_fraction=0.5"]) == 2


@pytest.mark.parametrize("size", [96, 200, 333])
def test_sizes_that_are_not_a_power_of_two_render(size):
    """Regression: the generic resize path once returned a read-only array."""
    from ils.config import SampleConfig
    from ils.phantom.sample import generate_study

    study = generate_study(1, 0, SampleConfig(size=size), truth_size=64)
    assert study.image.shape == (size, size)
    assert 0.0 <= float(study.image.min()) and float(study.image.max()) <= 1.0


def test_cli_truth_pairs_use_the_truth_masks(tmp_path, capsys):
    """`ils truth-pairs` turns the phantoms' ground truth into pairs `ils eval` can read: every
    positive points at a copy of a truth mask (or the union of the study's truth masks of that
    lesion), every negative names a lesion the truth says is absent there."""
    import json

    import pyarrow.parquet as pq

    from ils.cli import main
    from ils.store import Store

    store = f"store.uri={tmp_path}"
    assert main(["sample", "--n", "12", "--seed", "4", "--out", "ph", store, "sample.test_fraction=0.5"] + SMALL) == 0
    capsys.readouterr()
    assert main(["truth-pairs", "--phantoms", "ph", "--out", "tt", "--split", "all", store]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] > 0
    pairs = pq.read_table(tmp_path / "tt" / "pairs").to_pylist()
    truth = pq.read_table(tmp_path / "ph" / "truth" / "masks.parquet").to_pylist()
    findings = pq.read_table(tmp_path / "ph" / "truth" / "findings.parquet").to_pylist()
    ph, tt = Store(str(tmp_path / "ph")), Store(str(tmp_path / "tt"))
    positives = [p for p in pairs if p["presence"] and p["seg"]]
    assert positives and any(not p["presence"] for p in pairs)
    for p in positives:
        target = tt.read_png(p["seg_mask_path"]) > 127
        union = np.zeros_like(target)
        for m in truth:
            if m["study_id"] == p["study_id"] and m["lesion"] == p["lesion"]:
                union |= ph.read_png(f"truth/{m['mask_uri']}") > 127
        assert target.any() and not (target & ~union).any()  # part of (or all of) the truth masks
    present = {(f["study_id"], f["lesion"]) for f in findings if f["present"]}
    for p in pairs:
        if not p["presence"] and p["type"] == "global":
            assert (p["study_id"], p["lesion"]) not in present
    assert main(["truth-pairs", "--phantoms", "ph", "--out", "t2", store]) == 0  # default split: test
    assert {p["split"] for p in pq.read_table(tmp_path / "t2" / "pairs").to_pylist()} == {"test"}
