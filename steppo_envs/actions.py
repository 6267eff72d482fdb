"""The one action parser every steppo environment shares.

An action is the model's whole response for a step. It may start with free reasoning (plain text,
``<think>...</think>`` or ``<analysis>...</analysis>``) followed by exactly one of:

* one or more Hermes-style tool calls: ``<tool_call>{"name": "search", "arguments": {"query": "..."}}</tool_call>``
  (a final call whose closing tag was cut off by a stop string is accepted);
* a final answer: ``<answer>...</answer>``;
* the compact ReAct form small models emit more reliably: ``Search[query]`` or ``Answer[text]``
  (verbs come from each tool's :attr:`ToolSpec.compact`; case-insensitive; the last one wins when
  a model repeats itself).

Anything else parses to ``kind="invalid"`` with an ``error`` that environments echo back to the agent
in the next observation, together with :func:`format_hint`.

The parser never raises and runs in time linear in the response: the text is first passed through
:func:`clean_action_text` (NUL bytes dropped, lone surrogates replaced), a response longer than
:data:`MAX_ACTION_CHARS` is invalid, and tool-call JSON nested deeper than :data:`MAX_JSON_DEPTH`
is rejected before it reaches the decoder (whose recursion would otherwise overflow).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from steppo_envs.tools import ToolSpec

__all__ = ["MAX_ACTION_CHARS", "MAX_JSON_DEPTH", "ParsedAction", "ToolCall", "clean_action_text", "format_hint",
           "parse_action"]

#: Longest response the parser reads (characters); a longer one is an invalid action. Responses of a
#: few hundred tokens are ~1-2k characters, so this only stops pathological input.
MAX_ACTION_CHARS = 16_384
#: Deepest ``[``/``{`` nesting accepted inside a tool call's JSON (real arguments nest 2-4 levels).
MAX_JSON_DEPTH = 32

ActionKind = Literal["tool_call", "answer", "invalid"]

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
_REASONING_TAGS_RE = re.compile(r"</?(think|analysis|reasoning)>", re.I)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ToolCall:
    """A call of tool ``name`` with JSON ``arguments``."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments)}


