"""The lite anatomy network on real radiographs and phantoms; `ils anatomy` and `ils real-eval`.

Real images come from ../shared/realcxr (the development split; ILS_REALCXR overrides); those
tests skip with a message when it is absent. Only images the shipped network was not trained on
(its held-out fifth, recorded in the weights file) are scored here.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ils.config import StageConfig, load_config
from ils.vocab import LOCATIONS, region_bit

ROOT = Path(__file__).resolve().parent.parent
REALCXR = Path(os.environ.get("ILS_REALCXR") or ROOT.parent / "shared" / "realcxr")
needs_real = pytest.mark.skipif(not (REALCXR / "index.csv").is_file(),
                                reason=f"real radiographs not found at {REALCXR} (set ILS_REALCXR); real-image tests skipped")


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _net():
    from ilsgen.stages.anatomy_lite_net import NetAnatomy

    return NetAnatomy(StageConfig(), 256)


def _held_out_cases(set_name: str, n: int):
    from ilsgen.anatomy_net.data import load_real

    held = {tuple(x) for x in _net().net.meta["data"]["held_out"]}
    cases = [c for c in load_real(REALCXR, (set_name,)) if (c.set, c.name) in held]
    assert cases, "the weights file records no held-out image of this set"
    return cases[:n]


def _phantom(seed: int, size: int = 256):
    from ils.imageio import resize_square
    from ils.phantom import generate_study

    cfg = load_config(None, [f"sample.size={size}", f"image.size={size}"])
    st = generate_study(0, seed, cfg)
    return st, resize_square(st.image, size)


def test_weights_ship_small_with_their_record():
    from ilsgen.anatomy_net.model import CHANNELS, WEIGHTS

    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 20e6
    meta = _net().net.meta
    assert meta["channels"] == list(CHANNELS)
    assert meta["command"].startswith("ils anatomy train")
    assert meta["data"]["held_out"] and meta["data"]["phantoms"]["count"] > 0


def test_registry_lite_is_the_network_and_classic_stays_available():
    from ilsgen.stages.anatomy_lite_net import NetAnatomy
    from ilsgen.stages.registry import make_backend

    assert isinstance(make_backend("anatomy", StageConfig(), 128), NetAnatomy)
    classic = make_backend("anatomy", StageConfig(options={"method": "classic"}), 128)
    _, img = _phantom(1, 128)
    assert classic.segment([img])[0].shape == (128, 128)
    with pytest.raises(ValueError, match="method"):
        make_backend("anatomy", StageConfig(options={"method": "nope"}), 128)


def test_network_on_phantoms_matches_truth():
    from ilsgen.stages.anatomy_lite import region_mask

    anat = _net()
    scores = []
    for seed in range(3):  # seed 0: never trained on (training used phantom seed 101)
        st, img = _phantom(seed)
        bits = anat.segment([img])[0]
        assert bits.dtype == np.uint16 and bits.shape == (256, 256)
        iou = lambda a, b: (a & b).sum() / max((a | b).sum(), 1)
        scores.append([iou(region_mask(bits, r), region_mask(st.anatomy, r)) for r in ("right lung", "left lung", "heart")])
    mean = np.mean(scores, axis=0)
    assert mean.min() > 0.85, mean  # classic: > 0.85 in tests/test_stages_lite.py


@needs_real
def test_network_on_held_out_real_images():
    from ilsgen.real_eval import Scorer

    cfg = load_config(None, ["image.size=256"])
    scorer = Scorer(cfg, lesions=False)
    from ils.imageio import resize_square

    inside = []
    for set_name in ("covid_radiologist", "shenzhen_tb"):
        for case in _held_out_cases(set_name, 2):
            row, _, _ = scorer.score_anatomy(case, resize_square(case.image, 256))
            assert row["lung_dice"] > 0.9, (set_name, case.name, row)  # classic: 0.76 mean
            if "heart_inside_cm" in row:
                inside.append(row["heart_inside_cm"])
    assert len(inside) == 2 and np.mean(inside) > 0.85, inside


@needs_real
def test_burnt_in_text_jpeg_still_segments():
    from ils.imageio import decode_image, resize_square
    from ilsgen.stages.anatomy_lite import region_mask

    case = _held_out_cases("shenzhen_tb", 1)[0]
    im = Image.fromarray((case.image * 255).astype(np.uint8), mode="L")
    d = ImageDraw.Draw(im)
    for y in (10, 40, 70):
        d.text((20, y), "PORTABLE AP  SUPINE  R", fill=255)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=60)
    px = decode_image(buf.getvalue()).pixels
    bits = _net().bits_at(resize_square(px, 256), px.shape)
    assert dice(region_mask(bits, "lung"), case.masks["lung"]) > 0.9


def _run_cli(argv, capsys):
    from ils.cli import main

    rc = main(argv)
    return rc, capsys.readouterr()


def test_ils_anatomy_writes_every_region_at_the_image_size_and_survives_a_bad_image(tmp_path, capsys):
    _, img = _phantom(2, 192)
    good = tmp_path / "phantom.png"
    Image.fromarray((img[:, 16:176] * 255).astype(np.uint8), mode="L").save(good)  # 192 x 160, not square
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    rc, cap = _run_cli(["anatomy", str(bad), str(good), "--out", str(out), "image.size=192"], capsys)
    assert rc == 1 and "broken.png: error:" in cap.err
    folder = out / "phantom"
    names = {p.name for p in folder.iterdir()}
    assert names == {loc.replace(" ", "_") + ".png" for loc in LOCATIONS} | {"overlay.png"}
    lung = np.asarray(Image.open(folder / "lung.png"))
    assert lung.shape == (192, 160) and set(np.unique(lung)) <= {0, 255} and lung.max() == 255
    right = np.asarray(Image.open(folder / "right_lung.png")) > 0
    zones = [np.asarray(Image.open(folder / f"right_{k.replace(' ', '_')}.png")) > 0
             for k in ("apical zone lung", "upper zone lung", "mid zone lung", "lung base")]
    assert (np.logical_or.reduce(zones) == right).all()
    assert np.asarray(Image.open(folder / "overlay.png")).shape == (192, 160, 3)
    assert not (out / "broken").exists()


@needs_real
def test_real_eval_writes_json_and_figure(tmp_path, capsys):
    rc, cap = _run_cli(["real-eval", "--data", str(REALCXR), "--out", str(tmp_path), "--limit", "2",
                        "image.size=256"], capsys)
    assert rc == 0, cap.err
    rec = json.loads((tmp_path / "real_eval.json").read_text())
    assert set(rec["per_set"]) == {"covid_radiologist", "shenzhen_tb"}
    assert "heart border" in rec["per_set"]["shenzhen_tb"]["lung_convention"]
    assert len(rec["per_image"]) == 4
    row = next(r for r in rec["per_image"] if r["set"] == "covid_radiologist" and r.get("lesions"))
    les = next(v for k, v in row["lesions"].items() if k != "report")
    assert 0 <= les["iou"] <= 1 and 0 < les["whole_lung_iou"] <= 1
    assert (tmp_path / "real_eval.png").stat().st_size > 10_000


def test_anomaly_lite_needs_no_fit_and_auto_adds_a_fitted_model():
    from ilsgen.stages.anomaly_lite_net import NetAnomaly
    from ilsgen.stages.registry import make_backend

    anat = _net()
    sts = [_phantom(s) for s in range(5, 12)]
    normal = [img for st, img in sts if st.is_normal]
    sick = next((st, img) for st, img in sts if any(k in st.masks for k in ("opacity", "consolidation", "pneumonia")))
    bits = anat.segment([sick[1]])
    auto = make_backend("anomaly", StageConfig(options={"min_fit": 1}), 256)
    assert isinstance(auto, NetAnomaly) and auto.describe()["map"] == "network lesion probability (no fit)"
    net_map = NetAnomaly(StageConfig(options={"method": "net"}), 256).anomaly_maps([sick[1]], bits)[0]
    np.testing.assert_allclose(auto.anomaly_maps([sick[1]], bits)[0], net_map)
    lung = (bits[0] & np.uint16(region_bit("lung"))) != 0
    assert net_map.dtype == np.float32 and net_map.max() <= 1 and (net_map[~lung] == 0).all()
    lesion = np.logical_or.reduce([m for k in ("opacity", "consolidation", "pneumonia") for m in sick[0].masks.get(k, [])])
    assert net_map[lesion & lung].mean() > 2 * net_map[~lesion & lung].mean()  # the map carries the lesion
    if normal:
        auto.fit(normal, anat.segment(normal))
        assert "max(" in auto.describe()["map"]
        both = auto.anomaly_maps([sick[1]], bits)[0]
        assert (both >= net_map - 1e-6).all()
    with pytest.raises(ValueError, match="method"):
        NetAnomaly(StageConfig(options={"method": "nope"}), 256)
