"""`ils export`: write a run in the released MIMIC-ILS layout (MIMIC-CXR-Ext-ILS, SPEC section 2).

    OUT/mimic_ils.json                           train/val/test -> study_id -> study record
    OUT/lesion_mask/s{study}/s{study}_{lesion}_{idx}.png    binary 512x512 PNGs (0/255)

Each study record holds subject_id, dicom_id, image_path, section_name, section_content and
instruction_answer_pairs {positive_pairs, negative_pairs}; each pair holds pair_id, instruction,
answer, type, target, location {reported, grounded}, sent_idx, seg and seg_mask_path (relative to
OUT, null for negatives). A pair's target mask (the union of its lesion instances) is written
once per distinct mask and named by lesion and a per-study index, as in the release.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from tqdm import tqdm

from ils.schema import PAIR
from ils.store import Store
from ilsgen.manifest import read_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _sections(report: str | None) -> tuple[str, str]:
    from ilsgen.report.sections import split_sections

    sections = split_sections(report or "")
    if not sections:
        return "", ""
    name = "+".join(dict.fromkeys(s.name for s in sections))
    return name, "\n".join(s.text for s in sections)


def export_run(run: Store, out: Store, manifest_uri: str | None = None) -> dict[str, Any]:
    """Write the JSON and the lesion_mask tree; returns counts."""
    if not run.exists("status"):
        raise FileNotFoundError(f"{run.root_uri} holds no finished generation run (no status/)")
    if manifest_uri is None:
        manifest_uri = json.loads(run.read_text("run.json"))["input"]
    studies = {r["study_id"]: r for r in read_manifest(run, manifest_uri).to_pylist()}
    pairs = run.read_parquet("pairs", schema=PAIR).to_pylist() if run.exists("pairs") else []
    by_study: dict[str, list[dict]] = defaultdict(list)
    for p in pairs:
        by_study[p["study_id"]].append(p)

    dataset: dict[str, dict[str, Any]] = {s: {} for s in SPLITS}
    written: dict[tuple[str, str], str] = {}  # (study, run mask path) -> exported path
    per_lesion_idx: dict[tuple[str, str], int] = defaultdict(int)
    n_masks = 0
    for study_id, study_pairs in tqdm(sorted(by_study.items()), desc="export", unit="study"):
        study = studies.get(study_id, {})
        section_name, section_content = _sections(study.get("report"))
        record: dict[str, Any] = {
            "subject_id": study.get("subject_id"),
            "dicom_id": study.get("dicom_id"),
            "image_path": study.get("image_uri"),
            "section_name": section_name,
            "section_content": section_content,
            "instruction_answer_pairs": {"positive_pairs": [], "negative_pairs": []},
        }
        for p in sorted(study_pairs, key=lambda r: r["pair_id"]):
            seg_path = None
            src = p["seg_mask_path"]
            if p["presence"] and src:
                key = (study_id, src)
                if key not in written:
                    idx = per_lesion_idx[(study_id, p["lesion"])]
                    per_lesion_idx[(study_id, p["lesion"])] += 1
                    rel = f"lesion_mask/s{study_id}/s{study_id}_{p['lesion']}_{idx}.png"
                    out.write_bytes(rel, run.read_bytes(src))
                    written[key] = rel
                    n_masks += 1
                seg_path = written[key]
            entry = {
                "pair_id": p["pair_id"],
                "instruction": p["instruction"],
                "answer": p["answer"],
                "type": p["type"],
                "target": p["target"],
                "lesion": p["lesion"],
                "location": {"reported": p["reported_locations"] or [], "grounded": p["grounded_locations"] or []},
                "sent_idx": p["sent_idx"],
                "seg": bool(p["seg"]),
                "seg_mask_path": seg_path,
                "presence": bool(p["presence"]),
                "certainty": p["certainty"],
            }
            record["instruction_answer_pairs"]["positive_pairs" if p["presence"] else "negative_pairs"].append(entry)
        split = p["split"] if p.get("split") in SPLITS else (study.get("split") if study.get("split") in SPLITS else "train")
        dataset[split][study_id] = record
    out.write_text("mimic_ils.json", json.dumps(dataset, indent=1))
    counts = {s: len(dataset[s]) for s in SPLITS} | {"pairs": len(pairs), "masks": n_masks}
    log.info("exported %s to %s", counts, out.root_uri)
    return counts
