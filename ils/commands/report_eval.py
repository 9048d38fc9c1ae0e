"""`ils report-eval [--iu TGZ_OR_DIR] [--backend rules|llm]`: score a report parser on real reports.

Reads the Indiana University reports (ilsgen.report.iu; by default the tgz inside the installed
torchxrayvision package), structures each with the backend and scores it against the reports'
human MeSH tags (ilsgen.report.yardstick). Only the odd-numbered files are read unless
`--split even` is given: the even ones are the held-out evaluation split, never for tuning.
"""

from __future__ import annotations

HELP = "score the report parser against human MeSH tags of real (IU) chest X-ray reports"
DESCRIPTION = (
    "Per-lesion precision/recall/F1, macro F1, side agreement and the costliest confusions of a report "
    "backend on the Indiana University reports (odd-numbered files only unless --split even). "
    "Prints a table; --out writes the JSON (a store path or URI)."
)


def add_arguments(parser) -> None:
    parser.add_argument("--iu", default=None, help="NLMCXR_reports.tgz or a folder of N.xml files "
                        "(default: the tgz of the installed torchxrayvision package)")
    parser.add_argument("--backend", choices=("rules", "llm"), default=None, help="default: gen.report.backend")
    parser.add_argument("--split", choices=("odd", "even"), default="odd",
                        help="odd (development, default) or even (held-out: evaluation only, never tuning)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N reports of the split")
    parser.add_argument("--balanced", action="store_true",
                        help="with --limit: half the reports with a headline MeSH tag, half without (in file order); "
                             "for slow backends, so that a small subset has positives to score")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")


def run(args, cfg) -> int:
    import json
    import logging

    from ils.errors import UserError
    from ilsgen.report import make_report_backend
    from ilsgen.report.iu import LoadStats, load_reports
    from ilsgen.report.yardstick import score, table

    log = logging.getLogger("ils.report_eval")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be a positive number of reports")
    if args.backend:
        cfg.gen.report.backend = args.backend
    if args.split == "even":
        log.warning("scoring the held-out even-numbered IU reports: for independent evaluation only, never tuning")
    stats = LoadStats(args.split)
    if args.balanced and args.limit is None:
        raise UserError("--balanced needs --limit")
    reports = load_reports(args.iu, split=args.split, limit=None if args.balanced else args.limit, stats=stats)
    if args.balanced:
        from ilsgen.report.yardstick import balanced_subset

        reports = balanced_subset(reports, args.limit)
    llm = cfg.gen.report.backend == "llm"
    if llm:  # score the model's own answers: no silent fallback to rules; a failed report has no findings
        cfg.gen.report.llm.fallback_to_rules = False
    backend = make_report_backend(cfg.gen.report)
    failed: list[str] = []

    def structure(report):
        from ilsgen.report.llm import LLMReportError

        try:
            return backend.structure_ex(report.report_id, report.text).rows
        except LLMReportError:
            failed.append(report.report_id)
            return []

    res = score(reports, structure, stats)
    res["backend"] = cfg.gen.report.backend
    res["subset"] = "balanced" if args.balanced else "first" if args.limit else "all"
    if llm:
        res["llm"] = {"base_url": cfg.gen.report.llm.base_url, "model": cfg.gen.report.llm.model,
                      "failed_reports": len(failed), "failed_report_ids": failed[:20], "stats": backend.stats()}
        log.info("LLM answers failed for %d of %d reports (scored as no findings)", len(failed), res["reports"])
    print(table(res))
    if args.out:
        from ils.store import Store

        where = Store.from_config(cfg.store).write_text(args.out, json.dumps(res, indent=2))
        print(f"report-eval: {where}")
    return 0
