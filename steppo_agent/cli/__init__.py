"""The ``steppo`` command line. Each sub-command lives in its own module with ``add_parser(subparsers)``;
modules import heavy dependencies (torch, vllm) only inside their ``run`` function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# sub-command -> module (each module defines add_parser(subparsers) that sets `func`)
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "steppo_agent.cli.envs",
    "steppo_agent.cli.play",
    "steppo_agent.cli.rollout",
    "steppo_agent.cli.inspect_cmd",
    "steppo_agent.cli.games",
    "steppo_agent.cli.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steppo", description="Step-level agentic RL for LLM agents.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # sub-command not built in this installation
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
