"""`ils eval`: score a ROSALIA checkpoint on pairs (gIoU, cIoU, N-Acc, text accuracy)."""

from __future__ import annotations

HELP = "score a ROSALIA checkpoint on a run's pairs: report.json + report.png"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint folder or URI (default: eval.checkpoint / model.checkpoint)")
    parser.add_argument("--data", help="run folder or URI with pairs/ (default: eval.data)")
    parser.add_argument("--out", help="output folder or URI (default: eval.out, relative to the store)")
    parser.add_argument("--split", help="which split to score (default: eval.split; 'all' for every pair)")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N pairs")
    parser.add_argument("--no-text", action="store_true", help="skip answer generation (masks only)")
    parser.add_argument("--label-ceiling", default=None, metavar="GEN_RUN",
                        help="with --data a truth-pairs run (`ils truth-pairs`): also score GEN_RUN's ilsgen masks against "
                             "the same truth pairs and print model vs truth next to ilsgen labels vs truth")


def run(args, cfg) -> int:
    import logging

    from ils.errors import UserError
    from ils.store import Store
    from rosalia.data import PairDataset
    from rosalia.evaluate import evaluate, metrics_table, write_report
    from rosalia.model import load_model

    ck = args.checkpoint or cfg.eval.checkpoint or cfg.model.checkpoint
    data = args.data or cfg.eval.data
    if not ck:
        raise UserError("no checkpoint: pass --checkpoint or set eval.checkpoint")
    if not data:
        raise UserError("no data: pass --data RUN_URI or set eval.data")
    store = Store.from_config(cfg.store)
    run_store = Store.from_config(cfg.store, data if ("://" in data or data.startswith("/")) else store.uri(data))
    out = args.out or cfg.eval.out
    model = load_model(ck, cfg.model, store=store if not ("://" in ck or ck.startswith("/") or ck.startswith(".")) else None)
    split = args.split or cfg.eval.split
    if args.label_ceiling:  # a mistyped run fails here, not after the whole evaluation
        gen = args.label_ceiling
        gen_uri = gen if ("://" in gen or gen.startswith("/")) else store.uri(gen)
        if not Store.from_config(cfg.store, gen_uri).exists("pairs"):
            raise UserError(f"--label-ceiling {gen!r}: no ilsgen run there ({gen_uri} has no pairs/)")
    ds = PairDataset.from_run(run_store, None if split == "all" else split, model.spec["image_size"], model.mask_size, limit=args.limit)
    logging.getLogger(__name__).info("scoring %d pairs", len(ds))
    records: list[dict] = []
    report, examples = evaluate(model, ds, cfg.eval.batch_size, cfg.eval.cleanup_min_component_frac,
                                generate_text=not args.no_text, max_examples=cfg.eval.max_examples, records_out=records)
    if cfg.eval.paraphrases:
        from rosalia.evaluate import add_paraphrase_report

        add_paraphrase_report(report, records, model, ds, cfg.eval.batch_size, cfg.eval.cleanup_min_component_frac, not args.no_text)
    report["checkpoint"] = ck.rstrip("/").rsplit("/", 1)[-1]
    report["split"] = split
    if args.label_ceiling:
        from ils.label_ceiling import compare, label_ceiling

        ceiling = label_ceiling(run_store, Store.from_config(cfg.store, gen_uri), split)
        report["label_ceiling"] = {"gen_run": gen_uri, **(ceiling or {"note": "no ilsgen masks (mask_index) in the run"})}
        report["comparison"] = compare(report, ceiling, dataset=run_store.root_uri)
    paths = write_report(store, out, report, examples)
    print(metrics_table(report))
    if args.label_ceiling:
        from ils.label_ceiling import compare_lines

        print("\n".join(compare_lines(report["comparison"]) or ["label ceiling: no ilsgen masks in " + args.label_ceiling]))
    print(f"report: {paths['json']}\nfigure: {paths['png']}")
    return 0
