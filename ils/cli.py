"""The `ils` console command: one subcommand per job step.

Each subcommand lives in `ils/commands/<name>.py` and exposes `HELP`, `add_arguments(parser)`
and `run(args, cfg) -> int`; its heavy imports happen inside `run`, so `ils --help` is fast.
Every subcommand takes `--config FILE` (default: configs/local.yaml) and `key=value` overrides.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from typing import Sequence

from ils.config import DEFAULT_CONFIG, ConfigError, load_config

#: Order of subcommands in --help; modules found in ils/commands but not listed come last.
ORDER: tuple[str, ...] = (
    "sample", "image", "gen", "export", "report", "gen-eval", "llm-serve", "detector",
    "train", "eval", "convert-lisa", "serve", "submit", "jobs", "bench", "demo", "env", "config",
)


def discover() -> dict[str, str]:
    """subcommand name -> module name under ils.commands (a module may set NAME)."""
    import pkgutil

    import ils.commands

    found = {}
    for info in pkgutil.iter_modules(ils.commands.__path__):
        if info.name.startswith("_"):
            continue
        found[info.name.replace("_", "-")] = info.name
    aliases = {"evaluate": "eval", "show-config": "config"}
    found = {aliases.get(k, k): v for k, v in found.items()}
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


COMMANDS: dict[str, str] = discover()

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")

log = logging.getLogger("ils")


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides, other positionals): `section.key=value` items are config overrides."""
    overrides = [i for i in items if _OVERRIDE.match(i)]
    others = [i for i in items if not _OVERRIDE.match(i)]
    return overrides, others


def _load(name: str):
    return importlib.import_module(f"ils.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ils",
        description="Instruction-guided lesion segmentation of chest X-rays on Ray: "
        "regenerate the dataset (gen), fine-tune and score ROSALIA (train, eval), serve it (serve).",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _load(name)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
        mod.add_arguments(p)
        if not any(a.dest == "rest" for a in p._actions):
            p.add_argument("rest", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. store.uri=s3://bucket/run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ils.runtime import apply_loopback_env, setup_logging

    parser = build_parser()
    # parse_known_args: overrides may also follow options (`ils image F --out x.png image.size=3`)
    args, unknown = parser.parse_known_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    overrides, others = split_overrides(list(getattr(args, "rest", []) or []) + unknown)
    if any(o.startswith("-") for o in others):
        parser.error(f"{args.command}: unrecognized argument(s) {[o for o in others if o.startswith('-')]}")
    mod = _load(args.command)
    if others and not getattr(mod, "TAKES_POSITIONALS", False):
        parser.error(f"{args.command}: unexpected argument(s) {others}; overrides look like section.key=value")
    args.overrides, args.positionals = overrides, others
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"ils: config error: {exc}", file=sys.stderr)
        return 2
    apply_loopback_env(cfg.ray.local_state_dir, set_home=False)
    try:
        return int(mod.run(args, cfg) or 0)
    except KeyboardInterrupt:
        print("ils: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors: one line, no traceback unless DEBUG
        from ils.errors import UserError

        if isinstance(exc, UserError):
            print(f"ils {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
