"""Training samples/s through Ray Train versus the plain torch loop, same model and data, one run.

Both sides run the same `rosalia.train_loop.run_loop` on the `tiny` ROSALIA model over a
SYNTHETIC run (`rosalia.data.synthetic_run`); the plain side in this process, the Ray side as a
1-worker `TorchTrainer` (`rosalia.train.fit`, local store, one checkpoint at the end).
Throughput is steady state (from the end of the first step to the last step); wall time with
start-up is recorded too. Writes bench/results/train_overhead.{json,png}.

    python bench/train_overhead.py [--steps 30] [--batch 8] [--image-size 64]
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
log = logging.getLogger("bench.train_overhead")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. what else ran on the machine)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from ils.config import load_config
    from ils.runtime import apply_loopback_env
    from ils.store import Store

    apply_loopback_env()
    import torch

    from rosalia.data import synthetic_run
    from rosalia.train import cpu_threads, fit, rosalia_components
    from rosalia.train_loop import LoopConfig, LoopHooks, LoopState, TorchEngine, run_loop

    work = tempfile.mkdtemp(prefix="ils-bench-train-")
    overrides = [
        f"store.uri={work}", f"model.image_size={args.image_size}", f"train.batch_size={args.batch}",
        f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps}", "train.warmup_steps=5",
        "train.freeze_vision=false", "train.cpus_per_worker=1", "train.torch_threads=1", "train.name=bench", "train.log_every=1000",
        "ray.num_cpus=2",
    ]
    cfg = load_config(None, overrides)
    n_pairs = synthetic_run(Store(work).child("run"), args.studies, size=args.image_size)
    data_uri = f"{work}/run"

    # -- plain torch ---------------------------------------------------------------------------
    # same thread count as the Ray Train worker (Ray sets OMP threads to the worker's CPUs)
    torch.set_num_threads(cpu_threads(cfg.train))
    t0 = time.perf_counter()
    comps = rosalia_components(cfg, data_uri)
    engine = TorchEngine(comps.model, cfg.train.lr, cfg.train.warmup_steps, args.steps, cfg.train.grad_clip)
    final: dict = {}
    hooks = LoopHooks(checkpoint=lambda st, m: final.update(m), log=lambda m: None)
    run_loop(engine, comps.train_set, comps.collate, comps.plan, LoopState(), LoopConfig(args.batch, args.steps, checkpoint_every=args.steps, log_every=1000), hooks)
    plain = {"samples_per_s": final["throughput"], "wall_s": time.perf_counter() - t0}
    log.info("plain torch: %s", plain)

    # -- Ray Train -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    summary = fit(cfg, data_uri, None)
    ray_side = {"samples_per_s": summary["final_metrics"]["throughput"], "wall_s": time.perf_counter() - t0}
    log.info("ray train: %s", ray_side)

    overhead = 1.0 - ray_side["samples_per_s"] / plain["samples_per_s"]
    result = {
        "benchmark": "train_overhead",
        "model": "rosalia tiny (random init)", "data": f"synthetic_run: {args.studies} studies, {n_pairs} pairs (SYNTHETIC)",
        "steps": args.steps, "batch_size": args.batch, "image_size": args.image_size, "workers": 1,
        "plain_torch": plain, "ray_train": ray_side,
        "overhead_fraction": overhead, "target_overhead_fraction": 0.10, "meets_target": overhead <= 0.10,
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average": os.getloadavg(), "note": args.note,
        "command": "python bench/train_overhead.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_overhead.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "train_overhead.png")
    print(json.dumps(result, indent=1))
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["plain torch", "Ray Train"]
    vals = [result["plain_torch"]["samples_per_s"], result["ray_train"]["samples_per_s"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(names, vals, color=["#888", "#1f77b4"])
    ax.set_ylabel("samples / s (steady state)")
    ax.set_title(f"tiny ROSALIA, batch {result['batch_size']}: overhead {100 * result['overhead_fraction']:.1f}%", fontsize=9)
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
