"""Cost of a phantom study on a real base vs a procedural one (one process, CPU seconds).

python bench/real_base_cost.py --data ../shared/realcxr [--n 40 --seed 0]
Writes bench/results/real_base_cost.json. Bases are decoded once per process (cached); the
first real study pays for that and is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from ils.config import load_config
    from ils.phantom.real_sample import generate_real_study
    from ils.phantom.sample import generate_study

    cfg = load_config(None, [f"sample.real_base={a.data}"])
    generate_study(a.seed, 0, cfg)
    c = time.process_time()
    generate_real_study(a.seed, 0, cfg)
    first = time.process_time() - c
    out = {"command": "python bench/real_base_cost.py " + " ".join(sys.argv[1:]), "n": a.n,
           "size": cfg.sample.size, "truth_size": cfg.image.size, "first_real_study_cpu_s (decodes the bases)": first}
    for name, fn in (("procedural", generate_study), ("real_base", generate_real_study)):
        c = time.process_time()
        for i in range(1, a.n + 1):
            fn(a.seed, i, cfg)
        out[f"{name}_cpu_s_per_study"] = (time.process_time() - c) / a.n
    out["ratio"] = out["real_base_cpu_s_per_study"] / out["procedural_cpu_s_per_study"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "real_base_cost.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
