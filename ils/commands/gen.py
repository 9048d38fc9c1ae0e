"""`ils gen`: regenerate an ILS dataset (masks + instruction-answer pairs) from studies."""

from __future__ import annotations

HELP = "regenerate masks and instruction-answer pairs from studies (Ray Data pipeline)"
DESCRIPTION = (
    "Run decode -> report structuring -> anatomy | anomaly | detection -> mask fusion -> "
    "location verification -> pairs over a study manifest (Parquet, CSV or JSONL with "
    "study_id, image_uri, report). Re-running the same --out resumes: finished studies are skipped."
)


def add_arguments(parser) -> None:
    parser.add_argument("--input", help="study manifest URI (default: gen.input, else <store>/phantoms/manifest.parquet)")
    parser.add_argument("--out", help="run folder URI, relative to the store unless absolute (default: gen.out)")
    parser.add_argument("--engine", choices=("ray", "plain"), default="ray", help="Ray Data (default) or a plain single-process loop")
    parser.add_argument("--limit", type=int, default=None, help="process at most N not-yet-finished studies")


def run(args, cfg) -> int:
    from ilsgen.pipeline import run_generation
    from ilsgen.summary import format_summary

    input_uri = args.input or cfg.gen.input or "phantoms/manifest.parquet"
    summary = run_generation(cfg, input_uri, args.out or cfg.gen.out, engine=args.engine, limit=args.limit)
    print(format_summary(summary))
    return 0
