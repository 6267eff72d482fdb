"""Helpers for the one-config-object-per-component rule.

Every environment takes ``config: SomeConfig | None`` plus keyword overrides of that config's fields,
so ``gymnasium.make("steppo/MultiHopQA-v0", max_steps=3)`` works and a typo raises an error naming
the valid fields instead of being swallowed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["ConfigError", "build_config"]

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad configuration value; the message says how to fix it."""


def build_config(cls: type[C], config: C | None, overrides: dict[str, Any]) -> C:
    """Return ``config`` (or ``cls()``) with ``overrides`` applied, rejecting unknown field names."""
    if config is not None and not isinstance(config, cls):
        raise ConfigError(f"config must be a {cls.__name__}, got {type(config).__name__}: build it with {cls.__name__}(...).")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}: valid options are {', '.join(sorted(names))}."
        )
    base = config if config is not None else cls()
    return dataclasses.replace(base, **overrides) if overrides else base  # type: ignore[type-var]
