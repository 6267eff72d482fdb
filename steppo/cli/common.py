"""Helpers shared by sub-commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from steppo_agent.policies import MAX_SEED
from steppo_envs.config import UserError

__all__ = ["ENV_ARG_HELP", "MAX_SEED", "UsageError", "check_readable_file", "check_writable_dir", "parse_env_kwargs",
           "seed_value"]

#: Help of every ``--env-arg`` flag (docs/cli.md, "Environment options").
ENV_ARG_HELP = (
    "environment option (repeatable); VALUE is JSON when it parses, else the plain string: max_steps=5, "
    "invalid_penalty=0.1, expert=true, data_dir=null, 'game_files=[\"a.z8\",\"b.z8\"]' (a list, even of one), "
    "split=eval (not JSON: the string), 'name=\"123\"' (a string that looks like a number)"
)


class UsageError(UserError, ValueError):
    """A flag or argument of the command line is wrong; the message names the fix."""


def parse_env_kwargs(items: list[str] | None, flag: str = "--env-arg") -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` options; values are JSON when they parse, else strings.

    ``max_steps=5`` -> ``5``; ``expert=true`` -> ``True``; ``data_dir=null`` -> ``None``;
    ``game_files=["a.z8"]`` -> ``["a.z8"]``; ``split=eval`` -> ``"eval"`` (not JSON, so the text);
    ``name="123"`` -> ``"123"`` (JSON quotes keep a number-like value a string); ``key=`` -> ``""``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r} must look like key=value, e.g. {flag} max_steps=5.")
        try:
            out[key.strip()] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or absurdly nested): the string itself
            out[key.strip()] = value
    return out


def seed_value(text: str) -> int:
    """argparse ``type`` of a seed flag: an integer in ``0..MAX_SEED`` (``0 <= seed < 2**63``), else one
    ``steppo: error:`` line naming the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (a seed is an integer in 0..{MAX_SEED})") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is out of range: pass an integer in 0..{MAX_SEED} (0 <= seed < 2**63)")
    return value


def check_writable_dir(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and check it is writable, else a :class:`UsageError` naming ``what``."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the {what} folder {str(path)!r} ({exc.strerror or exc}): "
                         "choose a folder you can write to.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"the {what} folder {str(path)!r} is not writable: choose a folder you can write to.")
    return path


def check_readable_file(file: str | Path, what: str) -> Path:
    """``file`` if it is a readable file, else a :class:`UsageError` naming ``what``."""
    path = Path(file).expanduser()
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder, not a file: pass the path of a file in it.")
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist or is not a file: check the path.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {str(path)!r} is not readable: check its permissions.")
    return path
