"""Gating: anomaly and detect run only for studies with a finding that needs a lesion mask."""

from __future__ import annotations

import pytest

from ils.cli import main as ils_main
from ils.config import load_config
from ils.schema import FINDING, MASK, PAIR, STUDY_STATUS
from ils.store import Store
from ilsgen.gating import needs_mask

SIZE = 256


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same synthetic phantoms generated with gating on and off (plain engine)."""
    from ilsgen.pipeline import run_generation

    root = tmp_path_factory.mktemp("gating")
    store = [f"store.uri={root}", f"image.size={SIZE}"]
    assert ils_main(["sample", "--n", "20", "--seed", "3", "--out", "ph", "sample.size=512", "sample.normal_fraction=0.4", *store]) == 0
    out = {}
    for gate in ("true", "false"):
        cfg = load_config(None, [*store, "gen.report.batch_size=4", f"gen.gate_mask_stages={gate}"])
        out[gate] = run_generation(cfg, "ph/manifest.parquet", f"run_{gate}", engine="plain")
    return Store(str(root)), out


def test_needs_mask_rules():
    assert needs_mask([{"lesion": "effusion", "present": True, "certainty": "tentative"}])
    assert not needs_mask([{"lesion": "cardiomegaly", "present": True}, {"lesion": "edema", "present": False}])
    assert not needs_mask([])


def test_pairs_and_masks_identical_with_gating_on_and_off(runs):
    store, summaries = runs
    on, off = store.child("run_true"), store.child("run_false")

    def pairs(run):
        return sorted((p["pair_id"], p["instruction"], p["answer"], p["seg_mask_path"] or "")
                      for p in run.read_parquet("pairs", schema=PAIR).to_pylist())

    assert pairs(on) == pairs(off) and pairs(on)
    masks_on = sorted(m["mask_uri"] for m in on.read_parquet("mask_index", schema=MASK).to_pylist())
    assert masks_on == sorted(m["mask_uri"] for m in off.read_parquet("mask_index", schema=MASK).to_pylist())
    assert masks_on, "the phantoms gave no mask"
    for uri in masks_on:
        assert on.read_bytes(uri) == off.read_bytes(uri), uri
    assert summaries["true"]["studies"] == summaries["false"]["studies"]


def test_summary_counts_the_studies_that_skipped(runs):
    store, summaries = runs
    run = store.child("run_true")
    findings = run.read_parquet("findings", schema=FINDING).to_pylist()
    status = run.read_parquet("status", schema=STUDY_STATUS).to_pylist()
    by_study: dict[str, list] = {r["study_id"]: [] for r in status if r["status"] == "ok"}
    for f in findings:
        by_study[f["study_id"]].append(f)
    expected = sum(not needs_mask(fs) for fs in by_study.values())
    assert 0 < expected < len(by_study)
    assert summaries["true"]["skipped_stages"] == {"anomaly": expected, "detect": expected}
    assert summaries["false"]["skipped_stages"] == {}
    skipped = {r["study_id"] for r in status if r["skipped_stages"]}
    # a skipped study has no time in those stages; the others do
    for r in status:
        stages = dict(r["stage_seconds"])
        assert ("anomaly" in stages) == (r["study_id"] not in skipped)
