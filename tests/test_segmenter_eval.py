"""Segmenter (batched inference), metrics and `ils eval` on a tiny SYNTHETIC run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from ils.config import load_config
from ils.store import Store
from rosalia.data import PairDataset, synthetic_run
from rosalia.metrics import group_report, inter_union, text_correct
from rosalia.model import build_model, save_checkpoint
from rosalia.segmenter import Segmenter, SegmenterError, clean_answer, count_components, remove_small_components


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32", "model.max_new_tokens=4"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    ck = save_checkpoint(model, str(root / "ck"))
    run = Store(str(root / "run"))
    synthetic_run(run, 5, seed=2, size=64)
    return cfg, model, ck, run, root


def test_segmenter_batched_matches_single(setup):
    cfg, model, ck, run, _ = setup
    seg = Segmenter(ck, cfg.model, device="cpu", batch_size=4)
    assert seg.model_id.startswith("rosalia-tiny:")
    rng = np.random.default_rng(0)
    images = [rng.random((64, 64)).astype(np.float32), rng.random((80, 48)).astype(np.float32), rng.random((64, 64)).astype(np.float32)]
    instr = ["Segment the effusion.", "Segment the edema in the left lung.", "Segment the opacity in the lung and predict its type."]
    many = seg.segment(images, instr)
    assert [r.mask.shape for r in many] == [(64, 64), (80, 48), (64, 64)]
    for k in range(3):
        one = seg.segment([images[k]], [instr[k]])[0]
        assert one.answer == many[k].answer and abs(one.confidence - many[k].confidence) < 1e-4
        assert (one.mask == many[k].mask).mean() > 0.99
        assert one.answer.startswith("[SEG]") and 0 <= one.confidence <= 1
        assert one.present == (one.confidence >= 0.5 and one.mask.any()) and one.present == one.mask.any()
        assert set(one.timings) >= {"generate_s", "mask_s"}
    with pytest.raises(SegmenterError):
        seg.segment([images[0]], [])
    with pytest.raises(SegmenterError):
        seg.segment([np.zeros((3, 4, 5))], ["Segment the edema."])


def test_segmenter_encodes_a_repeated_image_once(setup, monkeypatch):
    cfg, model, ck, run, _ = setup
    seg = Segmenter(ck, cfg.model, device="cpu", batch_size=8)
    rng = np.random.default_rng(1)
    a, b = rng.random((64, 64)).astype(np.float32), rng.random((80, 48)).astype(np.float32)
    instr = ["Segment the effusion.", "Segment the edema in the left lung.", "Segment the effusion.", "Segment the opacity."]
    encoded: list[int] = []
    real = seg.model.image_embeddings
    monkeypatch.setattr(seg.model, "image_embeddings", lambda x: encoded.append(x.shape[0]) or real(x))
    shared = seg.segment([a, b, a, a], instr)
    assert encoded == [2]  # two distinct arrays, one SAM pass each
    copies = seg.segment([a.copy(), b.copy(), a.copy(), a.copy()], instr)
    assert encoded == [2, 4]
    assert [r.mask.shape for r in shared] == [(64, 64), (80, 48), (64, 64), (64, 64)]
    for x, y in zip(shared, copies):
        assert x.answer == y.answer and abs(x.confidence - y.confidence) < 1e-5 and (x.mask == y.mask).all()


def test_random_segmenter_warns(caplog):
    cfg = load_config(None, ["model.image_size=64", "model.clip_size=32", "model.max_new_tokens=2"])
    # at_level on the module's logger: an earlier test (or library) may have raised the root level
    with caplog.at_level(logging.WARNING, logger="rosalia.segmenter"):
        s = Segmenter(None, cfg.model, device="cpu")
    assert s.model_id.endswith(":random") and "RANDOMLY" in caplog.text


def test_cleanup_and_text_helpers():
    m = np.zeros((50, 50), bool)
    m[5:25, 5:25] = True
    m[40, 40] = True
    assert count_components(m) == 2
    c = remove_small_components(m, 0.01)
    assert count_components(c) == 1 and c[10, 10] and not c[40, 40]
    assert clean_answer("There is no edema in the left lung .") == "[SEG] There is no edema in the left lung."
    instr = "Segment the edema in the left lung."
    assert text_correct(instr, "[SEG]", "[SEG]")
    assert not text_correct(instr, "[SEG] There is no edema in the left lung.", "[SEG]")
    assert not text_correct(instr, "[SEG] gibberish", "[SEG]")
    assert inter_union(m, c) == (400, 401)


def test_metrics_single_pixel_is_a_miss():
    recs = []
    for pres, inter, union, empty in [(True, 5, 10, False), (True, 10, 10, False), (False, 0, 1, False), (False, 0, 0, True)]:
        recs.append(dict(type="basic", target="edema", presence=pres, presence_pred=pres, text_correct=True,
                         gated_inter=inter, gated_union=union, gated_empty=empty,
                         ungated_inter=inter, ungated_union=union, ungated_empty=empty))
    rep = group_report(recs)["overall"]["gated"]
    assert rep["gIoU"] == pytest.approx(0.75) and rep["cIoU"] == pytest.approx(15 / 20) and rep["N-Acc"] == 0.5


def test_ils_eval_cli(setup, capsys):
    from ils.cli import main

    cfg, model, ck, run, root = setup
    out = root / "evout"
    rc = main(["eval", "--checkpoint", ck, "--data", run.root_uri, "--out", str(out), "--split", "all",
               "model.image_size=64", "eval.batch_size=8", "model.max_new_tokens=4"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    ds = PairDataset.from_run(run, None, 64, 64)
    assert rep["n_samples"] == len(ds)
    o = rep["overall"]
    assert o["gated"]["n_pos"] == int(ds.presence.sum()) and o["gated"]["n_neg"] == int((~ds.presence).sum())
    assert 0 <= o["ungated"]["gIoU"] <= 1 and o["text_accuracy"] is not None
    agr = rep["answer_agreement"]
    assert agr["n"] == len(ds) and 0 <= agr["raw"] <= 1 and agr["decided"] == 1.0
    para = rep["paraphrase"]  # template and paraphrase scores of the same pairs, side by side
    assert para["n"] == sum(bool(r["paraphrases"]) for r in ds.rows) > 0
    assert para["template"]["overall"]["n"] == para["paraphrase"]["overall"]["n"] == para["n"]
    assert set(rep["per_lesion"]) <= {"cardiomegaly", "pneumonia", "atelectasis", "opacity", "consolidation", "edema", "effusion"}
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "gIoU" in printed and "as template / as paraphrase" in printed and "raw generation" in printed
    assert main(["eval", "--checkpoint", str(root / "nope"), "--data", run.root_uri, "--out", str(out)]) == 2


@pytest.mark.parametrize("forced_present", [True, False])
def test_segmenter_reconciles_a_model_made_to_disagree(setup, monkeypatch, forced_present):
    """The presence head and the masks are forced one way, the generated text the other way."""
    cfg, model, ck, run, _ = setup
    seg = Segmenter(ck, cfg.model, device="cpu", batch_size=4)
    m = seg.model
    sign = 1.0 if forced_present else -1.0
    monkeypatch.setattr(m, "presence_logits", lambda *a, **k: torch.full((a[0].shape[0],), 20.0 * sign))
    monkeypatch.setattr(m, "upscale", lambda low, sizes, shape: torch.full((1, *shape), sign))
    contrary = "There is no effusion in the left lung base." if forced_present else ""
    monkeypatch.setattr(m.tokenizer, "batch_decode", lambda seq, **k: [contrary] * len(seq))
    instr = "Segment the effusion in the left lung base."
    r = seg.segment([np.random.default_rng(0).random((64, 64)).astype(np.float32)], [instr])[0]
    assert r.present is forced_present and bool(r.mask.any()) is forced_present
    assert r.agreed is False and r.raw_answer == clean_answer(contrary)
    assert r.answer == ("[SEG]" if forced_present else "[SEG] There is no effusion in the left lung base.")
    assert r.message == ("Pleural effusion found in the left lung base (confidence 1.00)." if forced_present
                         else "No pleural effusion found in the left lung base.")
    assert r.parsed["presence"] is forced_present


def test_paraphrased_pairs_sample_paraphrases(setup):
    from rosalia.paraphrased import ParaphrasedPairs, with_paraphrases

    cfg, model, ck, run, _ = setup
    ds = PairDataset.from_run(run, None, 64, 64)
    torch.manual_seed(0)
    sampled = ParaphrasedPairs(ds, 0.5)
    asked = [sampled[i]["instruction"] for i in range(len(ds))]
    para = [i for i, r in enumerate(ds.rows) if asked[i] != r["instruction"]]
    assert 0 < len(para) < len(ds) and all(asked[i] in ds.rows[i]["paraphrases"] for i in para)
    assert all(sampled[i]["row"]["instruction"] == ds.rows[i]["instruction"] for i in range(len(ds)))  # scored on the template
    first = with_paraphrases(ds)
    assert all(first[i]["instruction"] == first.rows[i]["paraphrases"][0] for i in range(len(first)))
    with pytest.raises(ValueError):
        ParaphrasedPairs(ds, 1.5)
