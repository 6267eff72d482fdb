"""Helpers shared by sub-commands."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["parse_env_kwargs"]


def parse_env_kwargs(items: list[str] | None) -> dict[str, Any]:
    """Parse repeated ``--env-arg key=value`` options; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--env-arg {item!r} must look like key=value, e.g. --env-arg max_steps=5")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
