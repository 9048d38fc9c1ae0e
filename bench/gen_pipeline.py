"""Benchmark ilsgen: Ray Data pipeline vs a plain single-process loop, peak memory, stage shares.

    python bench/gen_pipeline.py --n 200 --memory 200,2000

1. Throughput: `ils gen` over the same N synthetic phantom studies, once with `--engine plain`
   (one process, the same stage functions, one batch at a time) and once on Ray Data with
   `ray.num_cpus=2`, both in this run; studies/s and their ratio (target >= 1.6x), for the
   whole command (start-up included) and in steady state (first to last finished batch).
2. Peak memory: the Ray engine on the first M1 and M2 studies (e.g. 200 and 2,000); the peak
   resident memory of the whole process tree (driver, raylet, workers), sampled every 0.2 s.
   Target: the larger within 1.2x of the smaller.
3. Per-stage time share from the run summary, so a cluster can be sized per stage.

Writes bench/results/gen_pipeline.json and gen_pipeline.png. Synthetic data throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_ils(args: list[str], env: dict) -> dict:
    """Run `ils ARGS` in a new session; wall time and peak RSS of its process tree."""
    cmd = [sys.executable, "-m", "ils.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "cmd": "ils " + " ".join(args)}


def steady_state_rate(run: Path) -> dict:
    """Studies/s between the first and the last published status shard (start-up excluded).

    Every batch publishes one status shard when it is finished (ilsgen.run_layout), in both
    engines, so the shards' modification times trace the same progress for both.
    """
    import pyarrow.parquet as pq

    shards = sorted((p.stat().st_mtime, pq.read_metadata(p).num_rows) for p in (run / "status").glob("part-*.parquet"))
    if len(shards) < 2:
        return {"studies_per_s": None, "shards": len(shards)}
    span = shards[-1][0] - shards[0][0]
    studies = sum(n for _, n in shards[1:])
    return {"studies_per_s": studies / span if span > 0 else None, "seconds": span, "studies": studies, "shards": len(shards)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="studies for the throughput comparison")
    ap.add_argument("--memory", default="200,2000", help="two study counts for the peak-memory comparison ('' skips)")
    ap.add_argument("--size", type=int, default=1024, help="phantom image side")
    ap.add_argument("--work", default="/tmp/ils-bench-gen", help="scratch store")
    ap.add_argument("--keep", action="store_true", help="keep the scratch store")
    args = ap.parse_args()

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    env = dict(os.environ)
    from ils.runtime import loopback_env

    env.update(loopback_env(str(work / "state")))
    store = [f"store.uri={work}", "ray.num_cpus=2"]
    counts = [int(c) for c in args.memory.split(",") if c] if args.memory else []
    n_sample = max([args.n, *counts])
    t0 = time.perf_counter()
    run_ils(["sample", "--n", str(n_sample), "--seed", "5", "--out", "phantoms", "--size", str(args.size), *store], env)
    sample_s = time.perf_counter() - t0

    # manifests with the first k studies
    import pyarrow.parquet as pq

    manifest = pq.read_table(work / "phantoms" / "manifest.parquet")
    for k in {args.n, *counts}:
        pq.write_table(manifest.slice(0, k), work / "phantoms" / f"manifest_{k}.parquet")

    plain = run_ils(["gen", "--engine", "plain", "--input", f"phantoms/manifest_{args.n}.parquet", "--out", "plain", *store], env)
    ray = run_ils(["gen", "--input", f"phantoms/manifest_{args.n}.parquet", "--out", "ray", *store], env)
    plain["steady_state"] = steady_state_rate(work / "plain")
    ray["steady_state"] = steady_state_rate(work / "ray")
    summary = json.loads((work / "ray" / "summary.json").read_text())
    plain_summary = json.loads((work / "plain" / "summary.json").read_text())
    result = {
        "data": f"synthetic phantom studies, {args.size}x{args.size} DICOM",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_start": os.getloadavg()},
        "command": "python bench/gen_pipeline.py " + " ".join(sys.argv[1:]),
        "sample_seconds": sample_s,
        "throughput": {
            "studies": args.n,
            "plain": {**plain, "studies_per_s": args.n / plain["wall_s"]},
            "ray": {**ray, "studies_per_s": args.n / ray["wall_s"]},
            "speedup": plain["wall_s"] / ray["wall_s"],  # whole command, start-up included
            "steady_state_speedup": ray["steady_state"]["studies_per_s"] / plain["steady_state"]["studies_per_s"],
            "target": 1.6,
        },
        "stage_share": summary["stage_share"],
        "stage_seconds_per_study": {k: v / args.n for k, v in plain_summary["stage_seconds"].items()},
    }
    if len(counts) == 2:
        mem = {}
        for k in counts:
            mem[k] = run_ils(["gen", "--input", f"phantoms/manifest_{k}.parquet", "--out", f"mem{k}", *store], env)
        small, large = counts
        result["memory"] = {str(k): v for k, v in mem.items()} | {
            "ratio": mem[large]["peak_rss_mb"] / mem[small]["peak_rss_mb"],
            "target": 1.2,
        }
    result["machine"]["load_avg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gen_pipeline.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "gen_pipeline.png")
    print(json.dumps({"speedup": result["throughput"]["speedup"], "steady_state_speedup": result["throughput"]["steady_state_speedup"],
                      "memory_ratio": result.get("memory", {}).get("ratio")}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    t = result["throughput"]
    import numpy as np

    x = np.arange(2)
    axes[0].bar(x - 0.2, [t["plain"]["studies_per_s"], t["ray"]["studies_per_s"]], 0.4, label="whole command", color="grey")
    axes[0].bar(x + 0.2, [t["plain"]["steady_state"]["studies_per_s"], t["ray"]["steady_state"]["studies_per_s"]], 0.4,
                label="steady state", color="tab:blue")
    axes[0].set_xticks(x, ["plain loop", "Ray Data (2 CPUs)"])
    axes[0].legend()
    axes[0].set_ylabel("studies / s")
    axes[0].set_title(f"{t['studies']} studies: {t['speedup']:.2f}x whole, {t['steady_state_speedup']:.2f}x steady")
    if "memory" in result:
        m = {k: v for k, v in result["memory"].items() if k.isdigit()}
        axes[1].bar(list(m), [v["peak_rss_mb"] for v in m.values()], color="tab:orange")
        axes[1].set_ylabel("peak RSS of process tree (MB)")
        axes[1].set_xlabel("studies")
        axes[1].set_title(f"peak memory ratio {result['memory']['ratio']:.2f}")
    share = result["stage_share"]
    axes[2].barh(list(share), [100 * v for v in share.values()], color="tab:green")
    axes[2].set_xlabel("% of stage time")
    axes[2].set_title("per-stage time share (Ray run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
