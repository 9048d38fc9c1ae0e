"""Does the tiny ROSALIA learn? `ils train` + `ils eval` on regenerated phantom studies (issue 4 item 6).

Steps (each command is recorded in the JSON):
1. `ils train --data RUN --out CKPT store.uri=STORE [overrides]` with the demo config: its
   output is kept and parsed into a learning curve (training loss and samples/s per logged step).
2. `ils eval` on the `test` split of the ilsgen run: targets are ilsgen's masks and pairs.
3. A TRUTH run: the test-split phantom studies turned into pairs by `ilsgen.pairs.make_pairs`
   from the phantoms' ground truth (`ils truth-pairs`, `ils.phantom.truth_pairs`), written as a
   run folder; then `ils eval` on it. These are the
   numbers "against phantom ground truth".
4. The label ceiling (`ils.label_ceiling`): ilsgen's own masks scored against the same truth
   pairs, the most a model that imitates its training labels can reach; `comparison` puts
   "model vs truth" next to "ilsgen labels vs truth" (gIoU, cIoU, N-Acc) and says which limits.
   Any sample folder with `truth/` works (`--phantoms DIR`; every source writes that layout).
Writes bench/results/learning.json and bench/results/learning.png.

    python bench/learning_curve.py --store /tmp/learn --make-data 2000 5     # sample + gen + train + eval
    python bench/learning_curve.py --store /tmp/learn [--phantoms DIR] [--train-log LOG --skip-train]
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench.learning_curve")
_METRICS = re.compile(r"(\{'step': \d+.*?\})")


def build_truth_run(phantoms_uri: str, out_uri: str, split: str | None = "test", seed: int = 0) -> int:
    """Write a run folder of PAIR rows built from the phantom ground truth (`ils truth-pairs`)."""
    from ils.phantom.truth_pairs import write_truth_run
    from ils.store import Store

    return write_truth_run(Store(phantoms_uri), Store(out_uri), split, seed)


def label_ceiling(truth_uri: str, gen_uri: str) -> dict:
    """ilsgen's own masks scored against the truth pairs (`ils.label_ceiling.label_ceiling`)."""
    from ils.label_ceiling import label_ceiling as ceiling

    return ceiling(truth_uri, gen_uri)


def _count_studies(phantoms: str) -> int:
    from ils.store import Store

    return Store(str(Path(phantoms).resolve())).read_parquet("manifest.parquet").num_rows


def parse_curve(text: str) -> list[dict]:
    """The per-step metric dicts that rank 0 logs during `ils train`."""
    points = []
    for m in _METRICS.finditer(text):
        try:
            d = ast.literal_eval(m.group(1))
        except (ValueError, SyntaxError):
            continue
        points.append({k: v for k, v in d.items() if isinstance(v, (int, float))})
    return points


