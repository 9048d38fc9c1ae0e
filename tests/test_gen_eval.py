"""`ils gen-eval` end to end on a tiny phantom run (plain engine, 6 studies at 128 px)."""

from __future__ import annotations

import json

import pytest

from ils.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("genq")
    over = [f"store.uri={root}", "sample.size=256", "image.size=128"]
    assert main(["sample", "--n", "6", "--seed", "3", "--out", f"{root}/phantoms", *over]) == 0
    assert main(["gen", "--engine", "plain", "--input", f"{root}/phantoms/manifest.parquet", "--out", f"{root}/run", *over]) == 0
    return root, over


def test_gen_eval_writes_json_and_table(tiny_run, capsys):
    root, over = tiny_run
    assert main(["gen-eval", "--run", f"{root}/run", "--truth", f"{root}/phantoms/truth", *over]) == 0
    text = capsys.readouterr().out
    assert "mask IoU mean" in text and "negatives truly negative" in text
    res = json.loads((root / "run" / "quality.json").read_text())
    assert res["n_studies"] == 6
    assert set(res) >= {"findings", "location_accuracy", "mask_iou", "negatives", "pairs"}
    assert res["negatives"]["n"] > 0 and 0.0 <= res["negatives"]["correct_fraction"] <= 1.0
    for v in res["mask_iou"]["per_lesion"].values():
        assert 0.0 <= v <= 1.0


def test_gen_eval_custom_out(tiny_run):
    root, over = tiny_run
    out = root / "elsewhere" / "q.json"
    assert main(["gen-eval", "--run", f"{root}/run", "--truth", f"{root}/phantoms/truth", "--out", str(out), *over]) == 0
    assert json.loads(out.read_text())["findings"]["strict"]["n_truth"] > 0
