"""Training samples/s when pairs of one image share the SAM image-encoder pass
(`train.pairs_per_image`), against the default of one pass per pair, same model and data, one run.

Each arm runs the training loop (`rosalia.train_loop.run_loop`, plain torch, as in
`bench/train_overhead.py`) on the `tiny` ROSALIA model with the demo's shapes (SAM 256 px,
batch 16, both cores) for `--steps` steps; throughput is steady state (after the first step).
The data is a SYNTHETIC run (`rosalia.data.synthetic_run`) unless `--data` names an ilsgen run
folder. Writes bench/results/shared_image_pass.{json,png}.

    python bench/shared_image_pass.py [--steps 40] [--groups 1,2,4,8] [--data RUN] [model.sam_hidden=128 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench.shared_image_pass")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--groups", default="1,2,4,8", help="train.pairs_per_image values; the first is the baseline")
    ap.add_argument("--data", default=None, help="ilsgen run folder (default: a synthetic run)")
    ap.add_argument("--studies", type=int, default=300, help="synthetic studies when --data is not given")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("overrides", nargs="*", help="config overrides (e.g. model.sam_hidden=128)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from ils.config import load_config
    from ils.runtime import apply_loopback_env
    from ils.store import Store

    apply_loopback_env()
    import numpy as np
    import torch

    from rosalia.data import synthetic_run
    from rosalia.train import cpu_threads, rosalia_components
    from rosalia.train_loop import LoopConfig, LoopHooks, LoopState, TorchEngine, run_loop

    work = tempfile.mkdtemp(prefix="ils-bench-share-")
    base = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "local.yaml"), [f"store.uri={work}", *args.overrides])
    if args.data:
        data_uri, what = str(Path(args.data).resolve()), f"ilsgen run {args.data}"
    else:
        n_pairs = synthetic_run(Store(work).child("run"), args.studies, size=base.model.image_size)
        data_uri, what = f"{work}/run", f"synthetic_run: {args.studies} studies, {n_pairs} pairs (SYNTHETIC)"
    torch.set_num_threads(cpu_threads(base.train))

    arms = []
    for g in [int(x) for x in args.groups.split(",")]:
        cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "local.yaml"),
                          [f"store.uri={work}", *args.overrides, f"train.pairs_per_image={g}",
                           f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps}", "train.log_every=100000"])
        comps = rosalia_components(cfg, data_uri)
        order = comps.plan.order(0)
        bs = cfg.train.batch_size
        images = [len({int(comps.train_set.image_index[i]) for i in order[b : b + bs]}) for b in range(0, bs * args.steps, bs)]
        engine = TorchEngine(comps.model, cfg.train.lr, cfg.train.warmup_steps, args.steps, cfg.train.grad_clip)
        final: dict = {}
        hooks = LoopHooks(checkpoint=lambda st, m: final.update(m), log=lambda m: None)
        t0 = time.perf_counter()
        run_loop(engine, comps.train_set, comps.collate, comps.plan, LoopState(),
                 LoopConfig(bs, args.steps, checkpoint_every=args.steps, log_every=100000), hooks)
        arm = {"pairs_per_image": g, "samples_per_s": final["throughput"], "wall_s": time.perf_counter() - t0,
               "images_per_batch": float(np.mean(images))}
        log.info("pairs_per_image=%d: %s", g, arm)
        arms.append(arm)
    for arm in arms:
        arm["speedup"] = arm["samples_per_s"] / arms[0]["samples_per_s"]
    result = {
        "benchmark": "shared_image_pass", "model": "rosalia tiny (random init), configs/local.yaml shapes",
        "data": what, "overrides": args.overrides, "steps": args.steps, "batch_size": base.train.batch_size,
        "image_size": base.model.image_size, "arms": arms,
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "command": "python bench/shared_image_pass.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shared_image_pass.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "shared_image_pass.png")
    print(json.dumps(result, indent=1))
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    names = [f"{a['pairs_per_image']}\n{a['images_per_batch']:.1f} images" for a in arms]
    vals = [a["samples_per_s"] for a in arms]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(names, vals, color=["#888"] + ["#1f77b4"] * (len(vals) - 1))
    ax.set_xlabel("train.pairs_per_image (distinct images per batch)")
    ax.set_ylabel("samples / s (steady state)")
    ax.set_title(f"tiny ROSALIA, batch {result['batch_size']}, SAM {result['image_size']} px", fontsize=9)
    for i, a in enumerate(arms):
        ax.text(i, a["samples_per_s"], f"{a['samples_per_s']:.0f} ({a['speedup']:.2f}x)", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
