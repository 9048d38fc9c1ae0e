"""`ils sample`: write synthetic phantom CXR studies (DICOM + report + separate ground truth)."""

from __future__ import annotations

HELP = "write N synthetic phantom chest X-ray studies (manifest, DICOMs, reports, truth/)"


def add_arguments(parser) -> None:
    parser.add_argument("--n", type=int, default=None, help="number of studies (default: sample.n)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: sample.seed)")
    parser.add_argument("--out", default=None, help="output folder (relative to the store) or URI (default: sample.out or <store>/phantoms)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: sample.size)")
    parser.add_argument("--workers", type=int, default=None, help="process pool size (default: sample.workers)")


def run(args, cfg) -> int:
    from ils.errors import UserError
    from ils.phantom.write import write_phantoms
    from ils.store import Store

    s = cfg.sample
    s.n = args.n if args.n is not None else s.n
    s.seed = args.seed if args.seed is not None else s.seed
    s.size = args.size if args.size is not None else s.size
    workers = args.workers if args.workers is not None else s.workers
    if s.n < 1:
        raise UserError(f"--n must be at least 1 (got {s.n})")
    if not 32 <= s.size <= 8192 or cfg.image.size < 32:
        raise UserError(f"image size must be in 32..8192 (got sample.size={s.size}, image.size={cfg.image.size})")
    for name in ("normal_fraction", "monochrome1_fraction", "val_fraction", "test_fraction"):
        if not 0.0 <= getattr(s, name) <= 1.0:
            raise UserError(f"sample.{name} must be in [0, 1] (got {getattr(s, name)})")
    if s.val_fraction + s.test_fraction > 1.0:
        raise UserError("sample.val_fraction + sample.test_fraction must not exceed 1")
    base = Store.from_config(cfg.store)
    out = args.out or s.out
    # Like every other path: relative to the store unless a URI, an absolute or a ./ path.
    if out and out.startswith(("./", "../")):
        store = Store.from_config(cfg.store, out)
    else:
        store = base.child(out or "phantoms")
    summary = write_phantoms(store, s.n, s.seed, cfg, workers=workers)
    print("\n".join(summary.lines()))
    return 0
