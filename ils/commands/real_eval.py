"""`ils real-eval --data DIR --out URI`: anatomy, lesion masks and a model scored on real radiographs."""

from __future__ import annotations

HELP = "score anatomy, the pipeline's lesion masks and (with --checkpoint) a ROSALIA model on real radiographs with expert masks"
DESCRIPTION = (
    "ils real-eval --data DIR --out URI [--sets a,b] [--limit N] [--no-lesions] [--checkpoint CKPT [--model-only]]. "
    "DIR is laid out like ../shared/realcxr (<set>/images, <set>/masks/<structure>, index.csv). Writes "
    "URI/real_eval.json (per set and per image: lung, right and left lung Dice in each set's own lung convention, heart "
    "against the cardiac part of the cardiomediastinum, lesion-mask IoU next to the whole-lung answer; with "
    "--checkpoint a `model` section: 'Segment the opacity.' / 'Segment the consolidation.' gIoU, cIoU and absence, "
    "held-out images and all) and URI/real_eval.png (worst and best cases)."
)


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="realcxr-layout folder")
    parser.add_argument("--out", required=True, help="output folder (path, file:// or s3:// URI)")
    parser.add_argument("--sets", default=None, help="comma-separated sets (default: all in index.csv)")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    parser.add_argument("--no-lesions", action="store_true", help="score the anatomy only (no ilsgen lesion masks)")
    parser.add_argument("--checkpoint", default=None,
                        help="a ROSALIA checkpoint (folder, store-relative or URI): adds the model section")
    parser.add_argument("--model-only", "--no-anatomy", dest="model_only", action="store_true",
                        help="with --checkpoint: skip the anatomy and lesion-mask sections (faster)")


def _check_checkpoint(ck: str, cfg) -> None:
    from ils.errors import UserError
    from ils.store import Store
    from rosalia.model.checkpoint import SPEC_FILE

    try:
        if "://" in ck or ck.startswith(("/", ".")):
            ok = Store(ck).exists(SPEC_FILE)
        else:
            ok = Store.from_config(cfg.store).exists(f"{ck.strip('/')}/{SPEC_FILE}")
    except Exception as exc:  # unreachable store, bad URI
        raise UserError(f"--checkpoint {ck!r}: cannot be read ({exc})") from exc
    if not ok:
        raise UserError(f"--checkpoint {ck!r}: not a ROSALIA checkpoint (no {SPEC_FILE}); pass the folder `ils train --out` wrote")


def run(args, cfg) -> int:
    import json
    import tempfile
    from pathlib import Path

    from ils.errors import UserError
    from ils.store import Store
    from ilsgen.real_eval import evaluate
    from ilsgen.real_eval_figure import figure

    data = Path(args.data)
    if not (data / "index.csv").is_file():
        raise UserError(f"--data {args.data!r}: no index.csv (expected <set>/images, <set>/masks/<structure>, index.csv)")
    if args.model_only and not args.checkpoint:
        raise UserError("--model-only needs --checkpoint (there is nothing else to score)")
    if args.checkpoint:
        _check_checkpoint(args.checkpoint, cfg)
    sets = tuple(s for s in args.sets.split(",") if s) if args.sets else None
    record, pics = evaluate(data, cfg, sets, args.limit, lesions=not args.no_lesions, anatomy=not args.model_only,
                            checkpoint=args.checkpoint)
    out = Store.from_config(cfg.store, args.out if "://" in args.out else str(Path(args.out).resolve()))
    out.write_text("real_eval.json", json.dumps(record, indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        figure(record, pics, Path(tmp) / "real_eval.png")
        out.write_bytes("real_eval.png", (Path(tmp) / "real_eval.png").read_bytes())
    summary: dict = {"out": out.uri("real_eval.json")}
    if not args.model_only:
        summary["lung_dice_mean"] = {s: {g: v["anatomy"].get("lung_dice", {}).get("mean") for g, v in e.items()
                                         if isinstance(v, dict) and "anatomy" in v} for s, e in record["per_set"].items()}
    if "model" in record:
        summary["model"] = {}
        for s, e in record["per_set"].items():
            for g in ("held_out", "all"):
                m = e.get(g, {}).get("model")
                if m:
                    summary["model"][f"{s}/{g}"] = {"opacity_gIoU": m["opacity"].get("gIoU"),
                                                    "consolidation_gIoU": m["consolidation"].get("gIoU"),
                                                    "consolidation_absence": m["consolidation"].get("absent_when_not_outlined")}
    print(json.dumps(summary))
    return 0
