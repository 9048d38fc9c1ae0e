"""Service load benchmark: requests/s and p50/p95/p99 latency, batching on vs off (loopback).

One model replica (the same tiny ROSALIA model, random weights unless a checkpoint is
configured), the same synthetic phantom PNG for every request. For each mode (batching on:
max_batch_size=N; off: max_batch_size=1) and each concurrency level, `c` async clients
(httpx.AsyncClient) send requests back to back for `--duration` seconds; requests still in flight
at the end are awaited and counted. Writes bench/results/serve_load.json and .png.

    python bench/serve_load.py [--levels 1 4 8 16 32] [--duration 15] [--batch 16] [key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.serve_load")
INSTRUCTION = "Segment the effusion in the left lung base."


def percentiles(latencies: list[float]) -> dict:
    a = np.asarray(latencies, dtype=float)
    if a.size == 0:
        return {"p50_s": None, "p95_s": None, "p99_s": None, "mean_s": None}
    return {f"p{q}_s": float(np.percentile(a, q)) for q in (50, 95, 99)} | {"mean_s": float(a.mean())}


async def run_level(url: str, image: bytes, concurrency: int, duration_s: float) -> dict:
    """`concurrency` closed-loop clients for duration_s; latency of every answered request."""
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        stop_at = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post("/v1/segment", files={"image": ("p.png", image, "image/png")}, data={"instruction": INSTRUCTION})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                    batch_sizes.append(int(r.json()["batch_size"]))
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t_start
    return {
        "concurrency": concurrency, "requests": len(latencies), "errors": errors, "wall_s": wall,
        "rps": len(latencies) / wall if wall > 0 else 0.0, **percentiles(latencies),
        "mean_batch_size": float(np.mean(batch_sizes)) if batch_sizes else 0.0,
    }


def phantom_png(size: int) -> bytes:
    from PIL import Image

    from ils.config import load_config
    from ils.phantom.sample import generate_study

    study = generate_study(0, 0, load_config(None, [f"sample.size={size}", "image.size=64"]))
    buf = io.BytesIO()
    Image.fromarray((study.image * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, rows in result["modes"].items():
        c = [r["concurrency"] for r in rows]
        ax1.plot(c, [r["rps"] for r in rows], "o-", label=mode)
        ax2.plot(c, [r["p99_s"] or np.nan for r in rows], "o-", label=f"{mode} p99")
        ax2.plot(c, [r["p50_s"] or np.nan for r in rows], "x--", label=f"{mode} p50")
    ax1.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="throughput")
    ax2.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (s)", title="latency")
    for ax in (ax1, ax2):
        ax.set_xticks(result["levels"], [str(x) for x in result["levels"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ILS service, 1 replica, {result['model_id']} ({result['host']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of load per level")
    ap.add_argument("--batch", type=int, default=16, help="max_batch_size with batching on")
    ap.add_argument("--wait", type=float, default=0.05, help="batch_wait_timeout_s with batching on")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_load"))
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. serve.num_cpus=1")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from ray import serve

    from ils.config import load_config
    from ils.runtime import init_ray
    from serve.app import build_app, wait_ready

    top = max(args.levels)
    base = [
        "serve.allow_anonymous=true", "serve.autoscaling.min_replicas=1", "serve.autoscaling.max_replicas=1",
        f"serve.autoscaling.max_ongoing_requests={max(top, args.batch) + 1}",
        f"serve.max_queued_requests={4 * top + 16}", "serve.request_timeout_s=600", *args.overrides,
    ]
    image = phantom_png(args.image_size)
    cfg0 = load_config(None, base)
    init_ray(cfg0)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    url = f"http://127.0.0.1:{args.port}"
    result: dict = {"command": "python bench/serve_load.py " + " ".join(sys.argv[1:]), "levels": args.levels, "duration_s": args.duration, "image_size": args.image_size,
                    "host": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "modes": {}}
    try:
        for mode, (bs, wait) in {"batched": (args.batch, args.wait), "batch-1": (1, 0.0)}.items():
            cfg = load_config(None, base + [f"serve.max_batch_size={bs}", f"serve.batch_wait_timeout_s={wait}"])
            serve.run(build_app(cfg), name="ils", route_prefix="/")
            result["model_id"] = wait_ready(url, 300)["model_id"]
            asyncio.run(run_level(url, image, 2, 3.0))  # warm-up
            rows = []
            for c in args.levels:
                row = asyncio.run(run_level(url, image, c, args.duration))
                log.info("%s c=%d: %.2f req/s p50 %.2fs p99 %.2fs mean batch %.1f", mode, c, row["rps"],
                         row["p50_s"] or 0, row["p99_s"] or 0, row["mean_batch_size"])
                rows.append(row)
            result["modes"][mode] = rows
            result.setdefault("settings", {})[mode] = {"max_batch_size": bs, "batch_wait_timeout_s": wait}
    finally:
        serve.shutdown()
    on, off = result["modes"]["batched"], result["modes"]["batch-1"]
    result["comparison"] = [
        {"concurrency": a["concurrency"], "throughput_ratio": a["rps"] / b["rps"] if b["rps"] else None,
         "p99_ratio": (a["p99_s"] / b["p99_s"]) if a["p99_s"] and b["p99_s"] else None}
        for a, b in zip(on, off)
    ]
    best = max(result["comparison"], key=lambda r: r["throughput_ratio"] or 0)
    result["target"] = {"rule": "throughput >= 2.5x batch-1 with p99 <= 2x batch-1 at the same concurrency",
                        "best": best, "met": bool(best["throughput_ratio"] and best["throughput_ratio"] >= 2.5
                                                  and best["p99_ratio"] is not None and best["p99_ratio"] <= 2.0)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print(json.dumps(result["comparison"], indent=1))
    print("target met:", result["target"]["met"], "->", out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
