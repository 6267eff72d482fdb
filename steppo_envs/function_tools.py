"""Plain Python functions as agent tools: the schema comes from the signature, the type hints and the
docstring, in the OpenAI / Hermes function-calling format.

>>> def search(query: str, k: int = 3) -> str:
...     '''Search the passages with BM25 keyword matching.
...
...     Args:
...         query: keywords to look for.
...         k: how many passages to return.
...     '''
...     return "..."
>>> function_tool(search).spec.to_openai()["function"]["parameters"]["required"]
['query']

Rules (each broken one raises :class:`~steppo_envs.ConfigError` naming the fix when the tool is built):

* the tool's name is the function's name (letters, digits, ``_`` and ``-``); its description is the
  docstring's text before the first section (``Args:``, ``Returns:`` ...);
* every parameter needs a type hint; the hint's JSON schema comes from pydantic (``str`` ->
  ``string``, ``int`` -> ``integer``, ``list[str]`` -> an ``array``, ``Literal["a", "b"]`` -> an
  ``enum``, ``X | None`` -> ``anyOf``); a parameter with a default is optional, one without is
  required; ``*args``, ``**kwargs`` and positional-only parameters are refused (the model calls tools
  with named JSON arguments);
* parameter descriptions come from a Google-style ``Args:`` section or Sphinx ``:param name:`` lines;
* a parameter named ``task`` is not shown to the model: the environment passes the current task;
* the compact verb is the name in CamelCase (``lookup_title`` -> ``LookupTitle[...]``); it exists
  when the tool has at most one required parameter and the bracket fills a string parameter.

Arguments the model sends are checked against the hints (:meth:`FunctionTool.check`): a missing or
unknown argument or a wrong value (a label outside a ``Literal``) is a message, never an exception.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from steppo_envs.actions import clean_action_text
from steppo_envs.config import ConfigError
from steppo_envs.tools import ToolSpec

__all__ = ["TASK_PARAMETER", "FunctionTool", "function_tool", "parse_docstring", "tool_result_text"]

#: A parameter of this name receives the current task instead of a model argument.
TASK_PARAMETER = "task"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Returns?|Raises|Yields?|Examples?|Notes?|See Also|Attributes)\s*:\s*$")
_ARGS_SECTIONS = ("Args", "Arguments", "Parameters", "Params", "Keyword Args")
_ARG_LINE_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_RE = re.compile(r"^:param\s+(?:[^:\s]+\s+)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """``(description, {parameter: description})`` from a Google-style (``Args:``) or Sphinx-style
    (``:param x:``) docstring; the description is the text before the first section, on one line."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    item_indent = 0
    for line in lines:
        stripped = line.strip()
        header = _SECTION_RE.match(stripped)
        sphinx = _SPHINX_RE.match(stripped)
        if header:
            section, current = header.group(1), None
        elif sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
        elif stripped.startswith(":") and re.match(r"^:\w+", stripped):  # :returns:, :raises X:, ...
            section, current = "sphinx-other", None
        elif section is None:
            summary.append(stripped)
        elif stripped and (section in _ARGS_SECTIONS or section == "sphinx"):
            indent = len(line) - len(line.lstrip())
            item = _ARG_LINE_RE.match(stripped)
            if item and section != "sphinx" and (current is None or indent <= item_indent):
                current, item_indent = item.group(1), indent
                params[current] = item.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(" ".join(summary).split()), params


def tool_result_text(value: Any) -> str:
    """What the agent sees of a tool's return value: a string as it is, ``None`` as ``"(no result)"``,
    JSON-serialisable values as JSON, anything else as ``str(value)``; always storable as UTF-8."""
    if value is None:
        return "(no result)"
    if isinstance(value, str):
        return clean_action_text(value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)
    return clean_action_text(text)


