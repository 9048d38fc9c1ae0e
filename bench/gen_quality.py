"""Generation quality with the offline (`lite`) backends on phantom studies (issue 3, item 5).

Runs `ils sample` -> `ils gen --engine plain` -> `ils gen-eval` on N phantom studies in a
temporary store and writes bench/results/gen_quality.json (the figures, the commands, timings)
and bench/results/gen_quality.png (per-lesion instance IoU bars with the targets).

Run: python bench/gen_quality.py [--n 200] [--seed 11] [--keep DIR] [--set gen.KEY=VALUE ...] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def sh(cmd: list[str]) -> float:
    """Run one `ils` command (output passed through); seconds taken."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = res["mask_iou"]["per_lesion"]
    counts = res["mask_iou"]["count_per_lesion"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(per)
    ax.bar(names, [per[n] for n in names], color="#4c78a8")
    for i, n in enumerate(names):
        ax.text(i, per[n] + 0.01, f"{per[n]:.2f}\nn={counts[n]}", ha="center", fontsize=7)
    ax.axhline(0.6, color="grey", ls="--", lw=1, label="mean target 0.6")
    ax.axhline(0.8, color="red", ls=":", lw=1, label="cardiomegaly target 0.8")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("instance IoU")
    mean = res["mask_iou"]["mean"]
    ax.set_title(f"lite backends, {res.get('n_studies')} phantoms: mean IoU {mean:.3f}, "
                 f"negatives correct {res['negatives']['correct_fraction']:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", help="store folder to use and keep (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for `ils gen` (e.g. gen.anomaly.options.method=model); repeatable")
    ap.add_argument("--out", default="gen_quality", help="results name under bench/results (default gen_quality)")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        root = Path(args.keep).resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ils-genq-")
        root = Path(tmp.name)
    store = f"store.uri={root}"
    cmds = {
        "sample": ["ils", "sample", "--n", str(args.n), "--seed", str(args.seed), "--out", f"{root}/phantoms", store],
        "gen": ["ils", "gen", "--engine", "plain", "--input", f"{root}/phantoms/manifest.parquet", "--out", f"{root}/run", store, *args.set],
        "gen-eval": ["ils", "gen-eval", "--run", f"{root}/run", "--truth", f"{root}/phantoms/truth", store],
    }
    seconds = {k: round(sh(c), 1) for k, c in cmds.items()}
    res = json.loads((root / "run" / "quality.json").read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "bench/gen_quality.py", "--n", str(args.n), "--seed", str(args.seed)]
                                                + [f"--set={o}" for o in args.set] + ([f"--out={args.out}"] if args.out != "gen_quality" else [])),
        "steps": {k: " ".join(shlex.quote(a) for a in c) for k, c in cmds.items()},
        "seconds": seconds,
        "targets": {"mask_iou_mean": 0.6, "cardiomegaly_iou": 0.8, "negatives_correct": 0.99, "finding_f1": 0.95},
        "quality": res,
    }
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=2))
    plot(res, RESULTS / f"{args.out}.png")
    print(json.dumps({"mask_iou": res["mask_iou"]["per_lesion"], "mean": res["mask_iou"]["mean"],
                      "negatives": res["negatives"]["correct_fraction"], "f1": res["findings"]["strict"]["f1"]}, indent=1))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
