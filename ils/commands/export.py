"""`ils export`: write a generation run in the released MIMIC-ILS layout."""

from __future__ import annotations

HELP = "write a generation run as MIMIC-ILS (JSON + lesion_mask/ tree)"


def add_arguments(parser) -> None:
    parser.add_argument("--run", help="generation run URI (default: gen.out in the store)")
    parser.add_argument("--out", help="output folder URI (default: <run>/export)")
    parser.add_argument("--manifest", help="study manifest (default: the one the run was made from)")


def run(args, cfg) -> int:
    import json

    from ils.store import Store
    from ilsgen.export import export_run

    store = Store.from_config(cfg.store)
    run_store = store.child(args.run or cfg.gen.out)
    out = store.child(args.out) if args.out else run_store.child("export")
    counts = export_run(run_store, out, args.manifest)
    print(json.dumps({"out": out.root_uri, **counts}))
    return 0
