"""One configuration style for every component: pydantic models with a description per field,
unknown names rejected, and every problem raised as one :class:`~steppo_envs.config.ConfigError`
sentence that names the fix (the ``steppo`` command prints it as ``steppo: error: ...``).

The environment configs (``ToolEnvConfig``, ``MultiHopQAConfig``, ``PaperSearchConfig``, the text
worlds' ``EpisodeSettings`` and its subclasses) and the agent and trainer configs (``PolicyConfig``,
``RolloutConfig``, ``TrainConfig``, ``GatewayConfig``) derive from
:class:`ConfigModel`. A range check is a ``Field`` constraint (``ge=1``, ``gt=0, le=1``), reported as
``iterations must be >= 1 (got -3): e.g. iterations=10``; a cross-field check is a validator that
raises ``ConfigError`` with its own message (kept as it is). A renamed field keeps its old name for
one release with :func:`~steppo_envs.config.renamed_options` (a ``DeprecationWarning`` names the new
one)."""

from __future__ import annotations

import contextvars
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

import annotated_types
import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic.fields import FieldInfo

from steppo_envs.config import ConfigError, deprecated_aliases, did_you_mean, resolve_aliases

__all__ = ["ConfigModel", "PathStr", "explain_validation_error", "field_info"]

def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathStr = Annotated[str, BeforeValidator(_fspath)]
"""A path field stored as a string: a ``pathlib.Path`` (any ``os.PathLike``) is taken too."""

#: True while a config is being validated (nested configs then leave errors to the outermost one).
_VALIDATING: contextvars.ContextVar[bool] = contextvars.ContextVar("steppo_config_validating", default=False)

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}


class ConfigModel(BaseModel):
    """Base of the configs: unknown fields are errors, floats must be finite, and a bad value raises
    :class:`ConfigError` (a ``ValueError``) naming the fix instead of pydantic's multi-line report."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)

    #: Put before ``name=value`` in the example of an error message (``"--set "`` for the trainer).
    fix_prefix: ClassVar[str] = ""
    #: The fix to name for a bad value of a field when it is not ``e.g. name=default`` (a CLI flag).
    fix_hints: ClassVar[dict[str, str]] = {}

    def __init__(self, **data: Any) -> None:
        if _VALIDATING.get():  # a nested config: the outermost one explains the whole error
            super().__init__(**data)
            return
        aliases = deprecated_aliases(type(self))
        if aliases:  # here, so that "both names given" is the ConfigError's own sentence
            data = resolve_aliases(type(self).__name__, aliases, data)
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ConfigError(explain_validation_error(type(self), exc)) from None
        finally:
            _VALIDATING.reset(token)

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Self:
        """``cls(**values)`` for a mapping (nested configs may be given as mappings)."""
        token = _VALIDATING.set(True)
        try:
            return cls.model_validate(dict(values))
        except pydantic.ValidationError as exc:
            raise ConfigError(explain_validation_error(cls, exc)) from None
        finally:
            _VALIDATING.reset(token)

    def checked(self) -> Self:
        """Validate again after fields were assigned (assignment is not validated); returns ``self``."""
        type(self).build(self.model_dump())
        return self

    def updated(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` (what ``dataclasses.replace`` was; ``model_copy(update=...)``
        does not validate). Field values are passed as they are (a nested config stays an object)."""
        return type(self).build({**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @model_validator(mode="before")
    @classmethod
    def _renamed_options(cls, data: Any) -> Any:
        """Map the deprecated names of :func:`~steppo_envs.config.renamed_options` to their fields."""
        aliases = deprecated_aliases(cls)
        if aliases and isinstance(data, Mapping):
            return resolve_aliases(cls.__name__, aliases, data)
        return data


def field_info(cls: type[BaseModel], path: tuple[str | int, ...]) -> FieldInfo | None:
    """The field ``path`` (``("policy", "kv_cache_gib")``) of ``cls``, following nested configs."""
    model: type[BaseModel] | None = cls
    info: FieldInfo | None = None
    for part in path:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        model = _model_of(info.annotation)
    return info


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(annotation) if (m := _model_of(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def _range(info: FieldInfo) -> str:
    """``">= 1"``, ``"> 0"`` or ``"in (0, 1]"`` from the field's constraints."""
    low: tuple[str, Any] | None = None
    high: tuple[str, Any] | None = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Gt):
            low = ("(", m.gt)
        elif isinstance(m, annotated_types.Ge):
            low = ("[", m.ge)
        elif isinstance(m, annotated_types.Lt):
            high = (")", m.lt)
        elif isinstance(m, annotated_types.Le):
            high = ("]", m.le)
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
    if high:
        return f"{'<' if high[0] == ')' else '<='} {high[1]:g}"
    return "in range"


def _example(info: FieldInfo | None) -> str:
    if info is None or info.is_required():
        return "..."
    default = info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump()
    return json.dumps(default, default=str)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_path(cls: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The longest start of ``loc`` that names a field (a union member's tag, e.g. ``bool``, is dropped)."""
    for end in range(len(loc), 0, -1):
        if field_info(cls, loc[:end]) is not None:
            return loc[:end]
    return loc


def explain_validation_error(cls: type[BaseModel], exc: pydantic.ValidationError) -> str:
    """One sentence for every problem pydantic found in ``cls``, each naming the fix."""
    prefix = getattr(cls, "fix_prefix", "")
    hints: dict[str, str] = getattr(cls, "fix_hints", {})
    parts: dict[str, str] = {}
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        path = _field_path(cls, loc)
        name = ".".join(str(p) for p in path) or "value"
        info = field_info(cls, path)
        fix = hints.get(name) or f"e.g. {prefix}{name}={_example(info)}"
        kind, got = err.get("type", ""), err.get("input")
        inner = (err.get("ctx") or {}).get("error")
        if kind == "value_error" and isinstance(inner, Exception):  # a validator's own sentence names the fix
            parts[f"{name}/{len(parts)}"] = str(inner).rstrip(".")
        elif kind == "extra_forbidden":
            parent = field_info(cls, loc[:-1]) if len(loc) > 1 else None
            owner = _model_of(parent.annotation) if parent is not None else cls
            valid = sorted(owner.model_fields) if owner is not None else []
            parts[name] = f"unknown option {name}{did_you_mean([str(loc[-1])], valid)}: valid options are {', '.join(valid)}"
        elif kind == "missing":
            parts[name] = f"{name} is required and has no default: give it, e.g. {prefix}{name}=..."
        elif kind == "finite_number":
            parts[name] = f"{name} must be a finite number, not {_shown(got)}: {fix}"
        elif kind in _RANGE_ERRORS and info is not None:
            parts[name] = f"{name} must be {_range(info)} (got {_shown(got)}): {fix}"
        else:
            msg = err.get("msg", "invalid")
            if name in parts:  # another member of a union (``bool | Literal["auto"]``)
                msg = parts[name].split(": ", 1)[1].rsplit(" (got ", 1)[0] + " or " + msg[0].lower() + msg[1:]
            parts[name] = f"{name}: {msg} (got {_shown(got)}): {fix}"
    return f"bad value for {cls.__name__}: " + "; ".join(parts.values()) + "."
