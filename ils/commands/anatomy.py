"""`ils anatomy IMAGE... --out DIR` (region masks + overlay per image) and `ils anatomy train`."""

from __future__ import annotations

HELP = "segment the anatomy of your own images (lite backend), or train its network"
DESCRIPTION = (
    "ils anatomy IMAGE... --out DIR: for each image write DIR/<stem>/<region>.png (0/255, at the image's own size; "
    "one per location of the vocabulary, spaces as underscores: lung.png, left_lung.png, heart.png, "
    "right_upper_zone_lung.png, ...) and DIR/<stem>/overlay.png, with the configured anatomy backend "
    "(gen.anatomy). A bad image gets its error on stderr and the others still run. "
    "ils anatomy train --data DIR [--out FILE]: train the lite anatomy network on a realcxr-layout folder "
    "plus phantoms (bounded CPU run) and write its weights file."
)
TAKES_POSITIONALS = True


def add_arguments(parser) -> None:
    parser.add_argument("--out", default=None, help="output folder (segment) or weights file (train; default: the shipped file)")
    parser.add_argument("--data", default=None, help="train: realcxr-layout folder (<set>/images, <set>/masks, index.csv)")
    parser.add_argument("--steps", type=int, default=1500, help="train: optimiser steps (default 1500)")
    parser.add_argument("--minutes", type=float, default=14.0, help="train: wall-clock budget (default 14)")
    parser.add_argument("--phantoms", type=int, default=60, help="train: phantom studies mixed in (default 60)")
    parser.add_argument("--input-size", type=int, default=160, help="train: network input side (default 160)")
    parser.add_argument("--all", action="store_true", help="train: include the held-out fifth of each set")
    parser.add_argument("--fold", type=int, default=4, choices=range(5), help="train: held-out fifth, position %% 5 == FOLD (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")


def run(args, cfg) -> int:
    from ils.errors import UserError

    pos = list(args.positionals)
    if pos and pos[0] == "train":
        if len(pos) > 1:
            raise UserError(f"ils anatomy train takes no positional arguments, got {pos[1:]}")
        return _train(args)
    if not pos:
        raise UserError("expected one or more IMAGE files (or `train`)")
    if not args.out:
        raise UserError("--out DIR is required")
    from ilsgen.anatomy_files import segment_files

    return segment_files(pos, args.out, cfg)


def _train(args) -> int:
    import json
    import shlex
    import sys
    from pathlib import Path

    from ils.errors import UserError
    from ilsgen.anatomy_net.model import WEIGHTS
    from ilsgen.anatomy_net.train import TrainSettings, train

    if not args.data or not (Path(args.data) / "index.csv").is_file():
        raise UserError(f"--data must be a realcxr-layout folder (index.csv, <set>/images, <set>/masks/<structure>), got {args.data!r}")
    cmd = "ils anatomy train " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("train") + 1 :]) if "train" in sys.argv else ""
    st = TrainSettings(data=str(Path(args.data).resolve()), out=str(args.out or WEIGHTS), steps=args.steps, minutes=args.minutes,
                       phantoms=args.phantoms, input_size=args.input_size, include_held_out=args.all, fold=args.fold,
                       threads=args.threads, command=cmd)
    meta = train(st)
    print(json.dumps({k: meta[k] for k in ("steps_done", "final_loss", "held_out_dice_input_size", "train_seconds")}))
    return 0
