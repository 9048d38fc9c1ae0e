"""The offline rules report backend: sections, synonyms, negation, uncertainty, locations, merging."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from ils.config import load_config
from ils.schema import FINDING, conform
from ils.vocab import LESIONS
from ilsgen.report import make_report_backend
from ilsgen.report.locations import find_locations
from ilsgen.report.sections import numbered_sentences, split_sections


@pytest.fixture(scope="module")
def rules():
    return make_report_backend(load_config().gen.report)


def facts(backend, text: str) -> set[tuple]:
    return {(r["lesion"], r["present"], r["certainty"], tuple(r["locations"])) for r in backend.structure("s", text)}


@pytest.mark.parametrize("text, expected", [
    ("Moderate cardiomegaly.", {("cardiomegaly", True, "definite", ("heart",))}),
    ("The cardiac silhouette is mildly enlarged.", {("cardiomegaly", True, "definite", ("heart",))}),
    ("Heart size is enlarged.", {("cardiomegaly", True, "definite", ("heart",))}),
    ("The heart is likely mildly enlarged.", {("cardiomegaly", True, "tentative", ("heart",))}),  # hedge inside the phrase
    ("Heart size is normal.", {("cardiomegaly", False, None, ("heart",))}),
    ("Small left pleural effusion.", {("effusion", True, "definite", ("left lung",))}),
    ("Bilateral effusions.", {("effusion", True, "definite", ("lung",))}),
    ("Blunting of the right costophrenic angle.", {("effusion", True, "definite", ("right lung base",))}),
    ("Small pericardial effusion.", set()),
    ("Right lower lobe consolidation.", {("consolidation", True, "definite", ("right lung base",))}),
    ("Airspace disease in the right middle lobe.", {("consolidation", True, "definite", ("right mid zone lung",))}),
    ("Left upper lobe pneumonia.", {("pneumonia", True, "definite", ("left upper zone lung",))}),
    ("Findings concerning for pneumonia.", {("pneumonia", True, "tentative", ())}),
    ("Acute infectious process in the left lower lobe.", {("pneumonia", True, "tentative", ("left lung base",))}),  # lexicon.py
    ("Bibasilar atelectasis.", {("atelectasis", True, "definite", ("right lung base", "left lung base"))}),
    ("Mild volume loss at the left base.", {("atelectasis", True, "definite", ("left lung base",))}),
    ("Mild pulmonary vascular congestion.", set()),  # congestion is not edema (lexicon.py)
    ("Vascular congestion with mild interstitial edema.", {("edema", True, "definite", ())}),
    ("Perihilar interstitial edema.", {("edema", True, "definite", ("right mid zone lung", "left mid zone lung"))}),
    ("Subcutaneous edema in the chest wall.", set()),
    ("Retrocardiac opacity.", {("opacity", True, "definite", ("left lung base",))}),
    ("Lingular opacification.", {("opacity", True, "definite", ("left mid zone lung",))}),
    ("Opacities in both upper lobes.", {("opacity", True, "definite", ("right upper zone lung", "left upper zone lung"))}),
    ("Left apical density.", {("opacity", True, "definite", ("left apical zone lung",))}),
])
def test_lesions_synonyms_locations(rules, text, expected):
    assert facts(rules, "FINDINGS: " + text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax.", set()),
    ("No pleural effusion or pneumothorax.", {("effusion", False, None, ())}),
    ("No focal consolidation, effusion, or pneumothorax.", {("consolidation", False, None, ()), ("effusion", False, None, ())}),
    ("There is no evidence of pulmonary edema.", {("edema", False, None, ())}),
    ("Previously seen left effusion has resolved.", {("effusion", False, None, ("left lung",))}),
    ("Interval resolution of the right lower lobe pneumonia.", {("pneumonia", False, None, ("right lung base",))}),
    ("No pneumothorax, but there is a small right effusion.", {("effusion", True, "definite", ("right lung",))}),
    ("Improved right lower lobe pneumonia.", {("pneumonia", True, "definite", ("right lung base",))}),
    ("Pneumonia cannot be excluded.", {("pneumonia", True, "tentative", ())}),
    ("Possible early pneumonia at the left base.", {("pneumonia", True, "tentative", ("left lung base",))}),
    ("History of pneumonia.", set()),
    ("Left basilar opacity likely reflects atelectasis.",
     {("opacity", True, "definite", ("left lung base",)), ("atelectasis", True, "tentative", ("left lung base",))}),
    ("Retrocardiac opacity may represent atelectasis or pneumonia.",
     {("opacity", True, "definite", ("left lung base",)), ("atelectasis", True, "tentative", ("left lung base",)),
      ("pneumonia", True, "tentative", ("left lung base",))}),
    ("Right upper lobe opacity and left lower lobe atelectasis.",
     {("opacity", True, "definite", ("right upper zone lung",)), ("atelectasis", True, "definite", ("left lung base",))}),
])
def test_negation_uncertainty(rules, text, expected):
    assert facts(rules, "FINDINGS: " + text) == expected


def test_sections_and_merging(rules):
    report = ("EXAMINATION: CHEST (PA AND LAT)\nINDICATION: Rule out pneumonia.\n\n"
              "findings :  Small right pleural effusion.  Heart size is normal.\n\n"
              "IMPRESSION:\n1. Right pleural effusion.\n2. No pneumonia.")
    rows = rules.structure("s9", report)
    conform(rows, FINDING)
    got = {(r["lesion"], r["present"], tuple(r["locations"]), r["sent_idx"]) for r in rows}
    # one row per mention; the impression's repeat takes the findings' location
    assert got == {("effusion", True, ("right lung",), 0), ("cardiomegaly", False, ("heart",), 1),
                   ("effusion", True, ("right lung",), 2), ("pneumonia", False, (), 3)}
    assert [r["finding_idx"] for r in rows] == list(range(len(rows)))
    assert all(r["source"] == "rules" and r["study_id"] == "s9" for r in rows)
    assert rows[0]["sentence"] == "Small right pleural effusion."


def test_section_fallbacks():
    assert [s.name for s in split_sections("FINDINGS: a.\nIMPRESSION: b.")] == ["findings", "impression"]
    assert [s.name for s in split_sections("Impression- Normal chest.")] == ["impression"]
    assert split_sections("Old notes.\n\nMild cardiomegaly. No effusion.")[0].text == "Mild cardiomegaly. No effusion."
    assert split_sections("") == [] and split_sections("FINDINGS:\n\nIMPRESSION:") == []
    sents = [s for _, _, s in numbered_sentences("FINDINGS: A 1.5 cm nodule vs. scar. Dr. Smith was called. Small effusion")]
    assert sents == ["A 1.5 cm nodule vs. scar.", "Dr. Smith was called.", "Small effusion"]


@pytest.mark.parametrize("text", ["", "   \n\n ", "%%%% ### 12345", "\x00\x01 garbage \ufffd\ufffd", "a" * 5000,
                                  "FINDINGS:", "No acute cardiopulmonary process."])
def test_empty_and_garbage(rules, text):
    rows = rules.structure("s", text)
    assert rows == []
    conform(rows, FINDING)


def test_bad_type_is_a_clear_error(rules):
    with pytest.raises(TypeError):
        rules.mentions(None)  # type: ignore[arg-type]


def test_picklable_and_all_lesions_reachable(rules):
    b = pickle.loads(pickle.dumps(rules))
    text = ("FINDINGS: Cardiomegaly. Pneumonia. Atelectasis. Opacity. Consolidation. Pulmonary edema. Pleural effusion.")
    assert {r["lesion"] for r in b.structure("s", text)} == set(LESIONS)


def test_location_phrases():
    def locs(t):
        return [l for _, _, ls in find_locations(t) for l in ls]
    assert locs("right lower lobe") == ["right lung base"]
    assert locs("bilateral lower lobes") == ["right lung base", "left lung base"]
    assert locs("left greater than right basilar") == ["right lung base", "left lung base"]
    assert locs("right middle lobe") == ["right mid zone lung"]
    assert locs("at the apices") == ["right apical zone lung", "left apical zone lung"]
    assert locs("the lungs are clear") == []


RADLABELS = Path(__import__("sysconfig").get_paths()["purelib"]) / "radlabels" / "samples"
_MAP = {"atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "pleural_effusion": "effusion",
        "pulmonary_edema": "edema", "consolidation": "consolidation", "pneumonia": "pneumonia", "lung_opacity": "opacity"}


def radlabels_agreement(backend, limit: int | None = None) -> dict[str, float]:
    """Agreement with radlabels' report-level labels (synthetic MIMIC-style reports), mapped lesions only."""
    labels = json.loads((RADLABELS / "synthetic_labels.json").read_text())
    tp = fp = fn = neg_ok = neg_n = 0
    for name in sorted(labels)[:limit]:
        text = (RADLABELS / "synthetic_reports" / f"{name}.txt").read_text()
        ours = {r["lesion"] for r in backend.structure(name, text) if r["present"]}
        theirs = {_MAP[k] for k, v in labels[name].items() if k in _MAP and v != "definitely absent"}
        absent = {_MAP[k] for k, v in labels[name].items() if k in _MAP and v == "definitely absent"}
        tp += len(ours & theirs)
        fp += len(ours - theirs)
        fn += len(theirs - ours)
        neg_n += len(absent)
        neg_ok += len(absent - ours)
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "negative_agreement": neg_ok / max(neg_n, 1)}


