"""`ils real-eval --data DIR --out URI`: anatomy and lesion masks scored on real radiographs."""

from __future__ import annotations

HELP = "score anatomy and the pipeline's lesion masks on real radiographs with expert masks"
DESCRIPTION = (
    "ils real-eval --data DIR --out URI [--sets a,b] [--limit N] [--no-lesions]. DIR is laid out like "
    "../shared/realcxr (<set>/images, <set>/masks/<structure>, index.csv). Writes URI/real_eval.json (per set and "
    "per image: lung, right and left lung Dice in each set's own lung convention, heart against the cardiac part of "
    "the cardiomediastinum, lesion-mask IoU next to the whole-lung answer) and URI/real_eval.png (worst and best cases)."
)


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="realcxr-layout folder")
    parser.add_argument("--out", required=True, help="output folder (path, file:// or s3:// URI)")
    parser.add_argument("--sets", default=None, help="comma-separated sets (default: all in index.csv)")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    parser.add_argument("--no-lesions", action="store_true", help="score the anatomy only")


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
    sets = tuple(s for s in args.sets.split(",") if s) if args.sets else None
    record, pics = evaluate(data, cfg, sets, args.limit, lesions=not args.no_lesions)
    if not record["per_image"]:
        raise UserError(f"no image of {sets or 'any set'} found in {args.data}")
    out = Store.from_config(cfg.store, args.out if "://" in args.out else str(Path(args.out).resolve()))
    out.write_text("real_eval.json", json.dumps(record, indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        figure(record, pics, Path(tmp) / "real_eval.png")
        out.write_bytes("real_eval.png", (Path(tmp) / "real_eval.png").read_bytes())
    summary = {s: {g: v["anatomy"].get("lung_dice", {}).get("mean") for g, v in e.items() if isinstance(v, dict) and "anatomy" in v}
               for s, e in record["per_set"].items()}
    print(json.dumps({"out": out.uri("real_eval.json"), "lung_dice_mean": summary}))
    return 0
