"""The ``steppo`` command line. Each sub-command lives in its own module with ``add_parser(subparsers)``;
modules import heavy dependencies (torch, vllm) only inside their ``run`` function.

Errors: every mistake of the user's (a :class:`steppo_envs.UserError`, a pydantic validation error,
a bad flag) ends the command with one line ``steppo: error: <what> — <how to fix>`` on stderr and
exit code 2. ``--debug`` (or ``STEPPO_DEBUG=1``) shows the traceback instead, for bug reports. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

import pydantic

from steppo_agent.policies.vllm_settings import BenignNoticeFilter
from steppo_envs.config import UserError, describe_validation_error
from steppo_envs.progress import interactive

__all__ = ["ERROR_PREFIX", "Parser", "build_parser", "main"]

ERROR_PREFIX = "steppo: error: "


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as one ``steppo: error:`` line (exit code 2) instead of
    the usage block; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{ERROR_PREFIX}{message} (see {self.prog} --help)\n")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# sub-command -> module (each module defines add_parser(subparsers) that sets `func`)
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "steppo.cli.envs",
    "steppo.cli.play",
    "steppo.cli.rollout",
    "steppo.cli.inspect_cmd",
    "steppo.cli.games",
    "steppo.cli.train",
    "steppo.cli.gateway",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="steppo", description="Step-level agentic RL for LLM agents.")
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
        help="log level of steppo and of the vLLM engine (default WARNING; also STEPPO_LOG_LEVEL, "
             "or VLLM_LOGGING_LEVEL for vLLM alone)",
    )
    parser.add_argument("--debug", action="store_true", default=None,
                        help="show the traceback of a user error (also STEPPO_DEBUG=1), for bug reports")
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


def _configure_logging(level: str | None) -> None:
    """``--log-level`` (or ``STEPPO_LOG_LEVEL``) for Python logging and the vLLM engine (default WARNING)."""
    if level is not None:
        os.environ["STEPPO_LOG_LEVEL"] = level
        os.environ["VLLM_LOGGING_LEVEL"] = level  # an explicit flag wins over an inherited variable
    if not interactive():  # transformers / huggingface_hub bars ("Loading weights") are CR fragments in a log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    chosen = os.environ.get("STEPPO_LOG_LEVEL", "WARNING").upper()
    if chosen not in ("DEBUG", "INFO"):  # torch's C++ notices (e.g. vLLM's NUMA binding) only when asked
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    logging.basicConfig(level=chosen if chosen in LOG_LEVELS else "WARNING", format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # vLLM logs a few notices here before its own handler exists
        handler.addFilter(BenignNoticeFilter())


def user_error_line(exc: BaseException) -> str:
    """The one line printed for a user error (its message; a pydantic error as ``field: problem``)."""
    if isinstance(exc, pydantic.ValidationError):
        message = f"bad value: {describe_validation_error(exc)}: pass a value the option allows (see --help)."
    else:
        message = str(exc) or type(exc).__name__
    return ERROR_PREFIX + " ".join(message.split())


def _debug(args: argparse.Namespace) -> bool:
    return bool(args.debug) or os.environ.get("STEPPO_DEBUG", "").lower() in ("1", "true", "yes", "on")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    # Python hides DeprecationWarnings raised inside libraries; a renamed env option is the user's to fix.
    warnings.filterwarnings("default", message=r".*the option .* is deprecated", category=DeprecationWarning)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, pydantic.ValidationError) as exc:
        if _debug(args):
            raise
        sys.stdout.flush()
        print(user_error_line(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