@pytest.mark.skipif(not (RADLABELS / "synthetic_labels.json").exists(), reason="radlabels package not installed")
def test_radlabels_agreement(rules):
    agree = radlabels_agreement(rules, limit=300)
    print("radlabels agreement (300 reports):", agree)
    # radlabels labels the whole report (also history/indication) and counts hedged mentions as
    # present; we read findings + impression only. Floors sit below the measured values.
    assert agree["precision"] >= 0.8 and agree["negative_agreement"] >= 0.95 and agree["recall"] >= 0.85


def test_phantom_finding_f1(rules):
    """Rules vs phantom truth (synthetic reports from ils.phantom): strict finding F1 and location accuracy."""
    phantom = pytest.importorskip("ils.phantom.sample")
    from ils.config import SampleConfig
    from ilsgen.quality import finding_scores, location_accuracy

    pred, truth = [], []
    for i in range(150):
        study = phantom.generate_study(7, i, SampleConfig(size=64), truth_size=64)
        pred += rules.structure(study.study_id, study.report)
        truth += study.findings
    scores = finding_scores(pred, truth)["strict"]
    loc = location_accuracy(pred, truth)
    print("phantom (150 reports): strict F1", scores["f1"], "location accuracy", loc)
    assert scores["f1"] >= 0.95 and loc >= 0.75