@dataclass(frozen=True)
class ParsedAction:
    """The parsed form of one response.

    Attributes:
        kind: ``"tool_call"``, ``"answer"`` or ``"invalid"``.
        tool_calls: the calls, in order (only for ``kind="tool_call"``).
        answer: the final answer text (only for ``kind="answer"``).
        reasoning: the free text before the action, reasoning tags removed.
        format: ``"hermes"``, ``"compact"`` or ``"none"``.
        error: why the action is invalid (``None`` when valid).
    """

    kind: ActionKind
    tool_calls: tuple[ToolCall, ...] = ()
    answer: str | None = None
    reasoning: str = ""
    format: Literal["hermes", "compact", "none"] = "none"
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.kind != "invalid"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, as stored in ``info["action"]`` and in step records."""
        return {
            "kind": self.kind,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "answer": self.answer,
            "reasoning": self.reasoning,
            "format": self.format,
            "error": self.error,
        }


def _invalid(error: str, reasoning: str = "", fmt: Literal["hermes", "compact", "none"] = "none") -> ParsedAction:
    return ParsedAction(kind="invalid", reasoning=reasoning, format=fmt, error=error)


def clean_action_text(text: object) -> str:
    """``text`` made safe to parse, store and echo: valid UTF-8 with no NUL bytes. NULs are removed and
    every surrogate code point (a lone surrogate cannot be encoded as UTF-8, so no record holding it
    could be written) becomes the replacement character U+FFFD; a non-string becomes ``""``. The
    rollout applies it once to every response before the env, the record or a file sees it;
    environments call it on the raw action too (for callers that step them directly). One linear
    pass each; idempotent."""
    if not isinstance(text, str):
        return ""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return _SURROGATE_RE.sub("\ufffd", text)


def json_nesting_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of ``text`` outside JSON strings (one linear pass, never raises)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _decode_json(text: str) -> tuple[Any, str | None]:
    """``(value, None)`` or ``(None, why it is not acceptable JSON)``; bounded nesting, never raises."""
    if json_nesting_depth(text) > MAX_JSON_DEPTH:
        return None, f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at character {exc.pos}"
    except (ValueError, RecursionError, TypeError) as exc:  # e.g. a number too long to convert
        return None, str(exc).splitlines()[0][:120] or type(exc).__name__
    return (_clean_json_strings(value) if "\\u" in text else value), None


def _clean_json_strings(value: Any) -> Any:
    """Decoded JSON with :func:`clean_action_text` applied to every string (``"\\u0000"`` and
    ``"\\ud800"`` escapes decode to a NUL and a lone surrogate). Depth is bounded by the caller."""
    if isinstance(value, str):
        return clean_action_text(value)
    if isinstance(value, list):
        return [_clean_json_strings(v) for v in value]
    if isinstance(value, dict):
        return {clean_action_text(k): _clean_json_strings(v) for k, v in value.items()}
    return value


def _clean_reasoning(text: str) -> str:
    return _REASONING_TAGS_RE.sub("", text).strip()


def _parse_tool_json(body: str) -> ToolCall | str:
    body = body.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    obj, problem = _decode_json(body)
    if problem is not None:
        return f"the text inside <tool_call> is not valid JSON ({problem})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return 'a tool call must be a JSON object with a string "name" and an "arguments" object'
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args, problem = _decode_json(args) if args.strip() else ({}, None)
        if problem is not None:
            return '"arguments" must be a JSON object'
    if not isinstance(args, dict):
        return '"arguments" must be a JSON object'
    return ToolCall(name=obj["name"], arguments=args)


def _find_bracket_end(text: str, start: int) -> int:
    """Index of the ``]`` closing the ``[`` just before ``start`` (nesting-aware), or end of line."""
    depth = 1
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i
        elif ch == "\n" and depth == 1 and i > start:
            return i
    return len(text)


def _last_compact_match(text: str, verbs: Sequence[str]) -> tuple[int, str, str] | None:
    """``(position, verb, argument)`` of the last compact action, or None. Only the last one's
    bracket is scanned, so ``Search[Search[Search[...`` costs one pass, not one per verb."""
    if not verbs:
        return None
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(re.escape(v) for v in verbs) + r")\s*\[", re.I)
    last = None
    for last in pattern.finditer(text):  # noqa: B007 (the loop keeps the last match)
        pass
    if last is None:
        return None
    end = _find_bracket_end(text, last.end())
    return last.start(), last.group(1).lower(), text[last.end() : end].strip()


def parse_action(
    text: str,
    tools: Sequence[ToolSpec] = (),
    *,
    allow_answer: bool = True,
    max_tool_calls: int = 1,
) -> ParsedAction:
    """Parse one model response into a :class:`ParsedAction` (never raises).

    Args:
        text: the whole response.
        tools: the tools the environment offers; calls to other names are invalid.
        allow_answer: whether ``<answer>`` / ``Answer[...]`` is a legal action here.
        max_tool_calls: how many tool calls one step may carry.
    """
    if not isinstance(text, str):
        return _invalid("the action must be a string")
    text = clean_action_text(text)
    if len(text) > MAX_ACTION_CHARS:
        return _invalid(f"the response is {len(text)} characters long; at most {MAX_ACTION_CHARS} are read: "
                        "write one short action")
    by_name = {t.name: t for t in tools}
    tool_bodies = [(m.start(), m.group(1)) for m in _TOOL_CALL_RE.finditer(text)]
    answers = [(m.start(), m.group(1)) for m in _ANSWER_RE.finditer(text)] if allow_answer else []

    if tool_bodies or answers:
        first = min(pos for pos, _ in tool_bodies + answers)
        reasoning = _clean_reasoning(text[:first])
        if tool_bodies and answers:
            return _invalid("give either tool calls or an <answer>, not both in one step", reasoning, "hermes")
        if answers:
            answer = answers[-1][1].strip()
            if not answer:
                return _invalid("the <answer> is empty", reasoning, "hermes")
            return ParsedAction(kind="answer", answer=answer, reasoning=reasoning, format="hermes")
        calls: list[ToolCall] = []
        for _, body in tool_bodies:
            parsed = _parse_tool_json(body)
            if isinstance(parsed, str):
                return _invalid(parsed, reasoning, "hermes")
            calls.append(parsed)
        return _check_calls(calls, by_name, max_tool_calls, reasoning, "hermes")

    verbs = [t.compact for t in tools if t.compact]
    if allow_answer:
        verbs.append("Answer")
    match = _last_compact_match(text, verbs)
    if match is None:
        return _invalid("no action found", _clean_reasoning(text))
    pos, verb, arg = match
    reasoning = _clean_reasoning(text[:pos])
    if verb == "answer" and allow_answer:
        if not arg:
            return _invalid("the answer inside Answer[...] is empty", reasoning, "compact")
        return ParsedAction(kind="answer", answer=arg, reasoning=reasoning, format="compact")
    spec = next(t for t in tools if t.compact and t.compact.lower() == verb)
    argname = spec.compact_arg
    if argname and not arg:
        return _invalid(f"the text inside {spec.compact}[...] is empty", reasoning, "compact")
    arguments = {argname: arg} if argname else {}
    return _check_calls([ToolCall(spec.name, arguments)], by_name, max_tool_calls, reasoning, "compact")


def _check_calls(
    calls: list[ToolCall],
    by_name: dict[str, ToolSpec],
    max_tool_calls: int,
    reasoning: str,
    fmt: Literal["hermes", "compact", "none"],
) -> ParsedAction:
    if len(calls) > max_tool_calls:
        return _invalid(f"at most {max_tool_calls} tool call(s) per step, got {len(calls)}", reasoning, fmt)
    for call in calls:
        spec = by_name.get(call.name)
        if spec is None:
            valid = ", ".join(by_name) or "none"
            return _invalid(f"unknown tool {call.name!r} (available: {valid})", reasoning, fmt)
        problem = spec.validate(call.arguments)
        if problem:
            return _invalid(problem, reasoning, fmt)
    return ParsedAction(kind="tool_call", tool_calls=tuple(calls), reasoning=reasoning, format=fmt)


def format_hint(tools: Sequence[ToolSpec], *, allow_answer: bool = True) -> str:
    """One paragraph telling the agent how to write a valid action (used in feedback observations)."""
    forms: list[str] = []
    for t in tools:
        arg = t.compact_arg or "argument"
        example = json.dumps({"name": t.name, "arguments": {arg: "..."}} if t.compact_arg else {"name": t.name, "arguments": {}})
        form = f"<tool_call>{example}</tool_call>"
        if t.compact:
            form += f" or {t.compact}[...]"
        forms.append(form)
    if allow_answer:
        forms.append("<answer>...</answer> or Answer[...]")
    return "Reply with one action: " + "; ".join(forms) + "."
