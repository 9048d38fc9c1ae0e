"""Phantom studies on real bases (sample.real_base): mechanics on a tiny synthetic realcxr-layout
folder made here from procedural phantoms (synthetic, not real data), plus one test on the real
../shared/realcxr (skipped when absent; ILS_REALCXR overrides)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ils.config import load_config
from ils.vocab import ATOMIC_REGIONS

ROOT = Path(__file__).resolve().parent.parent
REALCXR = Path(os.environ.get("ILS_REALCXR") or ROOT.parent / "shared" / "realcxr")
needs_real = pytest.mark.skipif(not (REALCXR / "index.csv").is_file(),
                                reason=f"real radiographs not found at {REALCXR} (set ILS_REALCXR); real-image test skipped")
SMALL = ["sample.size=128", "image.size=64", "sample.real_fraction=1.0"]
N_COVID = 10  # positions 4 and 9 are held out
LUNG_BITS = np.uint16(sum(1 << i for i, r in enumerate(ATOMIC_REGIONS) if r != "heart"))


def _save(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


@pytest.fixture(scope="module")
def fake_realcxr(tmp_path_factory) -> Path:
    """covid_radiologist (10 images; ground-glass on every 3rd, one effusion) + shenzhen_tb (2), from phantoms."""
    from ils.phantom.anatomy import fields, sample_geometry
    from ils.phantom.render import expose, render_anatomy

    root = tmp_path_factory.mktemp("realcxr")
    rows = []
    for set_name, count in (("covid_radiologist", N_COVID), ("shenzhen_tb", 2)):
        for i in range(count):
            rng = np.random.default_rng([77, i, len(set_name)])
            geo = sample_geometry(rng)
            n = 160
            f = fields(geo, n)
            img = np.clip(expose(render_anatomy(geo, f, rng), rng), 0, 1)
            ax = np.abs(f.X)
            full = (f.thorax < 1) & (f.Y < f.dia) & (ax > 0.01)
            right, left = full & (f.X < 0), full & (f.X >= 0)
            cm = f.heart_mask | ((ax < geo.med_w + 0.01) & (f.Y > 0.08) & (f.Y < f.dia))
            name = f"img{set_name[:3]}{i:02d}"
            masks = {"lung": full}
            if set_name == "covid_radiologist":
                masks.update(lung_right=right, lung_left=left, cardiomediastinum=cm)
                if i % 3 == 0:
                    yy, xx = np.mgrid[0:n, 0:n] / n
                    ggo = (((xx - 0.3) / 0.08) ** 2 + ((yy - 0.5) / 0.12) ** 2 < 1) & right & ~cm
                    masks["ground_glass_opacity"] = ggo
                    img = np.where(ggo, np.clip(img + 0.12, 0, 1), img)
                if i == 2:
                    masks["effusion"] = left & (f.Y > f.dia - 0.05)
            _save(root / set_name / "images" / f"{name}.png", (img * 255).astype(np.uint8))
            for k, m in masks.items():
                _save(root / set_name / "masks" / k / f"{name}.png", m.astype(np.uint8) * 255)
            rows.append({"name": name, "width": n, "height": n, "set": set_name, "view": "PA", "finding": "synthetic",
                         **{k: 1 for k in masks}})
    cols = ["name", "width", "height", "set", "view", "finding", "lung", "lung_left", "lung_right", "cardiomediastinum",
            "ground_glass_opacity", "consolidation", "effusion"]
    with open(root / "index.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return root


@pytest.fixture(scope="module")
def studies(fake_realcxr):
    from ils.phantom.real_sample import make_study

    cfg = load_config(None, [*SMALL, f"sample.real_base={fake_realcxr}"])
    return [make_study(4, i, cfg) for i in range(60)]


def test_bases_exclude_held_out_and_tb(fake_realcxr, studies):
    from ils.phantom.real_base import load_bases

    bases = load_bases(str(fake_realcxr))
    assert {b.set for b in bases} == {"covid_radiologist"}
    assert sorted(b.position for b in bases) == [p for p in range(N_COVID) if p % 5 != 4]
    assert all(s.meta["source"] == "real_base" and s.meta["base_position"] % 5 != 4 for s in studies)
    assert len({s.meta["base_name"] for s in studies}) >= 5


def test_synthetic_lesions_inside_lungs(studies):
    checked = 0
    for s in studies:
        lung = (s.anatomy & LUNG_BITS) > 0
        for lesion, masks in s.masks.items():
            if lesion in s.meta["kept_lesions"] or lesion == "cardiomegaly":
                continue
            for m in masks:
                assert m.any() and not (m & ~lung).any(), (s.study_id, lesion)
                checked += 1
    assert checked > 30


def test_blend_is_monotone_and_exact_on_support():
    from ils.phantom.composite import blend, upsample_density

    rng = np.random.default_rng(0)
    v = rng.uniform(0.0, 0.999, (64, 64)).astype(np.float32)
    d = np.zeros((32, 32), np.float32)
    d[5:20, 8:25] = rng.uniform(0, 2.0, (15, 17))
    dd = upsample_density(d, 64)
    out = blend(v, dd)
    assert (out >= v).all()
    assert np.array_equal(out > v, dd > 0)
    # attenuation adds: a dense lesion nearly whites out, a haze keeps the differences under it
    assert blend(np.float32([[0.3]]), np.float32([[6.0]]))[0, 0] > 0.98
    a, b = blend(np.float32([[0.3, 0.4]]), np.float32([[0.5, 0.5]]))[0]
    assert b - a > 0.05


def test_truth_agrees_with_report(studies):
    for s in studies:
        present = {f["lesion"] for f in s.findings if f["present"]}
        assert set(s.masks) == present, s.study_id
        pos = -1
        for f in sorted(s.findings, key=lambda f: f["sent_idx"]):  # sentence indices follow the text order
            at = s.report.find(f["sentence"], max(pos, 0))
            assert at >= pos >= -1 and at >= 0, (s.study_id, f["sentence"])
            pos = at
        assert "lungs are clear" not in s.report.lower()
        by_idx = {f["finding_idx"]: f for f in s.findings}
        for r in s.mask_rows:
            assert by_idx[r["finding_idx"]]["lesion"] == r["lesion"] and by_idx[r["finding_idx"]]["present"]


def test_kept_real_lesions_in_truth_and_never_negated(fake_realcxr, studies):
    from ils.phantom.real_base import load_bases, resized
    from ils.phantom.real_sample import NO_NEGATIVE

    bases = load_bases(str(fake_realcxr))
    with_ggo = [s for s in studies if "ground_glass_opacity" in bases[[b.name for b in bases].index(s.meta["base_name"])].masks]
    assert with_ggo
    cons_negated = 0
    for s in studies:
        negated = {f["lesion"] for f in s.findings if not f["present"]}
        assert not negated & set(s.meta["kept_lesions"]) and not negated & NO_NEGATIVE
        base_masks = bases[[b.name for b in bases].index(s.meta["base_name"])].masks
        if "consolidation" in negated:  # only where the image was outlined (ground-glass) without consolidation
            assert "ground_glass_opacity" in base_masks and "consolidation" not in base_masks
            cons_negated += 1
    assert cons_negated > 0
    for s in with_ggo:
        assert "opacity" in s.meta["kept_lesions"] and "opacity" in s.masks
        bi = [b.name for b in bases].index(s.meta["base_name"])
        ref = resized(str(fake_realcxr), bi, 128, 64)[1]["ground_glass_opacity"]
        got = np.logical_or.reduce(s.masks["opacity"])
        assert 0.6 < got.sum() / ref.sum() < 1.5  # the real mask, moved by the small augmentation affine
    eff = [s for s in studies if s.meta["base_name"] == "imgcov02"]
    assert eff and all("effusion" in s.masks for s in eff)


def test_deterministic_per_seed_and_index(fake_realcxr):
    from ils.phantom.real_sample import make_study

    cfg = load_config(None, [*SMALL, f"sample.real_base={fake_realcxr}", "sample.real_fraction=0.5"])
    a, b = make_study(9, 3, cfg), make_study(9, 3, cfg)
    assert np.array_equal(a.image, b.image) and a.report == b.report and a.meta == b.meta
    assert all(np.array_equal(x, y) for k in a.masks for x, y in zip(a.masks[k], b.masks[k]))
    kinds = {make_study(9, i, cfg).meta.get("source", "procedural") for i in range(12)}
    assert kinds == {"real_base", "procedural"}


def test_absent_folder_falls_back_to_procedural(tmp_path, caplog):
    from ils.phantom.real_sample import make_study
    from ils.phantom.sample import generate_study

    cfg = load_config(None, [*SMALL, f"sample.real_base={tmp_path / 'nothing'}"])
    with caplog.at_level(logging.WARNING, logger="ils.phantom.real_sample"):
        s = make_study(1, 0, cfg)
    assert "source" not in s.meta and np.array_equal(s.image, generate_study(1, 0, cfg).image)
    assert any("procedural" in r.getMessage() for r in caplog.records)


def test_write_records_bases(fake_realcxr, tmp_path):
    from ils.phantom.write import write_phantoms
    from ils.store import Store

    cfg = load_config(None, [*SMALL, f"sample.real_base={fake_realcxr}", "sample.real_fraction=0.5"])
    store = Store(str(tmp_path / "ph"))
    summary = write_phantoms(store, 8, 2, cfg, progress=False)
    src = store.read_parquet("truth/sources.parquet").to_pylist()
    assert len(src) == 8 and summary.real_base == sum(r["source"] == "real_base" for r in src) > 0
    assert all((r["base_name"] is None) == (r["source"] == "procedural") for r in src)
    # a procedural re-run into the same folder leaves no stale sources behind
    write_phantoms(store, 8, 2, load_config(None, [*SMALL, "sample.real_fraction=0.0"]), progress=False)
    assert {r["source"] for r in store.read_parquet("truth/sources.parquet").to_pylist()} == {"procedural"}


@needs_real
def test_on_the_real_development_split():
    from ilsgen.anatomy_net.data import held_out, read_index
    from ils.phantom.real_base import load_bases
    from ils.phantom.real_sample import generate_real_study

    bases = load_bases(str(REALCXR))
    names = {b.name for b in bases}
    pos: dict[str, int] = {}
    for row in read_index(REALCXR):
        p = pos.get(row["set"], 0)
        pos[row["set"]] = p + 1
        if row["set"] != "covid_radiologist" or held_out(p):
            assert row["name"] not in names
    cfg = load_config(None, ["sample.size=256", "image.size=128", f"sample.real_base={REALCXR}"])
    kept = 0
    for i in range(6):
        s = generate_real_study(5, i, cfg)
        lung = (s.anatomy & LUNG_BITS) > 0
        assert lung.mean() > 0.1 and s.image.std() > 0.05
        for lesion, masks in s.masks.items():
            if lesion not in s.meta["kept_lesions"] and lesion != "cardiomegaly":
                assert all(not (m & ~lung).any() for m in masks)
        kept += len(s.meta["kept_lesions"])
    assert kept > 0


def test_truth_of_real_bases_replaces_their_pairs_in_training(fake_realcxr, tmp_path, capsys):
    """`ils truth-pairs --source real_base` keeps only the studies on real bases, and with
    `train.extra_data` those studies are trained on that run's pairs only (the main run's pairs
    of the same studies are left out), every other study on the main run's."""
    import json

    from ils.cli import main
    from ils.store import Store
    from rosalia.data import PairDataset
    from rosalia.train import training_pairs

    store = f"store.uri={tmp_path}"
    over = [*SMALL, f"sample.real_base={fake_realcxr}", "sample.real_fraction=0.5", "sample.test_fraction=0", "sample.val_fraction=0"]
    assert main(["sample", "--n", "10", "--seed", "3", "--out", "ph", store, *over]) == 0
    real = {r["study_id"] for r in Store(str(tmp_path / "ph")).read_parquet("truth/sources.parquet").to_pylist()
            if r["source"] == "real_base"}
    assert 0 < len(real) < 10
    capsys.readouterr()
    assert main(["truth-pairs", "--phantoms", "ph", "--out", "extra", "--split", "train", "--source", "real_base", store]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["source"] == "real_base"
    assert main(["truth-pairs", "--phantoms", "ph", "--out", "main", "--split", "train", store]) == 0  # stands in for a gen run
    extra_rows = Store(str(tmp_path / "extra")).read_parquet("pairs").to_pylist()
    main_rows = Store(str(tmp_path / "main")).read_parquet("pairs").to_pylist()
    assert {r["study_id"] for r in extra_rows} == real
    cfg = load_config(None, [store, "train.extra_data=[extra]"])
    ds = training_pairs(cfg, Store(str(tmp_path / "main")), 64, 64)
    expected = [r for r in main_rows if r["study_id"] not in real] + extra_rows
    assert sorted(r["pair_id"] for r in ds.rows) == sorted(r["pair_id"] for r in expected)
    # every pair still points at its own image and mask after the join
    solo = {"main": PairDataset.from_run(Store(str(tmp_path / "main")), "train", 64, 64, cache=False),
            "extra": PairDataset.from_run(Store(str(tmp_path / "extra")), "train", 64, 64, cache=False)}
    by_id = {r["pair_id"]: (name, i) for name, d in solo.items() for i, r in enumerate(d.rows)}
    for i, r in enumerate(ds.rows):
        name, j = by_id[r["pair_id"]]
        if name == "main" and r["study_id"] in real:
            continue
        a, b = ds[i], solo[name][j]
        assert np.array_equal(a["image"].numpy(), b["image"].numpy()) and np.array_equal(a["mask"].numpy(), b["mask"].numpy())
    assert main(["truth-pairs", "--phantoms", "ph", "--out", "none", "--split", "test", "--source", "real_base", store]) != 0


def test_demo_scores_real_base_truth_only_when_test_studies_have_it(fake_realcxr, tmp_path):
    """The demo's truth-pairs-real / eval-truth-real stages run only when some test-split study
    was built on a real radiograph (a tiny sample may have none)."""
    from ils.cli import main
    from ils.commands.demo import _real_base_tests
    from ils.store import Store

    base = [*SMALL, f"sample.real_base={fake_realcxr}", "sample.real_fraction=0.5", "sample.val_fraction=0"]
    for name, test_fraction, expected in (("none", 0.0, False), ("all", 1.0, True)):
        root = tmp_path / name
        assert main(["sample", "--n", "6", "--seed", "3", "--out", "phantoms", f"store.uri={root}", *base,
                     f"sample.test_fraction={test_fraction}"]) == 0
        assert _real_base_tests(Store(str(root))) is expected
