"""Helpers for the one-config-object-per-component rule.

Every environment takes ``config: SomeConfig | None`` plus keyword overrides of that config's fields,
so ``gymnasium.make("steppo/MultiHopQA-v0", max_steps=3)`` works and a typo raises an error naming
the valid fields instead of being swallowed. The configs are pydantic models deriving from
:class:`~steppo_envs.config_model.ConfigModel` (frozen for the envs); :func:`build_config` also takes
a plain dataclass config (an older env of your own), checking its fields' types the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
import warnings
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TypeVar, cast

import pydantic

__all__ = [
    "ConfigError",
    "UserError",
    "build_config",
    "deprecated_aliases",
    "describe_validation_error",
    "did_you_mean",
    "renamed_options",
    "replace_config",
    "resolve_aliases",
    "validate_dataclass",
    "with_max_steps",
]

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
    adapter = _adapter(cast(type, cls))  # a class is hashable (the lru_cache key)
    try:
        if adapter is None:
            return cls(**values)
        built: C = adapter.validate_python(values)  # the adapter of a dataclass builds that dataclass
        return built
    except pydantic.ValidationError as exc:
        raise ConfigError(f"bad value for {cls.__name__}: {describe_validation_error(exc)}.") from None


def _is_model(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)


def _field_names(cls: type) -> list[str]:
    """The field names of a config class (a pydantic model or a dataclass), in declaration order."""
    if _is_model(cls):
        return list(cast(type[pydantic.BaseModel], cls).model_fields)
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type[C], values: dict[str, Any]) -> C:
    """``cls`` from ``values``, every field checked; a bad one raises :class:`ConfigError` naming the fix."""
    if not _is_model(cls):
        return validate_dataclass(cls, values)
    if hasattr(cls, "build"):  # a ConfigModel: its own one-sentence errors
        built: C = cast(Any, cls).build(values)
        return built
    try:
        validated: C = cast(Any, cls).model_validate(values)
        return validated
    except pydantic.ValidationError as exc:
        raise ConfigError(f"bad value for {cls.__name__}: {describe_validation_error(exc)}.") from None


def replace_config(config: C, **changes: Any) -> C:
    """A validated copy of ``config`` with ``changes`` (``dataclasses.replace`` / ``model_copy(update=...)``
    plus the config's checks): a bad value raises :class:`ConfigError` naming the fix."""
    names = _field_names(type(config))
    return _build(type(config), {**{name: getattr(config, name) for name in names}, **changes})


def with_max_steps(config: C, max_steps: int) -> C:
    """``config`` with ``max_steps`` replaced (and checked): what every env's ``set_max_steps``
    (``gymnasium.make(id, max_episode_steps=N)``) does to its config."""
    return replace_config(config, max_steps=max_steps)


# -- deprecated option names -------------------------------------------------------------------------
#: Deprecated option names of each config class (old name -> new name), set by :func:`renamed_options`.
_RENAMED: dict[type, dict[str, str]] = {}

_INTERNAL_PREFIXES = ("steppo_envs", "gymnasium", "pydantic", "dataclasses", "functools")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside steppo_envs / Gymnasium."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if not module.startswith(_INTERNAL_PREFIXES):
            return level
        frame, level = frame.f_back, level + 1
    return level


def resolve_aliases(owner: str, aliases: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every deprecated name of ``aliases`` (old -> new) replaced by its new name.

    Each old name used emits a :class:`DeprecationWarning` naming the new one (pointed at the
    caller's code); giving both the old and the new name is a :class:`ConfigError`. This is the one
    alias mechanism of steppo_envs: config fields (:func:`build_config`) and reset options use it.
    """
    out = dict(values)
    for old, new in aliases.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{owner} got both {old!r} and {new!r}: give only {new!r} ({old!r} is its deprecated old name).")
        warnings.warn(
            f"{owner}: the option {old!r} is deprecated and will be removed in the next release: use {new!r}.",
            DeprecationWarning,
            stacklevel=_user_stacklevel(),
        )
        out[new] = out.pop(old)
    return out


def deprecated_aliases(cls: type) -> dict[str, str]:
    """The deprecated option names of config class ``cls`` (old -> new), its base classes' included."""
    table: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        table.update(_RENAMED.get(klass, {}))
    return table


def renamed_options(**renames: str) -> Callable[[type[C]], type[C]]:
    """Class decorator of a config class: ``@renamed_options(old_name="new_name")`` keeps ``old_name``
    working for one release (in :func:`build_config`, ``gymnasium.make`` overrides and the class's own
    constructor), with a :class:`DeprecationWarning`. A :class:`~steppo_envs.config_model.ConfigModel`
    maps the old names in its ``model_validator(mode="before")``; a dataclass gets its ``__init__`` wrapped."""

    def decorate(cls: type[C]) -> type[C]:
        names = set(_field_names(cls))
        missing = sorted(set(renames.values()) - names)
        if missing:
            raise TypeError(f"renamed_options on {cls.__name__}: {missing} are not fields")
        _RENAMED[cls] = dict(renames)
        if _is_model(cls):  # ConfigModel resolves deprecated_aliases(cls) before validating
            return cls
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **resolve_aliases(cls.__name__, deprecated_aliases(type(self)), kwargs))

        cls.__init__ = __init__  # type: ignore[method-assign]  # the dataclass __init__, wrapped to accept the old names
        return cls

    return decorate


def build_config(cls: type[C], config: C | None, overrides: dict[str, Any]) -> C:
    """Return ``config`` (or ``cls()``) with ``overrides`` applied and checked, rejecting unknown field names.

    A deprecated name (:func:`renamed_options`) is mapped to its new field with a ``DeprecationWarning``."""
    if config is not None and not isinstance(config, cls):
        raise ConfigError(f"config must be a {cls.__name__}, got {type(config).__name__}: build it with {cls.__name__}(...).")
    overrides = resolve_aliases(cls.__name__, deprecated_aliases(cls), overrides)
    names = set(_field_names(cls))
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}{did_you_mean(unknown, names)}: valid options are {', '.join(sorted(names))}."
        )
    base = config if config is not None else cls()
    if not overrides:
        return base
    return replace_config(base, **overrides)
