"""`ils convert-lisa SRC DST`: import an original LISA / ROSALIA checkpoint as a rosalia checkpoint."""

from __future__ import annotations

HELP = "import an original LISA / ROSALIA checkpoint (LoRA merged) into the rosalia HF layout"
DESCRIPTION = (
    "Convert a LISA-style state dict (a .bin/.pt/.safetensors file, or a folder of sharded "
    "pytorch_model-*.bin / *.safetensors with an index json; local or s3://) into the folder "
    "layout that `ils eval`, `ils serve` and model.checkpoint read. LISA has no presence head: it "
    "is initialised open (rosalia.json: presence_head = 'untrained, open'), so eval/serve fall back "
    "to the ungated protocol until it is trained. The source's config.json (LLaMA hyper-parameters) and "
    "tokenizer ([SEG], <im_start>, <im_end>) are read and checked before the weights; the checkpoint "
    "records its prompt style (LLaVA v1 conversation with <im_start><image><im_end>, as LISA trains)."
)
TAKES_POSITIONALS = True


def add_arguments(parser) -> None:
    parser.add_argument("rest", nargs="*", metavar="SRC DST [KEY=VALUE]",
                        help="source checkpoint (file or folder, path or s3://), destination folder, config overrides")
    parser.add_argument("--size", choices=["auto", "tiny", "7b"], default="auto",
                        help="model size (default: auto, 7b when the LLM hidden size is 4096)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: SRC when it holds one; tiny: the word tokenizer)")
    parser.add_argument("--vision-tower", dest="vision_tower",
                        help="CLIP weights (e.g. a clip-vit-large-patch14 folder) when SRC lacks the vision tower, "
                             "as LISA's merge script leaves it out")
    parser.add_argument("--prompt-style", dest="prompt_style", choices=["auto", "llava_v1", "llava_v1_no_im_tags", "plain"],
                        default="auto", help="prompt the checkpoint was trained with (default: auto, llava_v1 unless "
                                             "config.json sets mm_use_im_start_end false)")
    parser.add_argument("--dtype", choices=["keep", "float32", "bfloat16", "float16"], default="keep",
                        help="dtype of the written weights (default: keep the source's)")


def run(args, cfg) -> int:
    import json

    from ils.errors import UserError
    from ils.store import Store
    from rosalia.model.convert_lisa import convert

    if len(args.positionals) != 2:
        raise UserError(f"expected SRC DST, got {args.positionals}")
    src, dst = args.positionals
    store = Store.from_config(cfg.store) if any("://" in p and not p.startswith("file://")
                                                 for p in (src, dst, args.tokenizer or "", args.vision_tower or "")) else None
    summary = convert(src, dst, cfg.model, size=args.size, tokenizer=args.tokenizer,
                      vision_tower=args.vision_tower, dtype=args.dtype, store=store,
                      prompt_style=args.prompt_style)
    print(json.dumps(summary))
    return 0
