"""Benchmark the llm report backend's requests in flight against a loopback server.

    python bench/llm_throughput.py --latency 0.5 --levels 1,8,64,256 [--cap 64] [--jitter 0.5]

A loopback OpenAI-compatible server (`python -m ilsgen.llm_loopback`, its own process)
answers every request after `--latency` seconds. The client structures synthetic reports
(fixed text, no patient data) with the real backend (validation, counters, rate limit off):

- baseline: today's path before this change, one `structure_ex` after another (what the report
  step did per batch), in the same run;
- `structure_many` at each level of `gen.report.llm.max_in_flight`.

With a fixed latency all requests of a round come back at the same instant and the client
parses them one after another (one GIL) before the next round goes out; `--jitter` spreads the
answers like a real server's (different lengths) at the same mean latency.
Reports/s (all reports / wall time, ramp-up and tail included; and in steady state, between the
10th and the 90th percentile of completion times) is compared with the limit in_flight / latency; client CPU seconds per report show
where the knee comes from. With `--cap N` a second server works on at most N requests at a
time (like a real server's batch limit) and the levels run against it as well.
Writes bench/results/llm_throughput.json and llm_throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
REPORT = ("FINDINGS: Small left pleural effusion. Heart size is normal. No pneumothorax.\n"
          "IMPRESSION: Left effusion, possible atelectasis.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(latency: float, cap: int, jitter: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ilsgen.llm_loopback", "--port", str(port), "--latency", str(latency),
                             "--max-concurrent", str(cap), "--jitter", str(jitter)], cwd=ROOT)
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}/v1"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the loopback server did not start")


def _backend(url: str):
    from ils.config import LLMConfig, ReportConfig
    from ilsgen.report import make_report_backend

    return make_report_backend(ReportConfig(backend="llm", llm=LLMConfig(
        base_url=url, model="loopback", requests_per_second=0.0, max_retries=0, timeout_s=120.0)))


def _server_cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _measure(url: str, n: int, in_flight: int | None, server_pid: int) -> dict:
    """in_flight None: the baseline loop. One warm-up request first (imports, first connection)."""
    from ilsgen.report.llm_client import structure_many

    backend = _backend(url)
    backend.structure_ex("warm-up", REPORT)
    s0 = _server_cpu(server_pid)
    items = [(f"b{i}", REPORT) for i in range(n)]
    stamps: list[float] = []
    structure = backend.structure_ex

    def timed(*args):
        out = structure(*args)
        stamps.append(time.perf_counter())
        return out

    backend.structure_ex = timed
    c0, t0 = time.process_time(), time.perf_counter()
    if in_flight is None:
        results = [backend.structure_ex(sid, text) for sid, text in items]
    else:
        results = structure_many(backend, items, in_flight)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    server_cpu = _server_cpu(server_pid) - s0
    ok = sum(1 for r in results if not isinstance(r, Exception) and r.source == "llm")
    stamps.sort()
    lo, hi = stamps[len(stamps) // 10], stamps[(9 * len(stamps)) // 10]  # steady state: 10th to 90th percentile
    steady = ((9 * len(stamps)) // 10 - len(stamps) // 10) / (hi - lo) if hi > lo else n / wall
    return {"reports": n, "ok": ok, "wall_s": round(wall, 3), "reports_per_s": round(n / wall, 2),
            "steady_reports_per_s": round(steady, 2),
            "client_cpu_ms_per_report": round(1000 * cpu / n, 3), "server_cpu_ms_per_report": round(1000 * server_cpu / n, 3),
            "cpu_cores_busy": round((cpu + server_cpu) / wall, 2)}


def _levels(url: str, pid: int, latency: float, levels: list[int], rounds: int, cap: int) -> list[dict]:
    out = []
    for k in levels:
        n = max(8, rounds * k)
        row = {"in_flight": k, **_measure(url, n, k, pid)}
        limit = (min(k, cap) if cap else k) / latency
        row.update(limit_per_s=round(limit, 2), fraction_of_limit=round(row["reports_per_s"] / limit, 3),
                   steady_fraction_of_limit=round(row["steady_reports_per_s"] / limit, 3))
        print(f"  in flight {k:>4}: {row['reports_per_s']:8.2f} reports/s  (limit {limit:.1f}, "
              f"{100 * row['fraction_of_limit']:.0f} %; steady state {row['steady_reports_per_s']:.1f}, "
              f"{100 * row['steady_fraction_of_limit']:.0f} %), CPU ms/report client {row['client_cpu_ms_per_report']:.2f} "
              f"server {row['server_cpu_ms_per_report']:.2f}, cores busy {row['cpu_cores_busy']:.2f}", flush=True)
        out.append(row)
    return out


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, label, style in (("levels", "structure_many (no server cap)", "o-"), ("capped", f"server capped at {result.get('cap')}", "s--")):
        rows = result.get(key) or []
        if rows:
            ax.plot([r["in_flight"] for r in rows], [r["reports_per_s"] for r in rows], style, label=label)
    rows = result["levels"]
    ax.plot([r["in_flight"] for r in rows], [r["in_flight"] / result["latency_s"] for r in rows], ":", color="grey",
            label="limit in_flight / latency")
    ax.axhline(result["baseline"]["reports_per_s"], color="red", lw=1, label="baseline (one after another)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("requests in flight (gen.report.llm.max_in_flight)")
    ax.set_ylabel("reports / s")
    ax.set_title(f"llm backend vs loopback server, {result['latency_s']} s latency, {result['cpus']} CPUs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--levels", default="1,8,64,256")
    ap.add_argument("--rounds", type=int, default=8, help="reports per level = rounds x in_flight (at least 8)")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="server latency uniform in latency x [1-j, 1+j] (same mean); 0: every answer after exactly --latency")
    ap.add_argument("--cap", type=int, default=0, help="also run against a server working on at most CAP at once")
    ap.add_argument("--out", default=str(RESULTS / "llm_throughput.json"))
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    result: dict = {"load_average_at_start": os.getloadavg()[0], "latency_s": a.latency, "jitter": a.jitter, "cpus": os.cpu_count(), "python": platform.python_version(),
                    "command": "python bench/llm_throughput.py " + " ".join(sys.argv[1:]), "data": "synthetic report text"}
    proc, url = _serve(a.latency, 0, a.jitter)
    try:
        result["baseline"] = _measure(url, 8, None, proc.pid)
        print(f"baseline (one after another): {result['baseline']['reports_per_s']:.2f} reports/s", flush=True)
        result["levels"] = _levels(url, proc.pid, a.latency, levels, a.rounds, 0)
    finally:
        proc.terminate()
        proc.wait()
    if a.cap:
        result["cap"] = a.cap
        proc, url = _serve(a.latency, a.cap, a.jitter)
        try:
            print(f"server capped at {a.cap} at once:")
            result["capped"] = _levels(url, proc.pid, a.latency, levels, a.rounds, a.cap)
        finally:
            proc.terminate()
            proc.wait()
    best = max(result["levels"], key=lambda r: r["reports_per_s"])
    result["speedup_best_vs_baseline"] = round(best["reports_per_s"] / result["baseline"]["reports_per_s"], 2)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
