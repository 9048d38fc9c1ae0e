"""`ils gen-eval`: score a generation run against phantom ground truth (SPEC issue 3, item 5).

    ils gen-eval --run RUN_URI --truth TRUTH_URI [--out JSON_URI]

Reads the run's findings/, mask_index/ and pairs/ (Parquet folders) and the truth folder that
`ils sample` writes (findings.parquet, masks.parquet, masks/*.png with mask_uri relative to the
truth folder), calls `ilsgen.quality.score_run`, prints a table and writes the figures as JSON
(default `<run>/quality.json`). Paths are relative to the store unless absolute or URIs; masks are
read with `Store.read_png`.
"""

from __future__ import annotations

HELP = "score a generation run against phantom ground truth (finding F1, mask IoU, negatives)"


def add_arguments(parser) -> None:
    parser.add_argument("--run", help="generation run URI (default: gen.out in the store)")
    parser.add_argument("--truth", help="phantom truth folder URI (default: <store>/phantoms/truth)")
    parser.add_argument("--out", help="JSON output URI (default: <run>/quality.json)")


def _rows(store, rel: str) -> list[dict]:
    """All rows of a Parquet file or folder; [] when it does not exist."""
    if not store.exists(rel):
        return []
    return store.read_parquet(rel).to_pylist()


def load_and_score(run_store, truth_store) -> dict:
    """Read a run and its truth and return `score_run`'s figures (plus counts)."""
    from ilsgen.quality import score_run

    pairs = _rows(run_store, "pairs")
    findings = _rows(run_store, "findings")
    masks = _rows(run_store, "mask_index")
    truth_findings = _rows(truth_store, "findings.parquet")
    truth_masks = _rows(truth_store, "masks.parquet")
    studies = {str(r["study_id"]) for r in _rows(run_store, "status")} or {str(p["study_id"]) for p in pairs}
    if studies:  # score only the studies the run processed (a --limit run covers a prefix)
        truth_findings = [r for r in truth_findings if str(r["study_id"]) in studies]
        truth_masks = [r for r in truth_masks if str(r["study_id"]) in studies]
    res = score_run(pairs, findings, masks, truth_findings, truth_masks,
                    lambda r: run_store.read_png(r["mask_uri"]), lambda r: truth_store.read_png(r["mask_uri"]))
    res["n_studies"] = len(studies)
    return res


def table(res: dict) -> str:
    """A short human-readable table of the figures."""
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    fs, fl = res["findings"]["strict"], res["findings"]["lesion_presence"]
    mi, neg = res["mask_iou"], res["negatives"]
    lines = [
        f"studies: {res.get('n_studies')}",
        f"findings F1 (lesion, presence, certainty): {f(fs['f1'])}  P {f(fs['precision'])}  R {f(fs['recall'])}",
        f"findings F1 (lesion, presence):            {f(fl['f1'])}",
        f"location accuracy:                         {f(res['location_accuracy'])}",
        f"negatives truly negative:                  {f(neg['correct_fraction'])}  (n={neg['n']})",
        f"mask IoU mean (instances):                 {f(mi['mean'])}",
        f"{'lesion':<15}{'n':>5}{'IoU':>8}{'union':>8}",
    ]
    for lesion, v in mi["per_lesion"].items():
        lines.append(f"{lesion:<15}{mi['count_per_lesion'][lesion]:>5}{v:>8.3f}{mi['union_per_lesion'].get(lesion, 0.0):>8.3f}")
    return "\n".join(lines)


def run(args, cfg) -> int:
    import json

    from ils.store import Store

    store = Store.from_config(cfg.store)
    run_store = store.child(args.run or cfg.gen.out)
    truth_store = store.child(args.truth or "phantoms/truth")
    res = load_and_score(run_store, truth_store)
    text = json.dumps(res, indent=2, default=float)
    if args.out:
        where = store.write_text(args.out, text)
    else:
        where = run_store.write_text("quality.json", text)
    print(table(res))
    print(f"quality: {where}")
    return 0
