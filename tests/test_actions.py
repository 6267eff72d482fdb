"""The shared action parser (steppo_envs.actions)."""

from __future__ import annotations

import json

import pytest

from steppo_envs.actions import ParsedAction, format_hint, parse_action
from steppo_envs.tools import ToolSpec

SEARCH = ToolSpec(
    name="search",
    description="search",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    compact="Search",
)
LOOKUP = ToolSpec(
    name="lookup",
    description="no compact form",
    parameters={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
)
TOOLS = (SEARCH, LOOKUP)


def call(name: str, **arguments: object) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_hermes_tool_call() -> None:
    p = parse_action("I should look this up. " + call("search", query="Eiffel Tower"), TOOLS)
    assert p.kind == "tool_call" and p.valid and p.format == "hermes"
    assert p.tool_calls[0].name == "search" and p.tool_calls[0].arguments == {"query": "Eiffel Tower"}
    assert p.reasoning == "I should look this up."
    assert p.error is None


def test_unclosed_final_tool_call_is_accepted() -> None:
    p = parse_action('<tool_call>{"name": "search", "arguments": {"query": "x y"}}', TOOLS)
    assert p.kind == "tool_call" and p.tool_calls[0].arguments == {"query": "x y"}


def test_answer_tag() -> None:
    p = parse_action("<think>easy</think>\n<answer> Paris </answer>", TOOLS)
    assert p.kind == "answer" and p.answer == "Paris" and p.format == "hermes"
    assert p.reasoning == "easy"


def test_empty_answer_is_invalid() -> None:
    for text in ("<answer>  </answer>", "Answer[]", "Answer[   ]"):
        p = parse_action(text, TOOLS)
        assert p.kind == "invalid" and "empty" in (p.error or "")


@pytest.mark.parametrize("verb", ["Search", "search", "SEARCH", "sEaRcH"])
def test_compact_search_case_insensitive(verb: str) -> None:
    p = parse_action(f"Thought: find it.\n{verb}[Oettinger Brauerei]", TOOLS)
    assert p.kind == "tool_call" and p.format == "compact"
    assert p.tool_calls[0].name == "search" and p.tool_calls[0].arguments == {"query": "Oettinger Brauerei"}
    assert p.reasoning == "Thought: find it."


@pytest.mark.parametrize("verb", ["Answer", "answer", "ANSWER"])
def test_compact_answer_case_insensitive(verb: str) -> None:
    p = parse_action(f"{verb}[Chief of Protocol]", TOOLS)
    assert p.kind == "answer" and p.answer == "Chief of Protocol" and p.format == "compact"


def test_compact_nested_brackets() -> None:
    p = parse_action("Search[list [of] things [x [y]]]", TOOLS)
    assert p.tool_calls[0].arguments == {"query": "list [of] things [x [y]]"}
    p = parse_action("Answer[a [b] c] trailing text", TOOLS)
    assert p.answer == "a [b] c"


def test_compact_unclosed_bracket_ends_at_line_end() -> None:
    p = parse_action("Search[first line\nsecond line", TOOLS)
    assert p.kind == "tool_call" and p.tool_calls[0].arguments == {"query": "first line"}


def test_compact_last_action_wins() -> None:
    p = parse_action("Search[a]\nActually no.\nAnswer[b]", TOOLS)
    assert p.kind == "answer" and p.answer == "b"
    p = parse_action("Answer[b] hmm, no: Search[c]", TOOLS)
    assert p.kind == "tool_call" and p.tool_calls[0].arguments == {"query": "c"}


def test_compact_verb_must_be_a_word() -> None:
    p = parse_action("ResearchSearch[x]", TOOLS)  # no word boundary before "Search"
    assert p.kind == "invalid"
    p = parse_action("Research[x]", TOOLS)
    assert p.kind == "invalid"


@pytest.mark.parametrize("tag", ["think", "analysis", "reasoning", "THINK"])
def test_reasoning_tags_removed(tag: str) -> None:
    p = parse_action(f"<{tag}>step one</{tag}> Answer[42]", TOOLS)
    assert p.kind == "answer" and p.reasoning == "step one"


def test_answer_and_tool_call_together_invalid() -> None:
    p = parse_action(call("search", query="x") + "<answer>y</answer>", TOOLS)
    assert p.kind == "invalid" and "not both" in (p.error or "")
    assert not p.valid and p.tool_calls == () and p.answer is None


def test_unknown_tool_invalid_and_lists_available() -> None:
    p = parse_action(call("browse", url="x"), TOOLS)
    assert p.kind == "invalid"
    assert "browse" in (p.error or "") and "search" in (p.error or "") and "lookup" in (p.error or "")


def test_bad_json_invalid() -> None:
    p = parse_action("<tool_call>{name: search}</tool_call>", TOOLS)
    assert p.kind == "invalid" and "not valid JSON" in (p.error or "")
    p = parse_action('<tool_call>["search"]</tool_call>', TOOLS)
    assert p.kind == "invalid" and "JSON object" in (p.error or "")
    p = parse_action('<tool_call>{"name": 3}</tool_call>', TOOLS)
    assert p.kind == "invalid"


def test_arguments_as_json_string() -> None:
    body = json.dumps({"name": "search", "arguments": json.dumps({"query": "x"})})
    p = parse_action(f"<tool_call>{body}</tool_call>", TOOLS)
    assert p.kind == "tool_call" and p.tool_calls[0].arguments == {"query": "x"}
    body = json.dumps({"name": "search", "arguments": "not json"})
    assert parse_action(f"<tool_call>{body}</tool_call>", TOOLS).kind == "invalid"


def test_parameters_key_and_code_fence_accepted() -> None:
    body = json.dumps({"name": "search", "parameters": {"query": "x"}})
    assert parse_action(f"<tool_call>{body}</tool_call>", TOOLS).kind == "tool_call"
    fenced = "<tool_call>```json\n" + json.dumps({"name": "search", "arguments": {"query": "x"}}) + "\n```</tool_call>"
    assert parse_action(fenced, TOOLS).kind == "tool_call"


def test_too_many_calls() -> None:
    text = call("search", query="a") + call("search", query="b")
    p = parse_action(text, TOOLS)
    assert p.kind == "invalid" and "at most 1" in (p.error or "")
    p = parse_action(text, TOOLS, max_tool_calls=2)
    assert p.kind == "tool_call" and [c.arguments["query"] for c in p.tool_calls] == ["a", "b"]


def test_argument_validation() -> None:
    assert "needs the argument 'query'" in (parse_action(call("search"), TOOLS).error or "")
    assert "type string" in (parse_action(call("search", query=3), TOOLS).error or "")
    assert "no argument 'q'" in (parse_action(call("search", query="x", q="y"), TOOLS).error or "")
    assert parse_action(call("lookup", n=True), TOOLS).kind == "invalid"  # bool is not an integer
    assert parse_action(call("lookup", n=2), TOOLS).kind == "tool_call"


def test_tool_without_compact_form_has_no_compact_verb() -> None:
    assert parse_action("Lookup[3]", TOOLS).kind == "invalid"


def test_non_ascii() -> None:
    p = parse_action("Search[Zürich 東京 — café]", TOOLS)
    assert p.tool_calls[0].arguments == {"query": "Zürich 東京 — café"}
    p = parse_action(call("search", query="Pál Gábor"), TOOLS)
    assert p.tool_calls[0].arguments == {"query": "Pál Gábor"}
    p = parse_action("<answer>Ωmega 😀</answer>", TOOLS)
    assert p.answer == "Ωmega 😀"


def test_no_action_and_non_string() -> None:
    p = parse_action("I am not sure what to do.", TOOLS)
    assert p.kind == "invalid" and p.error == "no action found" and p.reasoning == "I am not sure what to do."
    assert parse_action(None, TOOLS).kind == "invalid"  # type: ignore[arg-type]
    assert parse_action("", TOOLS).kind == "invalid"


def test_answer_not_allowed() -> None:
    assert parse_action("Answer[x]", TOOLS, allow_answer=False).kind == "invalid"
    assert parse_action("<answer>x</answer>", TOOLS, allow_answer=False).kind == "invalid"


def test_to_dict_is_json() -> None:
    p = parse_action(call("search", query="x"), TOOLS)
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["tool_calls"] == [{"name": "search", "arguments": {"query": "x"}}]
    assert ParsedAction(kind="invalid", error="e").to_dict()["error"] == "e"


def test_format_hint_mentions_every_form() -> None:
    hint = format_hint(TOOLS)
    assert '"name": "search"' in hint and "Search[...]" in hint and "Answer[...]" in hint and "lookup" in hint
    assert "Answer" not in format_hint(TOOLS, allow_answer=False)
