"""What gating the mask stages saves: on phantoms (measured) and for MIMIC-like proportions (estimated).

    python bench/gating_saving.py --n 200

1. Phantoms (synthetic): `ils gen --engine plain` over the same N studies with
   `gen.gate_mask_stages` on and off, in this run: studies that skipped anomaly and detect,
   those stages' seconds (summary.json `stage_seconds`), wall time, and whether the pairs are
   identical. Each setting runs twice (off, on, on, off) and the faster run is kept. The saving that does not depend on how busy the machine was between the two runs:
   the ungated run's anomaly + detect seconds on the studies the gated run skipped.
2. MIMIC-like proportions: the CheXpert labels that ship in torchxrayvision
   (`torchxrayvision/data/chexpert_train.csv.gz`, 223K images labelled by the CheXpert labeler,
   the labeler MIMIC-CXR-JPG uses; Stanford patients, not MIMIC). A frontal study needs a mask
   when Lung Opacity, Edema, Consolidation, Pneumonia, Atelectasis or Pleural Effusion is
   positive (1) or uncertain (-1). The skipped share x 191,541 studies x the RadEdit and YOLO
   GPU-seconds per image of docs/sizing.md (estimates A and C) gives the GPU-hours saved.

Writes bench/results/gating_saving.json and gating_saving.png.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MASK_LABELS = ("Lung Opacity", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pleural Effusion")
STUDIES = 191_541
RADEDIT_S, YOLO_S = 0.63, 0.0025  # H100 seconds per image, docs/sizing.md estimates A and C


def chexpert_estimate() -> dict:
    import pandas as pd

    dist = importlib.metadata.distribution("torchxrayvision")
    path = next(f for f in dist.files if f.name == "chexpert_train.csv.gz").locate()
    df = pd.read_csv(path)
    df = df[df["Frontal/Lateral"] == "Frontal"].copy()
    df["study"] = df["Path"].str.rsplit("/", n=1).str[0]
    labels = df.groupby("study")[list(MASK_LABELS) + ["Cardiomegaly"]].max()  # any frontal image of the study
    needs = (labels[list(MASK_LABELS)].isin([1.0, -1.0])).any(axis=1)
    share_skip = float(1 - needs.mean())
    saved_s = STUDIES * share_skip * (RADEDIT_S + YOLO_S)
    return {"source": f"torchxrayvision {dist.version}: data/chexpert_train.csv.gz (CheXpert labeler; Stanford, not MIMIC)",
            "frontal_studies": int(len(labels)), "share_needing_mask": round(float(needs.mean()), 4),
            "share_skipping": round(share_skip, 4),
            "share_cardiomegaly_only": round(float(((labels["Cardiomegaly"].isin([1.0, -1.0])) & ~needs).mean()), 4),
            "h100_hours_saved_192k": round(saved_s / 3600, 1),
            "h100_hours_mask_stages_ungated_192k": round(STUDIES * (RADEDIT_S + YOLO_S) / 3600, 1)}


def _ils(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ils.cli", *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    return time.perf_counter() - t0


def phantom_runs(n: int, size: int, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    store = [f"store.uri={work}", f"image.size={size}"]
    _ils(["sample", "--n", str(n), "--seed", "11", "--out", "ph", "sample.size=1024", *store], env)
    out: dict = {}
    # off, on, on, off: each setting once early and once late; the faster run of each is kept
    for k, gate in enumerate(("false", "true", "true", "false")):
        name = f"run_{gate}" if k < 2 else f"run_{gate}_2"
        wall = _ils(["gen", "--engine", "plain", "--input", "ph/manifest.parquet", "--out", name, *store,
                     f"gen.gate_mask_stages={gate}"], env)
        s = json.loads((work / name / "summary.json").read_text())
        key = "on" if gate == "true" else "off"
        row = {"wall_s": round(wall, 2), "studies": s["studies"], "skipped_stages": s.get("skipped_stages", {}),
               "stage_seconds": s["stage_seconds"], "pairs_total": s["pairs_total"]}
        out.setdefault(f"{key}_walls_s", []).append(row["wall_s"])
        if key not in out or row["wall_s"] < out[key]["wall_s"]:
            out[key] = row
    import pyarrow.parquet as pq

    def pairs(run: str):
        t = pq.read_table(work / run / "pairs", columns=["pair_id", "answer", "seg_mask_path"]).to_pylist()
        return sorted((p["pair_id"], p["answer"], p["seg_mask_path"] or "") for p in t)

    out["pairs_identical"] = pairs("run_true") == pairs("run_false")
    # robust to a busy machine: the seconds the ungated run spent in anomaly + detect on exactly
    # the studies the gated run skipped, against its total in those stages (both from one run)
    status = {k: pq.read_table(work / f"run_{k}" / "status", columns=["study_id", "stage_seconds", "skipped_stages"]).to_pylist()
              for k in ("true", "false")}
    skipped = {r["study_id"] for r in status["true"] if r["skipped_stages"]}
    per = {r["study_id"]: sum(v for s, v in r["stage_seconds"] if s in ("anomaly", "detect")) for r in status["false"]}
    out["ungated_mask_stage_seconds_on_skipped_studies"] = round(sum(per[s] for s in skipped), 3)
    out["ungated_mask_stage_seconds_total"] = round(sum(per.values()), 3)
    out["mask_stage_seconds_saved_fraction_same_run"] = round(sum(per[s] for s in skipped) / max(1e-9, sum(per.values())), 4)
    sec = {k: sum(out[k]["stage_seconds"].get(s, 0.0) for s in ("anomaly", "detect")) for k in ("on", "off")}
    out["mask_stage_seconds"] = {k: round(v, 3) for k, v in sec.items()}
    out["mask_stage_seconds_saved_fraction"] = round(1 - sec["on"] / sec["off"], 4) if sec["off"] else None
    out["studies_skipping_fraction"] = round(out["on"]["skipped_stages"].get("anomaly", 0) / n, 4)
    return out


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ph, cx = result["phantoms"], result["chexpert"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.bar(["gating off", "gating on"], [ph["mask_stage_seconds"]["off"], ph["mask_stage_seconds"]["on"]], color=["grey", "tab:blue"])
    a.set_ylabel("anomaly + detect seconds (lite, CPU)")
    a.set_title(f"{result['n']} synthetic phantoms: {100 * ph['studies_skipping_fraction']:.0f} % skip")
    b.bar(["ungated", "gated"], [cx["h100_hours_mask_stages_ungated_192k"],
                                 cx["h100_hours_mask_stages_ungated_192k"] - cx["h100_hours_saved_192k"]], color=["grey", "tab:blue"])
    b.set_ylabel("RadEdit + YOLO H100-hours, 192K studies")
    b.set_title(f"CheXpert label proportions: {100 * cx['share_skipping']:.0f} % skip (estimate)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", default=str(RESULTS / "gating_saving.json"))
    a = ap.parse_args()
    result = {"command": "python bench/gating_saving.py " + " ".join(sys.argv[1:]), "n": a.n, "cpus": os.cpu_count(),
              "chexpert": chexpert_estimate()}
    print(json.dumps(result["chexpert"], indent=2), flush=True)
    with tempfile.TemporaryDirectory(prefix="ils-gating-") as work:
        result["phantoms"] = phantom_runs(a.n, a.size, Path(work))
    print(json.dumps(result["phantoms"], indent=2))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _plot(result, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
