"""`ils report [FILE ...|-] [--backend rules|llm]`: structured findings of reports as JSON lines."""

from __future__ import annotations

import json
import sys

HELP = "structure free-text reports into findings (one JSON line per finding)"
DESCRIPTION = (
    "Print the structured findings of each report (file, lesion, presence, certainty, locations, sentence) "
    "as JSON lines, so the parser can be checked on any text. '-' (or no FILE) reads stdin. "
    "The backend and its LLM endpoint come from gen.report in the config."
)
TAKES_POSITIONALS = True


def add_arguments(parser) -> None:
    parser.add_argument("--backend", choices=("rules", "llm"), default=None, help="default: gen.report.backend")
    parser.add_argument("--stats", action="store_true", help="print the backend counters to stderr at the end")


def _read(name: str) -> str:
    from ils.errors import UserError

    if name == "-":
        return sys.stdin.read()
    try:
        with open(name, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise UserError(f"cannot read report {name!r}: {exc.strerror or exc}") from exc


def run(args, cfg) -> int:
    from ilsgen.report import make_report_backend

    if args.backend:
        cfg.gen.report.backend = args.backend
    from ilsgen.report.llm_client import in_flight, structure_many

    backend = make_report_backend(cfg.gen.report)
    files = args.positionals or ["-"]
    texts = [(name, _read(name)) for name in files]
    # gen.report.llm.max_in_flight reports at once; printed in input order
    for name, result in zip(files, structure_many(backend, texts, in_flight(cfg.gen.report))):
        if isinstance(result, Exception):
            raise result
        for row in result.rows:
            print(json.dumps({
                "file": name, "lesion": row["lesion"], "presence": row["present"], "certainty": row["certainty"],
                "locations": row["locations"], "sent_idx": row["sent_idx"], "sentence": row["sentence"],
                "source": row["source"],
            }), flush=True)
    if args.stats:
        print(json.dumps({"stats": backend.stats()}), file=sys.stderr)
    return 0