@dataclass(frozen=True, eq=False)
class FunctionTool:
    """A Python function offered to the agent as a tool (build it with :func:`function_tool`).

    Attributes:
        fn: the function; called with the checked arguments (and ``task=`` when it takes one).
        spec: the :class:`ToolSpec` the model sees (``spec.to_openai()`` is the OpenAI/Hermes schema).
        takes_task: whether ``fn`` has a ``task`` parameter (filled with the current task).
        adapters: one pydantic ``TypeAdapter`` per model-visible parameter (checks and converts).
    """

    fn: Callable[..., Any]
    spec: ToolSpec
    takes_task: bool = False
    adapters: Mapping[str, pydantic.TypeAdapter[Any]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def check(self, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """``(converted arguments, None)``, or ``({}, why they are not acceptable)``; never raises."""
        props = self.spec.parameters.get("properties", {})
        for name in self.spec.parameters.get("required", []):
            if name not in arguments:
                return {}, f"tool {self.name!r} needs the argument {name!r}"
        converted: dict[str, Any] = {}
        for name, value in arguments.items():
            if name not in props:
                return {}, f"tool {self.name!r} has no argument {name!r} (valid: {', '.join(props) or 'none'})"
            try:
                converted[name] = self.adapters[name].validate_python(value)
            except pydantic.ValidationError as exc:
                problem = exc.errors()[0].get("msg", "invalid value") if exc.errors() else "invalid value"
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                return {}, f"argument {name!r} of tool {self.name!r}: {problem} (got {shown})"
        return converted, None

    def call(self, arguments: Mapping[str, Any], task: Any = None) -> tuple[Any, str | None]:
        """``(return value, None)``, or ``(None, "TypeName: message")`` when the function raised."""
        kwargs = dict(arguments)
        if self.takes_task:
            kwargs[TASK_PARAMETER] = task
        try:
            return self.fn(**kwargs), None
        except Exception as exc:  # a tool's failure is an observation for the agent, not a crash
            return None, clean_action_text(f"{type(exc).__name__}: {exc}")


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_-]+", name) if part)


def _hints(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ConfigError(f"the type hints of tool {name!r} cannot be resolved ({type(exc).__name__}: {exc}): "
                          "import the types they name in the function's module.") from None


def _parameter_schema(hint: Any, name: str, param: str) -> tuple[pydantic.TypeAdapter[Any], dict[str, Any]]:
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(hint)
        schema = adapter.json_schema()
    except (pydantic.PydanticUserError, pydantic.errors.PydanticInvalidForJsonSchema, TypeError) as exc:
        raise ConfigError(f"parameter {param!r} of tool {name!r} has the type {hint!r}, which has no JSON schema "
                          f"({type(exc).__name__}): use str, int, float, bool, a Literal, a list or a dict.") from None
    schema.pop("title", None)
    return adapter, schema


def _parameters(fn: Callable[..., Any], name: str, docs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """``(JSON schema, adapters, takes_task)`` of ``fn``'s parameters."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tool {name!r} has no inspectable signature ({exc}): wrap it in a def with named parameters.") from None
    hints = _hints(fn, name)
    props: dict[str, Any] = {}
    required: list[str] = []
    defs: dict[str, Any] = {}
    adapters: dict[str, pydantic.TypeAdapter[Any]] = {}
    takes_task = False
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ConfigError(f"tool {name!r} has the parameter {p}: name every parameter explicitly "
                              "(the model calls tools with named JSON arguments).")
        if p.name == TASK_PARAMETER:
            takes_task = True
            continue
        if p.name not in hints:
            raise ConfigError(f"parameter {p.name!r} of tool {name!r} has no type hint: annotate it, e.g. {p.name}: str.")
        adapters[p.name], schema = _parameter_schema(hints[p.name], name, p.name)
        defs.update(schema.pop("$defs", {}))
        if docs.get(p.name):
            schema["description"] = docs[p.name]
        if p.default is p.empty:
            required.append(p.name)
        else:
            with contextlib.suppress(TypeError, ValueError):  # a default JSON cannot show still applies
                schema["default"] = json.loads(json.dumps(p.default))
        props[p.name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if defs:
        parameters["$defs"] = defs
    return parameters, adapters, takes_task


def _compact_verb(name: str, parameters: dict[str, Any], compact: str | bool) -> tuple[str | None, str | None]:
    """``(verb, argument it fills)`` or ``(None, None)`` when the tool has no compact form."""
    if compact is False:
        return None, None
    props, required = parameters["properties"], parameters["required"]
    argument = required[0] if required else (next(iter(props)) if props else None)
    fillable = argument is None or props[argument].get("type") == "string"
    if compact is True and (len(required) > 1 or not fillable):
        return None, None
    verb = _camel(name) if compact is True else str(compact)
    if not re.fullmatch(r"[A-Za-z_]\w*", verb):
        raise ConfigError(f"compact verb {verb!r} of tool {name!r} must be one word of letters, digits and _: pass compact='Verb'.")
    return verb, argument


def function_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    compact: str | bool = True,
) -> FunctionTool:
    """Turn ``fn`` into a :class:`FunctionTool` (see the module docstring for the rules).

    Args:
        fn: the function (a ``def``, a method, a ``functools.partial`` with ``name=``...).
        name: the tool's name (default ``fn.__name__``).
        description: what the model reads (default: the docstring's text before its sections).
        compact: ``True`` derives the compact verb, ``False`` gives none, a string sets it.
    """
    name = name if name is not None else getattr(fn, "__name__", "")
    if not _NAME_RE.match(name or ""):
        raise ConfigError(f"tool name {name!r} must be 1-64 letters, digits, _ or - (starting with a letter or _): "
                          "pass name='my_tool' (a lambda or a partial has no usable name).")
    summary, docs = parse_docstring(getattr(fn, "__doc__", None))
    description = description if description is not None else summary
    if not description:
        raise ConfigError(f"tool {name!r} has no description: give the function a docstring (its first lines "
                          "tell the model what the tool does) or pass description='...'.")
    parameters, adapters, takes_task = _parameters(fn, name, docs)
    verb, argument = _compact_verb(name, parameters, compact)
    spec = ToolSpec(name=name, description=description, parameters=parameters, compact=verb, compact_argument=argument)
    return FunctionTool(fn=fn, spec=spec, takes_task=takes_task, adapters=adapters)
