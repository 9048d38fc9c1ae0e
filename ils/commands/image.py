"""`ils image FILE --out PNG`: decode one image the way the pipeline does and write what it sees."""

from __future__ import annotations

HELP = "decode a DICOM/PNG/JPEG the way the pipeline does; write it as an 8-bit PNG"
DESCRIPTION = (
    "ils image FILE --out PNG [--size N]. Decode FILE (a path, file:// or s3:// URI) into the normalised image the pipeline sees "
    "(lungs dark, stretched to a square of --size pixels), write it as an 8-bit PNG and print "
    "the safe metadata (no patient identifiers) as one JSON line."
)
TAKES_POSITIONALS = True


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output PNG (path, file:// or s3:// URI)")
    parser.add_argument(
        "--size", type=int, default=None,
        help="square output side in pixels (default: image.size; 0 keeps the decoded size)",
    )


def _split(target: str) -> tuple[str, str]:
    """(folder URI, file name) of a local path or URI; local paths are made absolute."""
    import posixpath
    from pathlib import Path

    if "://" not in target:
        target = str(Path(target).expanduser().resolve())
    folder, name = posixpath.split(target.rstrip("/"))
    return folder or "/", name


def run(args, cfg) -> int:
    import json

    from ils.errors import UserError
    from ils.imageio import read_image, resize_square, to_uint8
    from ils.store import Store

    if len(args.positionals) != 1:
        raise UserError(f"expected exactly one input FILE, got {len(args.positionals)}: {args.positionals}")
    size = cfg.image.size if args.size is None else args.size
    if size < 0:
        raise UserError(f"--size must be 0 or positive, got {size}")
    src_dir, src_name = _split(args.positionals[0])
    out_dir, out_name = _split(args.out)
    if not src_name or not out_name:
        raise UserError("FILE and --out must name files")
    image = read_image(Store.from_config(cfg.store, src_dir), src_name, cfg.image.max_pixels, cfg.image.max_bytes)
    pixels = resize_square(image.pixels, size) if size else image.pixels
    out = Store.from_config(cfg.store, out_dir)
    written = out.write_png(out_name, to_uint8(pixels))
    record = dict(image.meta, out=(f"s3://{written}" if out.is_s3 else written), height=int(pixels.shape[0]),
                  width=int(pixels.shape[1]))
    print(json.dumps(record, sort_keys=False))
    return 0
