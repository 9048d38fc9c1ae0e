"""`ils bench NAME|all`: run the benchmarks under bench/ (JSON + plots into bench/results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HELP = "run a benchmark from bench/ (phantom, gen, quality, train, share, serve, learning, or all); results in bench/results/"
TAKES_POSITIONALS = True

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = {
    "phantom": "phantom_throughput.py",
    "gen": "gen_pipeline.py",
    "quality": "gen_quality.py",
    "train": "train_overhead.py",
    "share": "shared_image_pass.py",
    "serve": "serve_load.py",
    "learning": "learning_curve.py",
}


def add_arguments(parser) -> None:
    parser.add_argument("rest", nargs="*", metavar="NAME", help=f"one of {', '.join(SCRIPTS)} or all")


def run(args, cfg) -> int:
    names = args.positionals or ["all"]
    if names == ["all"]:
        names = list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"ils bench: unknown benchmark(s) {unknown}; choose from {', '.join(SCRIPTS)} or all", file=sys.stderr)
        return 2
    for name in names:
        script = BENCH_DIR / SCRIPTS[name]
        print(f"== bench {name}: python {script.relative_to(BENCH_DIR.parent)}", flush=True)
        code = subprocess.call([sys.executable, str(script)], cwd=BENCH_DIR.parent)
        if code:
            return code
    return 0
