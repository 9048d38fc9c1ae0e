"""`ils truth-pairs`: pairs from the phantoms' ground truth, to score a model against the truth.

    ils truth-pairs [--phantoms phantoms] [--out truth-test] [--split test] [--source real_base]
    ils eval --checkpoint CK --data truth-test --split test ...

Writes a run folder that `ils eval` reads (see `ils.phantom.truth_pairs`). Paths are relative
to the store unless URIs.
"""

from __future__ import annotations

HELP = "write a run folder of pairs made from the phantoms' ground truth (for `ils eval --data`)"


def add_arguments(parser) -> None:
    parser.add_argument("--phantoms", default="phantoms", help="folder written by `ils sample` (default: phantoms)")
    parser.add_argument("--out", default="truth-test", help="run folder to write (default: truth-test)")
    parser.add_argument("--split", default="test", help="studies of this split ('all' for every study; default: test)")
    parser.add_argument("--source", default=None, choices=("procedural", "real_base"),
                        help="only the studies of this source (truth/sources.parquet; default: every study)")


def run(args, cfg) -> int:
    import json

    from ils.errors import UserError
    from ils.phantom.truth_pairs import write_truth_run
    from ils.store import Store

    store = Store.from_config(cfg.store)
    out = store.child(args.out)
    try:
        n = write_truth_run(store.child(args.phantoms), out, None if args.split == "all" else args.split, cfg.gen.pairs.seed, args.source)
    except ValueError as exc:  # no study of that split / source: nothing was written
        raise UserError(str(exc)) from exc
    print(json.dumps({"out": out.root_uri, "pairs": n, "split": args.split, "source": args.source or "all"}))
    return 0
