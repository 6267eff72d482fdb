"""Helpers for the one-config-object-per-component rule.

Every environment takes ``config: SomeConfig | None`` plus keyword overrides of that config's fields,
so ``gymnasium.make("steppo/MultiHopQA-v0", max_steps=3)`` works and a typo raises an error naming
the valid fields instead of being swallowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, TypeVar

import pydantic

__all__ = ["ConfigError", "UserError", "build_config", "describe_validation_error", "did_you_mean", "validate_dataclass"]

C = TypeVar("C")


class UserError(Exception):
    """A mistake in what the user asked for (an option, a file, a name, a server, a missing extra).

    Its message says what is wrong and how to fix it, in one sentence. The ``steppo`` command prints
    it as ``steppo: error: <message>`` with exit code 2 and no traceback (``--debug`` shows one).
    Every steppo error meant for users derives from it, next to the standard class it refines
    (``ConfigError`` is also a ``ValueError``, ``DataDirError`` a ``FileNotFoundError``, ...).
    """


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message says how to fix it."""


def did_you_mean(unknown: list[str], valid: set[str] | list[str]) -> str:
    """`` (did you mean max_steps?)`` for the closest valid names of misspelt ones, else ``""``."""
    close = [m for name in unknown for m in difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)]
    return f" (did you mean {', '.join(close)}?)" if close else ""


def describe_validation_error(exc: pydantic.ValidationError) -> str:
    """One line for a pydantic error: ``field: problem (got value)`` for each problem, joined by ``;``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "value"
        got = err.get("input")
        shown = repr(got) if len(repr(got)) <= 60 else repr(got)[:57] + "..."
        parts.append(f"{where}: {err.get('msg', 'invalid')} (got {shown})")
    return "; ".join(parts)


@functools.lru_cache(maxsize=64)
def _adapter(cls: type) -> pydantic.TypeAdapter[Any] | None:
    try:
        return pydantic.TypeAdapter(cls)
    except pydantic.PydanticUserError:  # a field type pydantic cannot check: fields are taken as given
        return None


def validate_dataclass(cls: type[C], values: dict[str, Any]) -> C:
    """``cls(**values)`` with every field checked (and plain coercions such as ``"5"`` -> ``5`` done)
    against its annotation; a wrong type or value raises :class:`ConfigError` naming the field."""
    adapter = _adapter(cls)
    try:
        if adapter is None:
            return cls(**values)
        return adapter.validate_python(values)  # type: ignore[no-any-return]  (the adapter builds a cls)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"bad value for {cls.__name__}: {describe_validation_error(exc)}.") from None


def build_config(cls: type[C], config: C | None, overrides: dict[str, Any]) -> C:
    """Return ``config`` (or ``cls()``) with ``overrides`` applied, rejecting unknown field names."""
    if config is not None and not isinstance(config, cls):
        raise ConfigError(f"config must be a {cls.__name__}, got {type(config).__name__}: build it with {cls.__name__}(...).")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}{did_you_mean(unknown, names)}: valid options are {', '.join(sorted(names))}."
        )
    base = config if config is not None else cls()
    if not overrides:
        return base
    return validate_dataclass(cls, {**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, **overrides})  # type: ignore[arg-type]
