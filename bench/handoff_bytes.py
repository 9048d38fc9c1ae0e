"""Bytes per study handed from one actor pool to the next in the `stages` layout, before and after.

    python bench/handoff_bytes.py --n 16 --size 512 --effect 100

Runs the pipeline's steps in process over N synthetic phantom studies and, after each step,
sums the bytes of the batch's columns (numpy arrays: nbytes; text cells: UTF-8 length): what
Ray Data stores in the object store and ships to the next pool. "before" is the order and the
columns as they were (decode -> report -> anatomy -> anomaly -> detect -> fuse, the image kept
until fuse); "after" is today's (report -> decode -> ..., the image dropped after detect);
"after_f16" adds `gen.compact_anomaly=true` (float16 anomaly maps; lossy, opt-in).
With `--effect M`, `ils gen --engine plain` runs over M phantoms with compact_anomaly off and on:
are the pairs identical, how many mask pixels differ, the lowest mask IoU.
Writes bench/results/handoff_bytes.json and handoff_bytes.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def batch_bytes(batch: dict) -> int:
    total = 0
    for col in batch.values():
        if col.dtype == object:
            total += sum(len(str(v).encode()) for v in col if v is not None)
        else:
            total += col.nbytes
    return total


def _hops(steps: list, batch: dict) -> list[dict]:
    n = len(batch["study_id"])
    out = []
    for name, step in steps:
        batch = step(batch)
        out.append({"after": name, "bytes_per_study": batch_bytes(batch) // n})
    return out


def f16_effect(work: str, n: int, size: int) -> dict:
    """Pairs and masks with float16 anomaly maps against float32 ones (plain engine, M phantoms)."""
    import pyarrow.parquet as pq

    from ils.config import load_config
    from ils.store import Store
    from ilsgen.pipeline import run_generation

    store = [f"store.uri={work}", f"image.size={size}"]
    subprocess.run([sys.executable, "-m", "ils.cli", "sample", "--n", str(n), "--seed", "9", "--out", "fx", *store,
                    "sample.size=1024"], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pairs = {}
    for c in ("false", "true"):
        run_generation(load_config(None, [*store, f"gen.compact_anomaly={c}"]), "fx/manifest.parquet", f"fx_{c}", engine="plain")
        t = pq.read_table(f"{work}/fx_{c}/pairs", columns=["pair_id", "answer", "seg_mask_path"]).to_pylist()
        pairs[c] = sorted((p["pair_id"], p["answer"], p["seg_mask_path"] or "") for p in t)
    s = Store(work)
    diff = total = 0
    ious = []
    for m in sorted({p[2] for p in pairs["false"] if p[2]}):
        x, y = s.child("fx_false").read_png(m) > 0, s.child("fx_true").read_png(m) > 0
        diff += int((x != y).sum())
        total += int(x.sum())
        ious.append(float((x & y).sum() / max(1, (x | y).sum())))
    return {"studies": n, "pairs_identical": pairs["false"] == pairs["true"], "masks": len(ious),
            "mask_pixels_differing": diff, "mask_pixels": total, "min_mask_iou": round(min(ious), 4) if ious else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--effect", type=int, default=0, help="also measure compact_anomaly's effect on M phantoms")
    ap.add_argument("--out", default=str(RESULTS / "handoff_bytes.json"))
    a = ap.parse_args()
    from ils.config import load_config
    from ils.store import Store
    from ilsgen.pipeline import _batches
    from ilsgen.steps import AnatomyStep, AnomalyStep, DecodeStep, DetectStep, FuseStep, ReportStep

    with tempfile.TemporaryDirectory(prefix="ils-handoff-") as work:
        subprocess.run([sys.executable, "-m", "ils.cli", "sample", "--n", str(a.n), "--seed", "2", "--out", "ph",
                        f"store.uri={work}", "sample.size=1024"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        store = Store(work)
        manifest = store.read_parquet("ph/manifest.parquet")
        manifest = manifest.set_column(manifest.column_names.index("image_uri"), "image_uri",
                                       [[f"ph/{u}" for u in manifest.column("image_uri").to_pylist()]])
        batch0 = next(_batches(manifest, a.n))

        def steps(order: str) -> list:
            c = load_config(None, [f"store.uri={work}", f"image.size={a.size}", f"gen.compact_anomaly={order == 'after_f16'}"])
            detect = DetectStep(c)
            detect.drop_image = order != "before"
            chain = [("decode", DecodeStep(c)), ("report", ReportStep(c))]
            if order != "before":
                chain.reverse()
            return chain + [("anatomy", AnatomyStep(c)), ("anomaly", AnomalyStep(c)), ("detect", detect),
                            ("fuse", FuseStep(c, store.child("run").root_uri))]

        result = {"command": "python bench/handoff_bytes.py " + " ".join(sys.argv[1:]), "n": a.n, "size": a.size,
                  "data": "synthetic phantoms"}
        for order in ("before", "after", "after_f16"):
            hops = _hops(steps(order), {k: v.copy() for k, v in batch0.items()})
            result[order] = hops
            result[f"{order}_total_bytes_per_study"] = int(sum(h["bytes_per_study"] for h in hops[:-1]))  # the last goes to write
        if a.effect:
            result["compact_anomaly_effect"] = f16_effect(work, a.effect, a.size)
    for order in ("after", "after_f16"):
        result[f"ratio_{order}_vs_before"] = round(result[f"{order}_total_bytes_per_study"] / result["before_total_bytes_per_study"], 3)
    print(json.dumps(result, indent=2))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for k, (order, style) in enumerate((("before", "grey"), ("after", "tab:blue"), ("after_f16", "tab:green"))):
        hops = result[order][:-1]
        x = np.arange(len(hops)) + 0.28 * k
        ax.bar(x, [h["bytes_per_study"] / 2**20 for h in hops], width=0.28, color=style,
               label=f"{order}: {result[f'{order}_total_bytes_per_study'] / 2**20:.2f} MiB/study in all")
        for xi, h in zip(x, hops):
            ax.text(xi, h["bytes_per_study"] / 2**20, h["after"], ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks([])
    ax.set_ylabel("MiB per study handed to the next pool")
    ax.set_title(f"stages layout hand-offs, {a.size}-px working size (synthetic phantoms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