def run(cmd: list[str], log_path: Path) -> tuple[str, float]:
    """Run a CLI command, tee its output into `log_path`; (output, seconds)."""
    log.info("$ %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    log_path.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
    return proc.stdout + proc.stderr, dt


def overall(report: dict) -> dict:
    """Per-lesion and overall gated/ungated gIoU, cIoU, N-Acc (+ text and presence accuracy)."""
    def blk(b: dict) -> dict:
        return {"n": b["n"], "gated": b["gated"], "ungated": b["ungated"], "text_accuracy": b["text_accuracy"],
                "presence_accuracy": b["presence_accuracy"]}

    return {"overall": blk(report["overall"]), "per_lesion": {k: blk(v) for k, v in report["per_lesion"].items()},
            "per_type": {k: blk(v) for k, v in report["per_type"].items()}}


def plot(curve: list[dict], results: dict, path: Path, ceiling: dict | None = None, comparison: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4))
    logged = [p for p in curve if "loss" in p]
    axes[0].plot([p["step"] for p in logged], [p["loss"] for p in logged], label="train loss (weighted CE + BCE + Dice + presence BCE)")
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].set_title("ils train (tiny, demo config)")
    val = [p for p in curve if p.get("val_giou", -1) >= 0]
    if val:
        ax2 = axes[0].twinx()
        ax2.plot([p["step"] for p in val], [p["val_giou"] for p in val], "o-", c="C3", label="val gIoU (ungated, 128 val pairs)")
        ax2.set_ylim(0, 1)
        ax2.legend(fontsize=8, loc="center right")
    axes[0].legend(fontsize=8)
    names, vals = [], []
    for target in ("ilsgen", "truth"):
        rep = results.get(target)
        if not rep:
            continue
        for mode in ("gated", "ungated"):
            o = rep["overall"][mode]
            who = "model vs\nilsgen" if target == "ilsgen" else "model vs\ntruth"
            names += [f"{who}\n{mode}\ngIoU", f"{who}\n{mode}\ncIoU", f"{who}\n{mode}\nN-Acc"]
            vals += [o["gIoU"] or 0, o["cIoU"] or 0, o["N-Acc"] or 0]
    if ceiling:  # ilsgen's own masks against truth: what imitating the labels perfectly gives
        o = ceiling["overall"]
        names += ["ilsgen labels\nvs truth\ngIoU", "ilsgen labels\nvs truth\ncIoU", "ilsgen labels\nvs truth\nN-Acc"]
        vals += [o["gIoU"] or 0, o["cIoU"] or 0, o["N-Acc"] or 0]
    axes[1].bar(range(len(vals)), vals, color=["C0", "C1", "C2"] * (len(vals) // 3))
    axes[1].set_xticks(range(len(vals)), names, fontsize=6)
    axes[1].axhline(0.7, ls=":", c="C0")
    axes[1].axhline(0.85, ls=":", c="C1")
    axes[1].axhline(0.8, ls=":", c="C2")
    axes[1].set_ylim(0, 1)
    title = "test split: gIoU / cIoU / N-Acc (targets dotted)"
    if comparison:
        title += f"\n{Path(comparison['dataset']).name}: limits {comparison['limits']}"
    axes[1].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/learn", help="store.uri of the run (holds gen/)")
    ap.add_argument("--data", default="gen", help="ilsgen run, relative to the store")
    ap.add_argument("--phantoms", default=None, help="phantom folder written by `ils sample` (has truth/); default STORE/phantoms")
    ap.add_argument("--make-data", nargs=2, type=int, metavar=("N", "SEED"), default=None,
                    help="first write N phantom studies (`ils sample --n N --seed SEED`) and regenerate them (`ils gen`) in the store")
    ap.add_argument("--name", default="rosalia-learning", help="train.name (Ray Train run name)")
    ap.add_argument("--ckpt", default="ckpt-learning", help="exported checkpoint, relative to the store")
    ap.add_argument("--skip-train", action="store_true", help="reuse --train-log and --ckpt")
    ap.add_argument("--train-log", default=None, help="log of an earlier `ils train` (with --skip-train)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("overrides", nargs="*", help="config overrides for `ils train`")
    ap.add_argument("--plot-only", action="store_true", help="redraw learning.png from learning.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.plot_only:
        doc = json.loads((out / "learning.json").read_text())
        comparison = doc.get("comparison")
        if comparison is None and doc.get("label_ceiling") and doc["results"].get("truth"):  # a JSON from before `comparison`
            from ils.label_ceiling import compare

            comparison = compare(doc["results"]["truth"], doc["label_ceiling"], dataset="phantoms (this run)")
        plot(doc["curve"], doc["results"], out / "learning.png", doc.get("label_ceiling"), comparison)
        return doc
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    ils = str(Path(sys.executable).with_name("ils"))
    store = f"store.uri={args.store}"
    phantoms = args.phantoms or str(Path(args.store) / "phantoms")
    data_commands: list[str] = []
    if args.make_data:
        n, seed = args.make_data
        for cmd in ([ils, "sample", "--n", str(n), "--seed", str(seed), "--out", "phantoms", store],
                    [ils, "gen", "--input", str(Path(phantoms) / "manifest.parquet"), "--out", args.data, store]):
            run(cmd, tmp / f"learning_{cmd[1]}.log")
            data_commands.append(" ".join(cmd[1:]))
    train_cmd = [ils, "train", "--data", args.data, "--out", args.ckpt, store, f"train.name={args.name}", *args.overrides]
    if args.skip_train:
        text, train_s = Path(args.train_log).read_text(), None
    else:
        text, train_s = run(train_cmd, tmp / "learning_train.log")
    curve = parse_curve(text)
    summary = None
    m = re.search(r"^\{\n.*?^\}", text, re.S | re.M)
    if m:
        try:
            summary = json.loads(m.group(0))
        except json.JSONDecodeError:
            summary = None
    ckpt = str(Path(args.store) / args.ckpt)
    results: dict = {}
    commands = {"train": " ".join(train_cmd[1:])}
    truth_run = str(Path(args.store) / "truth-test")
    n_truth = build_truth_run(str(Path(phantoms).resolve()), truth_run, "test")
    for target, data in (("ilsgen", str(Path(args.store) / args.data)), ("truth", truth_run)):
        eval_out = str(Path(args.store) / f"eval-learning-{target}")
        cmd = [ils, "eval", "--checkpoint", ckpt, "--data", data, "--out", eval_out, "--split", "test", store]
        table, eval_s = run(cmd, tmp / f"learning_eval_{target}.log")
        report = json.loads((Path(eval_out) / "report.json").read_text())
        results[target] = {**overall(report), "eval_seconds": round(eval_s, 1), "n_samples": report["n_samples"],
                           "cleanup": report.get("cleanup")}
        commands[f"eval_{target}"] = " ".join(cmd[1:])
    data_run = Path(args.store) / args.data
    comparison = None
    if (data_run / "mask_index").exists():
        from ils.label_ceiling import compare

        ceiling = label_ceiling(truth_run, str(data_run))
        log.info("label ceiling (ilsgen masks scored against the truth pairs): %s", ceiling["overall"])
        comparison = compare(results["truth"], ceiling, dataset=str(Path(phantoms).resolve()))
    else:  # e.g. trained on `ils truth-pairs --split all` (a diagnostic): no ilsgen masks to score
        ceiling = None
        log.info("no ilsgen masks (mask_index) in %s: label ceiling skipped", data_run)
    doc = {
        "what": "tiny ROSALIA trained by `ils train` (demo config configs/local.yaml) on ilsgen-regenerated phantom "
                "studies; scored on the held-out test-split studies. 'ilsgen': targets = ilsgen pairs/masks; "
                "'truth': pairs built by ilsgen.pairs.make_pairs from the phantom ground truth (findings + masks). "
                "gated = mask emptied when the presence head says absent; ungated = SPEC section 4 teacher-forced protocol.",
        **({"note": f"trained on {args.data}, a run without ilsgen masks (pairs from the phantoms' ground truth): "
                    "its 'ilsgen' results are scored against that run's test split"} if ceiling is None else {}),
        "data_commands": data_commands or [f"(existing) phantoms at {phantoms}, ilsgen run at {args.store}/{args.data}"],
        "n_studies": _count_studies(phantoms),
        "commands": commands,
        "train_seconds_wall": round(train_s, 1) if train_s else None,
        "train_summary": summary,
        "truth_pairs": n_truth,
        "targets": {"gIoU": 0.7, "cIoU": 0.85, "N-Acc": 0.8},
        "results": results,
        "label_ceiling": {"what": "ilsgen's own masks scored as predictions against the truth pairs (test split): "
                                  "what a model that imitated its training labels perfectly would reach",
                          **ceiling} if ceiling else None,
        "comparison": comparison,
        "curve": curve,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_end": os.getloadavg()},
    }
    (out / "learning.json").write_text(json.dumps(doc, indent=1, default=str))
    plot(curve, results, out / "learning.png", ceiling, comparison)
    log.info("wrote %s and %s", out / "learning.json", out / "learning.png")
    return doc


if __name__ == "__main__":
    main()
