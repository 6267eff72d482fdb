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
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from steppo_envs.tools import ToolSpec

__all__ = ["ParsedAction", "ToolCall", "format_hint", "parse_action"]

ActionKind = Literal["tool_call", "answer", "invalid"]

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
_REASONING_TAGS_RE = re.compile(r"</?(think|analysis|reasoning)>", re.I)


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


def _clean_reasoning(text: str) -> str:
    return _REASONING_TAGS_RE.sub("", text).strip()


def _parse_tool_json(body: str) -> ToolCall | str:
    body = body.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"the text inside <tool_call> is not valid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return 'a tool call must be a JSON object with a string "name" and an "arguments" object'
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
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


def _compact_matches(text: str, verbs: Sequence[str]) -> list[tuple[int, str, str]]:
    if not verbs:
        return []
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(re.escape(v) for v in verbs) + r")\s*\[", re.I)
    found = []
    for m in pattern.finditer(text):
        end = _find_bracket_end(text, m.end())
        found.append((m.start(), m.group(1).lower(), text[m.end() : end].strip()))
    return found


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
    matches = _compact_matches(text, verbs)
    if not matches:
        return _invalid("no action found", _clean_reasoning(text))
    pos, verb, arg = matches[-1]
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
