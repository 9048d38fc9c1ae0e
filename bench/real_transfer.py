"""Learning curve with real-image transfer: every kept model scored on real radiographs and on phantom truth.

Steps (each command is recorded in the JSON):
1. optional data: `ils sample --n N --seed SEED` + `ils gen` in the store (`--make-data N SEED`).
2. `ils train --data RUN --out CKPT train.keep_snapshots=EVERY [overrides]`: the demo's budget
   (configs/local.yaml train.*) unless overridden; rank 0 exports a model every EVERY steps to
   `<CKPT>-snapshots/step_NNNNNNNN` (and at the end).
3. For every snapshot: `ils real-eval --model-only --checkpoint SNAP --data REAL` (held-out
   images, `ilsgen.anatomy_net.data.held_out`: "Segment the opacity." gIoU against the
   ground-glass masks, "Segment the consolidation." gIoU, consolidation absence) and `ils eval`
   on the phantom-truth pairs of the test split (`ils truth-pairs`; gated gIoU, cIoU, N-Acc).
4. The label ceiling once (ilsgen's masks against the same truth pairs, bench/learning_curve.py).
Writes bench/results/<name>.json and <name>.png: the two curves, the step where transfer peaks.

    python bench/real_transfer.py --store /tmp/rt --make-data 2000 5 --every 500
    python bench/real_transfer.py --store /tmp/rt --make-data 60 5 --every 20 --name real_transfer_smoke \\
        train.max_steps=40 train.max_minutes=0     # a smoke run (seconds of training: not a figure)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import build_truth_run, label_ceiling, overall, run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench.real_transfer")


def real_point(record: dict, group: str = "held_out") -> dict:
    """Per set: opacity / consolidation gIoU (+ whole-lung answer) and consolidation absence of one snapshot."""
    out = {}
    for s, entry in record["per_set"].items():
        m = (entry.get(group) or {}).get("model")
        if not m:
            continue
        o, c = m["opacity"], m["consolidation"]
        out[s] = {"n": m["n"], "opacity_gIoU": o.get("gIoU"), "opacity_whole_lung_gIoU": o.get("whole_lung_gIoU"),
                  "consolidation_gIoU": c.get("gIoU"), "consolidation_whole_lung_gIoU": c.get("whole_lung_gIoU"),
                  "consolidation_absence": c.get("absent_when_not_outlined"),
                  "consolidation_present_when_outlined": c.get("present_when_outlined"),
                  "opacity_present_when_outlined": o.get("present_when_outlined")}
    return out


def snapshots(folder: Path) -> list[tuple[int, Path]]:
    return sorted((int(p.name.split("_")[1]), p) for p in folder.glob("step_*") if (p / "rosalia.json").is_file())


def peak(points: list[dict], key: str, set_name: str = "covid_radiologist") -> dict | None:
    vals = [(p["real"].get(set_name, {}).get(key), p["step"]) for p in points]
    vals = [(v, s) for v, s in vals if v is not None]
    if not vals:
        return None
    v, s = max(vals)
    return {"step": s, "value": v}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = doc["points"]
    steps = [p["step"] for p in pts]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    covid = [p["real"].get("covid_radiologist", {}) for p in pts]
    for key, c, label in (("opacity_gIoU", "C1", "opacity gIoU (vs ground-glass masks)"),
                          ("consolidation_gIoU", "C3", "consolidation gIoU"),
                          ("consolidation_absence", "C2", "consolidation absent when not outlined"),
                          ("consolidation_present_when_outlined", "C4", "consolidation present when outlined")):
        ax.plot(steps, [x.get(key) if x.get(key) is not None else float("nan") for x in covid], "o-", c=c, label=label)
    for key, c in (("opacity_whole_lung_gIoU", "C1"), ("consolidation_whole_lung_gIoU", "C3")):
        ax.plot(steps, [x.get(key) if x.get(key) is not None else float("nan") for x in covid], "--", c=c, lw=0.8)
    tb = [p["real"].get("shenzhen_tb", {}).get("consolidation_absence") for p in pts]
    if any(v is not None for v in tb):
        ax.plot(steps, [v if v is not None else float("nan") for v in tb], "x:", c="C2", label="shenzhen_tb 'absent' (TB not outlined)")
    t = doc["targets"]
    for v, c in ((t["opacity_gIoU"], "C1"), (t["consolidation_gIoU"], "C3"), (t["consolidation_absence"], "C2")):
        ax.axhline(v, ls=":", c=c, lw=0.8)
    n = covid[0].get("n") if covid else "?"
    ax.set_title(f"real radiographs, covid_radiologist held-out ({n} images, development split)\n"
                 "dashed: whole-lung answer; dotted: issue-14 targets", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax = axes[1]
    for key, c in (("gIoU", "C0"), ("cIoU", "C1"), ("N-Acc", "C2")):
        ax.plot(steps, [p["truth"]["overall"]["gated"][key] if p.get("truth") else float("nan") for p in pts], "o-", c=c,
                label=f"model vs truth {key} (gated)")
    ceil = (doc.get("label_ceiling") or {}).get("overall")
    if ceil:
        for key, c in (("gIoU", "C0"), ("cIoU", "C1"), ("N-Acc", "C2")):
            if ceil.get(key) is not None:
                ax.axhline(ceil[key], ls="--", c=c, lw=0.8, label=f"ilsgen labels vs truth {key}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    lim = (doc.get("comparison_last") or {}).get("limits", "")
    ax.set_title(f"synthetic phantoms ({Path(doc['data']['phantoms']).name}), test-split truth pairs\n"
                 f"dashed: ilsgen labels vs truth (label ceiling); last step limits: {lim}", fontsize=8)
    ax.legend(fontsize=7)
    fig.suptitle(doc["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/real-transfer", help="store.uri of the run")
    ap.add_argument("--data", default="gen", help="ilsgen run, relative to the store")
    ap.add_argument("--phantoms", default=None, help="sample folder with truth/ (default STORE/phantoms)")
    ap.add_argument("--make-data", nargs=2, type=int, metavar=("N", "SEED"), default=None)
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "realcxr"),
                    help="realcxr-layout folder (default ../shared/realcxr)")
    ap.add_argument("--every", type=int, default=500, help="train.keep_snapshots: a scored model every N steps")
    ap.add_argument("--ckpt", default="ckpt-transfer", help="exported checkpoint, relative to the store")
    ap.add_argument("--name", default="real_transfer", help="bench/results/<name>.json + .png")
    ap.add_argument("--skip-train", action="store_true", help="score the snapshots already in <ckpt>-snapshots")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--label", default="", help="what this run is (e.g. 'SMOKE RUN: mechanics only'), in the JSON and the plot title")
    ap.add_argument("overrides", nargs="*", help="config overrides for `ils train` (e.g. train.max_steps=40)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.plot_only:
        doc = json.loads((out / f"{args.name}.json").read_text())
        plot(doc, out / f"{args.name}.png")
        return doc
    if not (Path(args.real) / "index.csv").is_file():
        raise SystemExit(f"--real {args.real}: no index.csv (realcxr layout)")
    tmp = out / "tmp" / args.name
    tmp.mkdir(parents=True, exist_ok=True)
    ils = str(Path(sys.executable).with_name("ils"))
    store_root = Path(args.store).resolve()
    store = f"store.uri={store_root}"
    phantoms = Path(args.phantoms or store_root / "phantoms").resolve()
    commands: dict = {"data": []}
    if args.make_data:
        n, seed = args.make_data
        for cmd in ([ils, "sample", "--n", str(n), "--seed", str(seed), "--out", "phantoms", store],
                    [ils, "gen", "--input", str(phantoms / "manifest.parquet"), "--out", args.data, store]):
            run(cmd, tmp / f"{cmd[1]}.log")
            commands["data"].append(" ".join(cmd[1:]))
    train_cmd = [ils, "train", "--data", args.data, "--out", args.ckpt, store, f"train.keep_snapshots={args.every}", *args.overrides]
    train_s = None
    if not args.skip_train:
        _, train_s = run(train_cmd, tmp / "train.log")
        commands["train"] = " ".join(train_cmd[1:])
    elif (out / f"{args.name}.json").is_file():  # rescoring: keep the record of how the snapshots were made
        prev = json.loads((out / f"{args.name}.json").read_text())
        commands = {**prev.get("commands", {}), "rescored_with": " ".join(sys.argv)}
        train_s = prev.get("train_seconds_wall")
    snaps = snapshots(store_root / f"{args.ckpt}-snapshots")
    if not snaps:
        raise SystemExit(f"no snapshot in {store_root / (args.ckpt + '-snapshots')} (train.keep_snapshots)")
    truth_run = store_root / "truth-test"
    n_truth = build_truth_run(str(phantoms), str(truth_run), "test")
    data_run = store_root / args.data
    ceiling = label_ceiling(str(truth_run), str(data_run)) if (data_run / "mask_index").exists() else None
    points = []
    for step, snap in snaps:
        real_out = store_root / "real-transfer" / f"step_{step:08d}"
        rcmd = [ils, "real-eval", "--data", args.real, "--out", str(real_out), "--checkpoint", str(snap), "--model-only", store]
        _, real_s = run(rcmd, tmp / f"real_{step}.log")
        record = json.loads((real_out / "real_eval.json").read_text())
        eval_out = store_root / "eval-transfer" / f"step_{step:08d}"
        ecmd = [ils, "eval", "--checkpoint", str(snap), "--data", str(truth_run), "--out", str(eval_out), "--split", "test",
                "eval.paraphrases=false", store]
        _, eval_s = run(ecmd, tmp / f"eval_{step}.log")
        report = json.loads((eval_out / "report.json").read_text())
        points.append({"step": step, "real": real_point(record, "held_out"), "real_all": real_point(record, "all"),
                       "truth": overall(report), "seconds": {"real_eval": round(real_s, 1), "eval": round(eval_s, 1)}})
        log.info("step %d: real %s; truth gIoU %s", step, points[-1]["real"], points[-1]["truth"]["overall"]["gated"]["gIoU"])
    commands["per_snapshot"] = [" ".join(rcmd[1:]).replace(str(snaps[-1][1]), "SNAP").replace(f"step_{snaps[-1][0]:08d}", "step_N"),
                                " ".join(ecmd[1:]).replace(str(snaps[-1][1]), "SNAP").replace(f"step_{snaps[-1][0]:08d}", "step_N")]
    from ils.label_ceiling import compare
    from ilsgen.real_eval_model import TARGETS

    for p in points:  # model vs truth next to ilsgen labels vs truth, at every step
        p["comparison"] = compare(p["truth"], ceiling, dataset=str(phantoms))

    doc = {
        "title": f"ROSALIA transfer to real radiographs along training ({args.name})" + (f": {args.label}" if args.label else ""),
        "label": args.label or None,
        "what": "every train.keep_snapshots model scored on real radiographs (ils real-eval --model-only; 'real' = "
                "held-out images, position % 5 == 4 per set, never training bases; 'real_all' = every image, optimistic) "
                "and on the phantom ground-truth pairs of the test split (ils eval, gated, no paraphrases). Real figures "
                "are development-split figures; shenzhen_tb 'absence' is not a specificity (TB is not outlined).",
        "data": {"phantoms": str(phantoms), "run": str(data_run), "real": str(Path(args.real).resolve()),
                 "truth_pairs": n_truth},
        "commands": commands,
        "train_seconds_wall": round(train_s, 1) if train_s else None,
        "targets": TARGETS,
        "peak": {k: peak(points, k) for k in ("opacity_gIoU", "consolidation_gIoU", "consolidation_absence")},
        "label_ceiling": {"what": "ilsgen's own masks scored as predictions against the truth pairs (test split)", **ceiling}
        if ceiling else None,
        "comparison_last": points[-1]["comparison"],
        "points": points,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_end": os.getloadavg(),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=1, default=str))
    plot(doc, out / f"{args.name}.png")
    log.info("wrote %s and %s", out / f"{args.name}.json", out / f"{args.name}.png")
    return doc


if __name__ == "__main__":
    main()
