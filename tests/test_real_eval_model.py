"""The model section of `ils real-eval` on a tiny SYNTHETIC realcxr-layout folder.

Numbers are checked against an independent computation with a stub segmenter that returns known
masks; the CLI runs once with a tiny randomly initialised checkpoint (mechanics only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ils.config import load_config
from rosalia.contract import SegResult

H, W = 40, 48
COLS = ["name", "set", "lung", "lung_left", "lung_right", "ground_glass_opacity", "consolidation"]


def _rect(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def make_folder(root: Path) -> dict:
    """Set `covid_radiologist` (7 images, per-side lungs, lesion outlines on some) and
    `shenzhen_tb` (5 images, one lung mask, no lesion outline). Image k of a set has pixel
    (0, 0) = 10 * k + 5 (the stub reads it back). Returns the masks used, by (set, name)."""
    rows, truth = [], {}
    right, left = _rect(5, 35, 3, 22), _rect(5, 35, 26, 45)  # patient's right = image left
    for s, n in (("covid_radiologist", 7), ("shenzhen_tb", 5)):
        for k in range(n):
            name = f"{s[:3]}{k}"
            img = np.full((H, W), 80, np.uint8)
            img[0, 0] = 10 * k + 5
            _png(root / s / "images" / f"{name}.png", img)
            masks = {}
            if s == "covid_radiologist":
                masks["lung_right"], masks["lung_left"] = right, left
                masks["lung"] = right | left
                if k != 1:  # image 1: no opacity outline
                    masks["ground_glass_opacity"] = _rect(10, 20 + k, 28, 40)  # left lung only
                if k in (0, 3, 4):
                    masks["consolidation"] = _rect(12, 30, 5, 12 + k)  # right lung only
            else:
                masks["lung"] = right | left
            for m, arr in masks.items():
                _png(root / s / "masks" / m / f"{name}.png", arr * 255)
            rows.append({"name": name, "set": s, **{c: (1 if c in masks else "") for c in COLS[2:]}})
            truth[(s, name)] = masks
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        w.writerows(rows)
    return truth


PRED = _rect(8, 25, 25, 42)  # what the stub answers when it says present


class Stub:
    """Opacity: present on every image (mask PRED). Consolidation: present on even k only."""

    model_id = "stub"
    threshold = 0.5
    cleanup = 0.0

    def __init__(self):
        self.asked: list[str] = []

    def segment(self, images, instructions):
        out = []
        for img, text in zip(images, instructions):
            self.asked.append(text)
            k = int(round((float(img[0, 0]) * 255 - 5) / 10))
            present = "opacity" in text or k % 2 == 0
            mask = PRED.copy() if present else np.zeros(img.shape, bool)
            out.append(SegResult(mask=mask, answer="[SEG]", present=present, confidence=0.9 if present else 0.1))
        return out


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("realcxr")
    return root, make_folder(root)


def test_model_section_matches_independent_computation(folder):
    from ilsgen.real_eval import evaluate

    root, truth = folder
    cfg = load_config(None, [])
    stub = Stub()
    record, pics = evaluate(root, cfg, anatomy=False, segmenter=stub)
    assert "Segment the opacity." in stub.asked and "Segment the opacity in the left lung." in stub.asked
    assert "Segment the consolidation in the right lung." in stub.asked
    for s, n in (("covid_radiologist", 7), ("shenzhen_tb", 5)):
        for group, keep in (("all", range(n)), ("held_out", [k for k in range(n) if k % 5 == 4])):
            names = [f"{s[:3]}{k}" for k in keep]
            m = record["per_set"][s][group]["model"]
            assert m["n"] == len(names)
            for lesion, mname in (("opacity", "ground_glass_opacity"), ("consolidation", "consolidation")):
                pos = [x for x in names if mname in truth[(s, x)]]
                neg = [x for x in names if mname not in truth[(s, x)]]
                said = {x: lesion == "opacity" or int(x[3:]) % 2 == 0 for x in names}
                blk = m[lesion]
                assert blk["n_outlined"] == len(pos) and blk["n_not_outlined"] == len(neg)
                if pos:
                    ious = [_iou(PRED, truth[(s, x)][mname]) if said[x] else 0.0 for x in pos]
                    assert blk["gIoU"] == pytest.approx(np.mean(ious), abs=1e-4)
                    inter = sum((PRED & truth[(s, x)][mname]).sum() if said[x] else 0 for x in pos)
                    union = sum((PRED | truth[(s, x)][mname]).sum() if said[x] else truth[(s, x)][mname].sum() for x in pos)
                    assert blk["cIoU"] == pytest.approx(inter / union, abs=1e-4)
                    lung = truth[(s, pos[0])]["lung"]
                    assert blk["whole_lung_gIoU"] == pytest.approx(np.mean([_iou(lung, truth[(s, x)][mname]) for x in pos]), abs=1e-4)
                    assert blk["present_when_outlined"] == pytest.approx(np.mean([said[x] for x in pos]), abs=1e-4)
                else:
                    assert "gIoU" not in blk
                if neg:
                    assert blk["absent_when_not_outlined"] == pytest.approx(np.mean([not said[x] for x in neg]), abs=1e-4)
    # held_out is position % 5 == 4 in each set, whatever the image is called
    assert [r["image"] for r in record["per_image"] if r["model"]["held_out"]] == ["cov4", "she4"]
    assert "not outlined" in record["per_set"]["shenzhen_tb"]["model_note"]
    assert record["model"]["targets"]["consolidation_absence"] == 0.8
    # the figure takes model-only material
    from ilsgen.real_eval_figure import figure

    figure(record, pics, root / "fig.png")
    assert (root / "fig.png").stat().st_size > 1000


def test_side_question_scored_against_the_same_outline(folder):
    from ilsgen.real_eval import evaluate

    root, truth = folder
    record, _ = evaluate(root, load_config(None, []), sets=("covid_radiologist",), anatomy=False, segmenter=Stub())
    row = next(r for r in record["per_image"] if r["image"] == "cov3")
    side = row["model"]["consolidation_side"]
    assert side["instruction"] == "Segment the consolidation in the right lung."
    assert side["iou"] == pytest.approx(0.0) and not side["present"]  # k = 3: the stub says absent
    opa = row["model"]["opacity_side"]
    assert opa["iou"] == pytest.approx(_iou(PRED, truth[("covid_radiologist", "cov3")]["ground_glass_opacity"]))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from rosalia.model import build_model, save_checkpoint

    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32", "model.max_new_tokens=4"])
    torch.manual_seed(0)
    return save_checkpoint(build_model(cfg.model).eval(), str(tmp_path_factory.mktemp("ck") / "ck"))


def test_cli_model_only_with_a_tiny_random_checkpoint(folder, tiny_checkpoint, tmp_path, capsys):
    from ils.cli import main

    root, _ = folder
    out = tmp_path / "out"
    code = main(["real-eval", "--data", str(root), "--out", str(out), "--checkpoint", tiny_checkpoint, "--model-only",
                 f"store.uri={tmp_path / 'store'}", "model.max_new_tokens=4", "eval.batch_size=8"])
    assert code == 0
    rec = json.loads((out / "real_eval.json").read_text())
    assert (out / "real_eval.png").is_file()
    assert rec["model"]["model_id"].startswith("rosalia-tiny:")
    assert "anatomy" not in rec["per_set"]["covid_radiologist"]["all"]
    for r in rec["per_image"]:  # every answer is an answer: a mask's IoU is in [0, 1], an absent one scores 0
        o = r["model"]["opacity"]
        if o["outlined"]:
            assert 0.0 <= o["iou"] <= 1.0 and (o["present"] or o["iou"] == 0.0)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "covid_radiologist/held_out" in printed["model"]


def test_cli_errors(folder, tmp_path, capsys):
    from ils.cli import main

    root, _ = folder
    store = f"store.uri={tmp_path / 'store'}"
    assert main(["real-eval", "--data", str(root), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "nope"), store]) == 2
    assert "not a ROSALIA checkpoint" in capsys.readouterr().err
    assert main(["real-eval", "--data", str(root), "--out", str(tmp_path / "o"), "--model-only", store]) == 2
    assert "--model-only needs --checkpoint" in capsys.readouterr().err
    assert main(["real-eval", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--checkpoint", "x", store]) == 2
    assert "no index.csv" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_demo_summary_shows_the_model_held_out_first(folder):
    from ils.demo_summary import model_lines
    from ilsgen.real_eval import evaluate

    root, _ = folder
    record, _ = evaluate(root, load_config(None, []), anatomy=False, segmenter=Stub())
    lines = model_lines(record)
    assert [ln.split(" [")[1].split(",")[0] for ln in lines] == ["held out", "held out", "all", "all"]
    held = record["per_set"]["covid_radiologist"]["held_out"]["model"]
    assert lines[0].startswith("covid_radiologist [held out, 1 images]")
    assert f"opacity gIoU {held['opacity']['gIoU']:.3f} (target 0.40" in lines[0]
    assert "TB not outlined" in lines[1] and "absent when no consolidation outline 0.0 %" in lines[1]  # she4: k even
    assert model_lines({"per_set": {}}) == [] and model_lines(None) == []


def test_demo_final_summary_shows_model_real_figures_and_label_ceiling(folder, tmp_path):
    from ils.demo_summary import Outputs, final_summary, stage_summary
    from ils.label_ceiling import compare
    from ils.store import Store
    from ilsgen.real_eval import evaluate

    root, _ = folder
    store = Store(str(tmp_path))
    record, _ = evaluate(root, load_config(None, []), anatomy=False, segmenter=Stub())
    store.write_text("real-eval-model/real_eval.json", json.dumps(record))
    gated = {"gIoU": 0.5, "cIoU": 0.6, "N-Acc": 0.9}
    report = {"overall": {"gated": gated, "text_accuracy": 1.0, "n": 3}, "n_samples": 3, "per_type": {}}
    report["comparison"] = compare(report, {"overall": {"gIoU": 0.72, "cIoU": 0.74, "N-Acc": 0.99}, "per_lesion": {}})
    store.write_text("eval-truth/report.json", json.dumps(report))
    out = Outputs(store=store, run="gen", checkpoint="ck", eval_out="eval", truth_eval_out="eval-truth")
    text = final_summary(out, load_config(None, []), None, str(tmp_path / "logs"), 1.0)
    assert "ilsgen labels, truth pairs  gIoU 72.0 %, cIoU 74.0 %, N-Acc 99.0 % (the label ceiling; limits: the model" in text
    i = text.index("figures (real radiographs, development split; the model")
    assert text.index("covid_radiologist [held out", i) < text.index("covid_radiologist [all", i)
    assert any("ilsgen labels (ceiling)" in ln for ln in stage_summary("eval-truth", out))
    assert stage_summary("real-eval-model", out)[0].startswith("covid_radiologist [held out")


def test_demo_final_summary_shows_truth_on_real_bases_apart(tmp_path):
    """With studies on real bases the demo scores their truth pairs apart from the procedural
    yardstick; the summary shows both, each with its own label ceiling."""
    from ils.demo_summary import Outputs, final_summary, stage_summary
    from ils.label_ceiling import compare
    from ils.store import Store

    store = Store(str(tmp_path))
    for rel, model, labels in (("eval-truth", 0.6, 0.72), ("eval-truth-real", 0.2, 0.3)):
        report = {"overall": {"gated": {"gIoU": model, "cIoU": model, "N-Acc": 0.9}, "text_accuracy": 1.0, "n": 3},
                  "n_samples": 3, "per_type": {}}
        report["comparison"] = compare(report, {"overall": {"gIoU": labels, "cIoU": labels, "N-Acc": 0.99}, "per_lesion": {}})
        store.write_text(f"{rel}/report.json", json.dumps(report))
    out = Outputs(store=store, run="gen", checkpoint="ck", eval_out="eval", truth_eval_out="eval-truth",
                  truth_real_eval_out="eval-truth-real")
    text = final_summary(out, load_config(None, []), None, str(tmp_path / "logs"), 1.0)
    assert "model, truth on real bases  gIoU 20.0 %" in text
    assert "ilsgen labels, real bases   gIoU 30.0 %" in text and "ilsgen labels, truth pairs  gIoU 72.0 %" in text
    assert stage_summary("eval-truth-real", out)[0] == "model on the ground-truth pairs of the studies on real radiographs:"
    assert stage_summary("eval-truth", out)[0] == "model on the phantoms' ground-truth pairs:"
