"""`ils config`: print the merged, validated configuration as YAML."""

from __future__ import annotations

HELP = "print the merged configuration (file + overrides) as YAML"


def add_arguments(parser) -> None:
    pass


def run(args, cfg) -> int:
    from ils.config import to_yaml

    print(to_yaml(cfg), end="")
    return 0
