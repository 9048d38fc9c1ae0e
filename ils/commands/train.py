"""`ils train`: fine-tune ROSALIA on Ray Train (DDP or DeepSpeed ZeRO-2), resumable."""

from __future__ import annotations

HELP = "fine-tune ROSALIA on Ray Train from a generated run; resumes a killed run"
DESCRIPTION = (
    "Fine-tune ROSALIA on the pairs of a generated run (--data) with Ray Train. Workers, DeepSpeed "
    "and checkpointing come from the train.* config. Checkpoints go to train.storage (default "
    "<store>/train-runs/<run>), where the run is train.name or, by default, a name keyed by --out: "
    "starting the same command again resumes from the latest checkpoint (train.resume=auto), "
    "train.resume=fresh starts over, train.resume=require fails when there is nothing to resume. "
    "The best checkpoint by validation gIoU is exported as an HF-format folder at --out."
)


def add_arguments(parser) -> None:
    parser.add_argument("--data", help="run URI written by `ils gen` (default: train.data, else <store>/<gen.out>)")
    parser.add_argument("--out", help="where to write the exported model (default: train.out, relative to the store)")


def run(args, cfg) -> int:
    import json

    import sys

    from ils.store import Store
    from rosalia.train import fit, prepare_run

    store = Store.from_config(cfg.store)
    # Resolved here, on the driver: a relative path means the store, not a worker's folder.
    data = store.uri(args.data or cfg.train.data or cfg.gen.out)
    out = args.out or cfg.train.out
    plan = prepare_run(cfg, data, out)
    print(f"ils train: {plan.describe()}", file=sys.stderr, flush=True)
    summary = fit(cfg, data, out, plan=plan)
    print(json.dumps(summary, indent=1, default=str))
    return 0
