"""`ils llm-serve --model PATH`: a local OpenAI-compatible chat endpoint (127.0.0.1 by default)."""

from __future__ import annotations

HELP = "serve a local Hugging Face causal LM (folder or .gguf) at /v1/chat/completions"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder or .gguf file")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="local", help="model id reported by /v1/models")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args, cfg) -> int:
    import logging

    from ilsgen.llm_server import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("ils").warning("llm-serve binds %s: reachable beyond this machine", args.host)
    serve(args.model, host=args.host, port=args.port, model_name=args.name, threads=args.threads)
    return 0
