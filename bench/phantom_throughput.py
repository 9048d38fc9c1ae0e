"""Phantom throughput on one core at 1024x1024: studies/s for generation alone and for
generation + writing (DICOM, report, truth PNGs, Parquet) into a local store.

Run: python bench/phantom_throughput.py [--n 100] [--size 1024]
Writes bench/results/phantom_throughput.json, phantom_throughput.png and phantom_example.png
(one synthetic image next to its lesion-mask overlay).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ils.config import load_config  # noqa: E402
from ils.phantom import generate_study, write_phantoms  # noqa: E402
from ils.store import Store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLOURS = {"cardiomegaly": (255, 60, 60), "pneumonia": (60, 220, 60), "atelectasis": (70, 110, 255), "opacity": (255, 230, 0),
           "consolidation": (230, 60, 230), "edema": (0, 220, 220), "effusion": (255, 140, 0)}


def example(cfg, seed: int, path: Path) -> None:
    for i in range(50):
        s = generate_study(seed, i, cfg)
        if len(s.masks) >= 2:
            break
    t = s.anatomy.shape[0]
    im = np.asarray(Image.fromarray(s.image, mode="F").resize((t, t), Image.Resampling.BILINEAR))
    g = np.repeat((np.clip(im, 0, 1) * 255)[..., None], 3, axis=2).astype(np.float32)
    ov = g.copy()
    for lesion, masks in s.masks.items():
        for m in masks:
            ov[m] = 0.55 * ov[m] + 0.45 * np.array(COLOURS[lesion], np.float32)
    Image.fromarray(np.concatenate([g, ov], axis=1).astype(np.uint8)).save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    cfg = load_config(None, [f"sample.size={args.size}"])
    generate_study(args.seed, 0, cfg)  # warm caches (noise banks)
    t0, c0 = time.perf_counter(), time.process_time()
    per = []
    for i in range(args.n):
        t = time.perf_counter()
        generate_study(args.seed, i, cfg)
        per.append(time.perf_counter() - t)
    gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        write_phantoms(Store(tmp), args.n, args.seed, cfg, progress=False)
        write_s, write_cpu = time.perf_counter() - t0, time.process_time() - c0
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python bench/phantom_throughput.py " + " ".join(sys.argv[1:]),
        "n": args.n, "size": args.size, "truth_size": cfg.image.size, "cores": 1,
        "generate_studies_per_s": args.n / gen_s,
        "generate_and_write_studies_per_s": args.n / write_s,
        # CPU seconds of this process: the per-core rate, robust to other jobs sharing the machine
        "generate_studies_per_cpu_s": args.n / gen_cpu,
        "generate_and_write_studies_per_cpu_s": args.n / write_cpu,
        "generate_ms_p50": 1000 * float(np.median(per)), "generate_ms_p95": 1000 * float(np.percentile(per, 95)),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "target_studies_per_s": 20,
    }
    (RESULTS / "phantom_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = ["generate\n(wall)", "generate\n(CPU time)", "gen + write\n(wall)", "gen + write\n(CPU time)"]
    bars = [result["generate_studies_per_s"], result["generate_studies_per_cpu_s"],
            result["generate_and_write_studies_per_s"], result["generate_and_write_studies_per_cpu_s"]]
    ax.bar(names, bars, color=["#4a7bd0", "#8fb0e8", "#d08a4a", "#e8b88f"])
    ax.axhline(20, color="k", ls="--", lw=1, label="target 20/s")
    ax.set_ylabel("studies / s (one core)")
    ax.set_title(f"Phantom throughput, {args.size}x{args.size}, n={args.n}, load {result['machine']['loadavg_1m']:.1f}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "phantom_throughput.png", dpi=110)
    example(cfg, args.seed, RESULTS / "phantom_example.png")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
