"""Real radiographs (issue 13): the real-image scores and the per-image cost of the lite stages.

1. Scores: `ils real-eval --data DATA --out bench/results/real_eval` (JSON + figure), summarised
   into bench/results/real_images.json (per set, held-out images and all).
2. Cost per image on `--threads` threads (default 2), same run, same images (the first N of
   DATA stretched to image.size): anatomy `lite` network vs `classic` (today's method before
   issue 13), anomaly `lite` net vs the classic local z-score, detect `lite`; each as seconds per
   image and the ratio to the classic method. Plot: bench/results/real_images.png.
3. Phantom anatomy (exact synthetic truth), network vs classic on the same unseen phantoms.

Run: python bench/real_images.py --data ../shared/realcxr [--n 20] [--threads 2] [--phantoms 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def per_image(fn, images, repeat: int = 2) -> float:
    fn(images[:1])  # warm-up (weights, caches)
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - t)
    return best / len(images)


def costs(data: Path, n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from ils.config import StageConfig, load_config
    from ils.imageio import resize_square
    from ilsgen.anatomy_net.data import load_real
    from ilsgen.stages.registry import make_backend

    cfg = load_config(None, [])
    size = cfg.image.size
    cases = load_real(data, limit=max(1, n // 2))[:n]
    images = [resize_square(c.image, size) for c in cases]
    net = make_backend("anatomy", StageConfig(options={"threads": threads}), size)
    classic = make_backend("anatomy", StageConfig(options={"method": "classic"}), size)
    bits = net.segment(images)
    an_net = make_backend("anomaly", StageConfig(options={"threads": threads}), size)
    an_classic = make_backend("anomaly", StageConfig(options={"method": "model"}), size)
    det = make_backend("detect", StageConfig(), size)
    amaps = an_net.anomaly_maps(images, bits)
    out = {
        "anatomy_net_s": per_image(net.segment, images),
        "anatomy_classic_s": per_image(classic.segment, images),
        "anomaly_net_s": per_image(lambda ims: an_net.anomaly_maps(ims, bits[: len(ims)]), images),
        "anomaly_classic_local_s": per_image(lambda ims: an_classic.anomaly_maps(ims, bits[: len(ims)]), images),
        "detect_s": per_image(lambda ims: det.detect(ims, amaps[: len(ims)]), images),
    }
    out["anatomy_ratio_net_to_classic"] = out["anatomy_net_s"] / out["anatomy_classic_s"]
    out["anomaly_ratio_net_to_classic"] = out["anomaly_net_s"] / out["anomaly_classic_local_s"]
    out.update(images=len(images), image_size=size, threads=threads)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def phantom_anatomy(n: int, size: int = 512) -> dict:
    """Anatomy IoU (right lung, left lung, heart) on n phantoms the network never saw (seed 0;
    training used seed 101): network vs classic, same phantoms."""
    from ils.config import StageConfig, load_config
    from ils.imageio import resize_square
    from ils.phantom import generate_study
    from ilsgen.stages.anatomy_lite import region_mask
    from ilsgen.stages.registry import make_backend

    cfg = load_config(None, [f"sample.size={size}", f"image.size={size}"])
    methods = {"net": make_backend("anatomy", StageConfig(), size),
               "classic": make_backend("anatomy", StageConfig(options={"method": "classic"}), size)}
    scores: dict[str, list] = {k: [] for k in methods}
    for i in range(n):
        st = generate_study(0, i, cfg)
        img = resize_square(st.image, size)
        for k, m in methods.items():
            bits = m.segment([img])[0]
            scores[k].append([float((region_mask(bits, r) & region_mask(st.anatomy, r)).sum()
                                    / max((region_mask(bits, r) | region_mask(st.anatomy, r)).sum(), 1))
                              for r in ("right lung", "left lung", "heart")])
    return {k: dict(zip(("right_lung_iou", "left_lung_iou", "heart_iou"), np.round(np.mean(v, axis=0), 4).tolist()))
            | {"n": n} for k, v in scores.items()}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    sets = list(res["scores"])
    keys = [("lung_dice", "lung Dice"), ("heart_inside_cm", "heart inside CM")]
    x = np.arange(len(sets))
    for j, (k, lab) in enumerate(keys):
        vals = [res["scores"][s]["held_out"]["anatomy"].get(k, {}).get("mean", np.nan) for s in sets]
        a1.bar(x + 0.35 * j, vals, 0.35, label=lab)
    a1.axhline(0.95, color="grey", ls="--", lw=1, label="lung target 0.95")
    a1.set_xticks(x + 0.17, sets, fontsize=8)
    a1.set_ylim(0, 1.05)
    a1.set_title("anatomy, held-out real images (dev split)", fontsize=9)
    a1.legend(fontsize=7, loc="lower right")
    les = res["scores"].get("covid_radiologist", {}).get("held_out", {}).get("lesions", {})
    names = [n for n in ("opacity", "consolidation") if n in les]
    xx = np.arange(len(names))
    a2.bar(xx, [les[n]["mean_iou"] for n in names], 0.35, label="ils gen masks")
    a2.bar(xx + 0.35, [les[n]["whole_lung_mean_iou"] for n in names], 0.35, label="whole lung")
    for i, n in enumerate(names):
        a2.text(i, les[n]["mean_iou"] + 0.01, f"n={les[n]['n']}", fontsize=7)
    a2.set_xticks(xx + 0.17, names)
    a2.set_ylim(0, 1)
    a2.set_title("lesion mask IoU, covid_radiologist held-out", fontsize=9)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "realcxr"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phantoms", type=int, default=50, help="phantoms for the anatomy comparison (default 50)")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "index.csv").is_file():
        print(f"bench real_images: no realcxr data at {data}; nothing measured", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_dir = RESULTS / "real_eval"
    cmd = [sys.executable, "-m", "ils.cli", "real-eval", "--data", str(data), "--out", str(out_dir)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    eval_s = time.perf_counter() - t
    rec = json.loads((out_dir / "real_eval.json").read_text())
    res = {
        "command": f"python bench/real_images.py --data {args.data} --n {args.n} --threads {args.threads} --phantoms {args.phantoms}",
        "real_eval_command": "ils real-eval --data DATA --out bench/results/real_eval",
        "note": "development split (../shared/realcxr); held_out = images the shipped network was not trained on",
        "scores": {s: {g: e[g] for g in ("held_out", "all") if g in e} | {"lung_convention": e["lung_convention"]}
                   for s, e in rec["per_set"].items()},
        "anatomy_backend": rec["anatomy_backend"], "anomaly": rec["anomaly"],
        "real_eval_seconds": round(eval_s, 1),
        "cost_per_image": costs(data, args.n, args.threads),
        "phantom_anatomy": phantom_anatomy(args.phantoms),
        "load_average": os.getloadavg(),
    }
    (RESULTS / "real_images.json").write_text(json.dumps(res, indent=1))
    plot(res, RESULTS / "real_images.png")
    print(json.dumps({"cost_per_image": res["cost_per_image"], "phantom_anatomy": res["phantom_anatomy"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
