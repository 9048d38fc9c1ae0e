"""ilsgen end to end on local Ray: phantoms -> pairs, broken studies, resume after a kill, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from ils.cli import main as ils_main
from ils.config import load_config
from ils.schema import PAIR, STUDY, STUDY_STATUS
from ils.store import Store

SIZE = 256  # working size for speed; the pipeline is size-agnostic


def _cfg(store_uri: str, *extra: str):
    return load_config(None, [f"store.uri={store_uri}", f"image.size={SIZE}", "gen.report.batch_size=4", *extra])


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """24 synthetic phantom studies plus a few broken ones appended to the manifest."""
    root = tmp_path_factory.mktemp("store")
    assert ils_main(["sample", "--n", "24", "--seed", "7", "--out", str(root / "phantoms"), f"store.uri={root}", "sample.size=512", f"image.size={SIZE}"]) == 0
    store = Store(str(root))
    manifest = store.read_parquet("phantoms/manifest.parquet").to_pylist()
    store.write_bytes("phantoms/images/broken_empty.dcm", b"")
    good = store.read_bytes("phantoms/" + manifest[0]["image_uri"]) if not manifest[0]["image_uri"].startswith("/") else Path(manifest[0]["image_uri"]).read_bytes()
    store.write_bytes("phantoms/images/broken_truncated.dcm", good[: len(good) // 3])
    broken = [
        {"study_id": "90000001", "image_uri": "images/broken_empty.dcm", "report": "FINDINGS: No effusion."},
        {"study_id": "90000002", "image_uri": "images/broken_truncated.dcm", "report": "FINDINGS: Left basilar atelectasis."},
        {"study_id": "90000003", "image_uri": manifest[1]["image_uri"], "report": "   "},
        {"study_id": "90000004", "image_uri": "images/does_not_exist.dcm", "report": "IMPRESSION: Cardiomegaly."},
    ]
    table = pa.Table.from_pylist(manifest + broken, schema=STUDY)
    store.write_parquet("phantoms/manifest_with_broken.parquet", table)
    return root, len(manifest), broken


def _status(run: Store) -> list[dict]:
    return run.read_parquet("status", schema=STUDY_STATUS).to_pylist()


def test_gen_ray_end_to_end_with_broken_studies(phantoms, ray_local):
    from ilsgen.pipeline import run_generation

    root, n_good, broken = phantoms
    cfg = _cfg(str(root))
    summary = run_generation(cfg, "phantoms/manifest_with_broken.parquet", "run_ray")
    run = Store(str(root)).child("run_ray")
    status = {r["study_id"]: r for r in _status(run)}
    assert len(status) == n_good + len(broken)
    for b in broken:
        assert status[b["study_id"]]["status"] == "failed", b
        assert status[b["study_id"]]["reason"]
    assert status["90000001"]["stage"] == "decode" and "Empty" in status["90000001"]["reason"]
    assert status["90000003"]["stage"] == "report"
    assert summary["studies"]["ok"] == n_good
    pairs = run.read_parquet("pairs", schema=PAIR).to_pylist()
    assert pairs, "no pairs were written"
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    assert {p["type"] for p in pairs} >= {"basic", "global"}
    assert any(p["presence"] for p in pairs) and any(not p["presence"] for p in pairs)
    for p in pairs:
        assert p["answer"].startswith("[SEG]")
        if p["presence"] and p["seg"]:
            mask = run.read_png(p["seg_mask_path"])
            assert mask.shape == (SIZE, SIZE) and set(mask.flat) <= {0, 255} and mask.max() == 255
    # a second run has nothing left to do and writes nothing twice
    again = run_generation(cfg, "phantoms/manifest_with_broken.parquet", "run_ray")
    assert again["pairs_total"] == len(pairs)
    assert len(_status(run)) == n_good + len(broken)


def test_error_budget_stops_with_a_clear_error(phantoms, tmp_path):
    root, _, broken = phantoms
    store = Store(str(root))
    rows = [dict(b, study_id=f"8{i:07d}", image_uri="images/broken_empty.dcm") for i, b in enumerate(broken * 3)]
    store.write_parquet("phantoms/all_broken.parquet", pa.Table.from_pylist(rows, schema=STUDY))
    code = ils_main(["gen", "--engine", "plain", "--input", "phantoms/all_broken.parquet", "--out", "run_broken", f"store.uri={root}", f"image.size={SIZE}"])
    assert code == 2
    assert store.child("run_broken").exists("status")  # what finished is kept


def test_plain_and_ray_agree(phantoms, ray_local):
    from ilsgen.pipeline import run_generation

    root, _, _ = phantoms
    cfg = _cfg(str(root))
    run_generation(cfg, "phantoms/manifest.parquet", "run_plain", engine="plain")
    run_generation(cfg, "phantoms/manifest.parquet", "run_ray2")  # layout: fused (local.yaml)
    staged = _cfg(str(root), "gen.layout=stages")
    run_generation(staged, "phantoms/manifest.parquet", "run_ray_stages")
    store = Store(str(root))

    def key(run):
        return sorted((p["pair_id"], p["answer"]) for p in store.child(run).read_parquet("pairs", schema=PAIR).to_pylist())

    assert key("run_plain") == key("run_ray2") == key("run_ray_stages")


def test_killed_run_resumes_without_duplicates_or_losses(phantoms):
    """Kill `ils gen` (SIGKILL) after the first shards land, run it again, compare with a clean run."""
    root, n_good, _ = phantoms
    args = [sys.executable, "-m", "ils.cli", "gen", "--engine", "plain", "--input", "phantoms/manifest.parquet", "--out", "run_killed",
            f"store.uri={root}", f"image.size={SIZE}", "gen.report.batch_size=2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    status_dir = Path(root) / "run_killed" / "status"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(status_dir.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = len(list(status_dir.glob("part-*.parquet")))
    assert 2 <= first, "the run never wrote a shard"
    assert subprocess.run(args, capture_output=True).returncode == 0
    run = Store(str(root)).child("run_killed")
    ids = [r["study_id"] for r in _status(run)]
    assert len(ids) == len(set(ids)) == n_good
    pairs = run.read_parquet("pairs", schema=PAIR).to_pylist()
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    clean = Store(str(root)).child("run_plain")
    if clean.exists("pairs"):
        assert sorted(p["pair_id"] for p in pairs) == sorted(p["pair_id"] for p in clean.read_parquet("pairs", schema=PAIR).to_pylist())


def test_export_writes_mimic_ils_layout(phantoms, tmp_path):
    root, _, _ = phantoms
    store = Store(str(root))
    if not store.child("run_plain").exists("status"):
        from ilsgen.pipeline import run_generation

        run_generation(_cfg(str(root)), "phantoms/manifest.parquet", "run_plain", engine="plain")
    assert ils_main(["export", "--run", "run_plain", "--out", str(tmp_path / "export"), f"store.uri={root}"]) == 0
    data = json.loads((tmp_path / "export" / "mimic_ils.json").read_text())
    assert set(data) == {"train", "val", "test"}
    studies = [s for split in data.values() for s in split.values()]
    assert studies and all("instruction_answer_pairs" in s and s["section_content"] for s in studies)
    positives = [p for s in studies for p in s["instruction_answer_pairs"]["positive_pairs"]]
    assert positives
    for p in positives:
        if p["seg_mask_path"]:
            assert (tmp_path / "export" / p["seg_mask_path"]).is_file()
            assert p["seg_mask_path"].startswith("lesion_mask/s")
    for s in studies:
        for p in s["instruction_answer_pairs"]["negative_pairs"]:
            assert p["seg_mask_path"] is None and p["answer"].startswith("[SEG] There is no")
