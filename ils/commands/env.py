"""`ils env`: print the loopback-only settings as shell exports (the Makefile evaluates them)."""

from __future__ import annotations

import shlex

HELP = "print the loopback-only environment settings as shell export lines"


def add_arguments(parser) -> None:
    parser.add_argument("--state-dir", default=None, help="folder for Ray's HOME and caches (default: ray.local_state_dir)")


def run(args, cfg) -> int:
    from ils.runtime import loopback_env

    for key, value in loopback_env(args.state_dir or cfg.ray.local_state_dir).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
