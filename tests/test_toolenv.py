"""``tool_env`` and ``function_tool``: schemas from functions, the answer rule, checked arguments, tool
errors, budgets, registration and the contract."""

from __future__ import annotations

import json
from typing import Any, Literal

import gymnasium
import pytest

import steppo_envs
from steppo_envs import (
    ConfigError,
    FunctionTool,
    Section,
    ToolEnvConfig,
    ToolEnvState,
    check_step_env,
    function_tool,
    fuzz_env,
    parse_action,
    route_answer,
    tool_env,
)
from steppo_envs.function_tools import parse_docstring

TASKS = [{"id": "t0", "question": "What is 2 + 3?", "answer": 5}, {"id": "t1", "question": "What is 4 + 4?", "answer": 8}]


def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: the first number.
        b: the second number,
            zero when left out.

    Returns:
        the sum.
    """
    return a + b


def lookup(topic: str, task: dict[str, Any]) -> str:
    """Look a topic up in the task's notes."""
    if topic == "boom":
        raise ValueError("the notes are on fire")
    return f"notes on {topic} for {task['id']}"


def answer(value: int) -> int:
    """Give the final number; this ends the episode."""
    return value


def _reward(task: dict[str, Any], value: Any) -> float:
    return float(value == task["answer"])


def _env(env_id: str = "steppotest/Sum-v0", tools: list[Any] | None = None, **kw: Any) -> Any:
    return tool_env(env_id, tasks=TASKS, tools=tools if tools is not None else [add, lookup, answer],
                    prompt="{question}", reward=_reward, **kw)


# -- function_tool ------------------------------------------------------------------------------------
def test_schema_comes_from_signature_hints_and_docstring() -> None:
    tool = function_tool(add)
    assert tool.spec.to_openai() == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "the first number."},
                    "b": {"type": "integer", "description": "the second number, zero when left out.", "default": 0},
                },
                "required": ["a"],
            },
        },
    }
    assert tool.spec.compact is None  # the bracket would fill an integer


def test_task_parameter_is_hidden_literal_is_an_enum_and_compact_verbs_are_camel_case() -> None:
    tool = function_tool(lookup)
    assert tool.takes_task and list(tool.spec.parameters["properties"]) == ["topic"]
    assert (tool.spec.compact, tool.spec.compact_arg) == ("Lookup", "topic")

    def set_label(label: Literal["yes", "no"], note: str | None = None) -> str:
        """Set the label."""
        return label

    spec = function_tool(set_label).spec
    assert spec.parameters["properties"]["label"] == {"enum": ["yes", "no"], "type": "string"}
    assert spec.parameters["required"] == ["label"] and spec.compact == "SetLabel"
    assert parse_action("SetLabel[yes]", [spec]).tool_calls[0].arguments == {"label": "yes"}


def test_docstring_parsing_google_and_sphinx() -> None:
    assert parse_docstring(add.__doc__) == ("Add two integers.", {"a": "the first number.", "b": "the second number, zero when left out."})
    sphinx = "Find papers.\n\nLonger text here.\n\n:param query: the keywords\n:param int k: how many\n:returns: titles"
    assert parse_docstring(sphinx) == ("Find papers. Longer text here.", {"query": "the keywords", "k": "how many"})
    assert parse_docstring(None) == ("", {})


def test_bad_functions_are_refused_with_the_fix() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        """No hints."""

    def star(*args: str) -> None:
        """Varargs."""

    def nodoc(x: str) -> None:
        pass

    for fn, needle in ((untyped, "annotate it, e.g. x: str"), (star, "name every parameter"),
                       (nodoc, "give the function a docstring"), (lambda q: q, "pass name=")):
        with pytest.raises(ConfigError, match=needle):
            function_tool(fn)


def test_checked_arguments_convert_and_report_problems() -> None:
    tool = function_tool(add)
    assert tool.check({"a": 2}) == ({"a": 2}, None)
    assert tool.check({}) == ({}, "tool 'add' needs the argument 'a'")
    assert tool.check({"a": 1, "c": 2})[1] == "tool 'add' has no argument 'c' (valid: a, b)"
    assert "argument 'a' of tool 'add': Input should be a valid integer" in (tool.check({"a": "two"})[1] or "")
    assert tool.call({"a": 2, "b": 3}) == (5, None)
    assert function_tool(lookup).call({"topic": "boom"}, TASKS[0]) == (None, "ValueError: the notes are on fire")


# -- the environment ------------------------------------------------------------------------------------
def test_tool_env_passes_the_contract_and_fuzzing() -> None:
    env = _env()()
    check_step_env(env)
    report = fuzz_env(_env()(), 300, seed=1)
    assert report.failures == 0, report.examples


def test_an_episode_calls_tools_and_scores_the_answer_tool() -> None:
    env = _env()(max_steps=4)
    obs, info = env.reset(seed=0, options={"task_index": 0})
    assert info["task_id"] == "t0" and "What is 2 + 3?" in obs and info["max_steps"] == 4
    assert [t["function"]["name"] for t in info["tools"]] == ["add", "lookup", "answer"]
    obs, reward, terminated, truncated, info = env.step('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>')
    assert (reward, terminated, truncated, info["valid"]) == (0.0, False, False, True)
    assert "## Step 1, latest result: add(a=2, b=3)\n5" in obs and info["extra"]["tool_calls"] == ["add"]
    obs, reward, terminated, truncated, info = env.step("Lookup[sums]")
    assert "notes on sums for t0" in obs and info["metrics"] == {"tool_calls": 2.0, "invalid_actions": 0.0}
    obs, reward, terminated, truncated, info = env.step("Answer[5]")  # routed to answer(value=5)
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    assert info["extra"]["answer"] == 5 and obs.endswith("The episode has ended.")


@pytest.mark.parametrize("action", ["Answer[8]", "<answer>8</answer>", "<answer> 8 </answer>",
                                    '<tool_call>{"name": "answer", "arguments": {"value": 8}}</tool_call>'])
def test_every_answer_form_reaches_the_answer_tool(action: str) -> None:
    env = _env()()
    env.reset(seed=0, options={"task_index": 1})
    _, reward, terminated, _, info = env.step(action)
    assert (reward, terminated, info["valid"]) == (1.0, True, True)
    assert info["action"]["kind"] == "tool_call" and info["action"]["tool_calls"][0]["name"] == "answer"


def test_an_answer_the_tool_cannot_take_is_an_invalid_step() -> None:
    env = _env()()
    env.reset(seed=0, options={"task_index": 0})
    _, reward, terminated, truncated, info = env.step("Answer[five]")
    assert (reward, terminated, truncated, info["valid"]) == (0.0, False, False, False)
    assert info["feedback"].startswith("argument 'value' of tool 'answer': Input should be a valid integer")


def test_without_an_answer_tool_the_built_in_answer_gives_the_text() -> None:
    seen: list[Any] = []
    env = tool_env("steppotest/SumText-v0", tasks=TASKS, tools=[add], prompt="{question}",
                   reward=lambda task, text: seen.append(text) or float(text == str(task["answer"])))()
    env.reset(seed=0, options={"task_index": 0})
    _, reward, terminated, _, info = env.step("Answer[5]")
    assert (reward, terminated, seen, info["action"]["kind"]) == (1.0, True, ["5"], "answer")
    assert "- answer: <answer>your answer</answer> or Answer[your answer]" in env.system_prompt


def test_route_answer_is_the_documented_rule() -> None:
    spec = function_tool(answer).spec
    parsed = parse_action("<answer>7</answer>", [spec])
    routed = route_answer(parsed, spec)
    assert routed.kind == "tool_call" and routed.tool_calls[0].arguments == {"value": "7"}
    assert route_answer(parsed, None) is parsed

    def final(text: str) -> str:
        """Give the final text."""
        return text

    with_verb = function_tool(final, compact="Answer").spec  # the parser alone: allow_answer decides
    assert parse_action("Answer[7]", [with_verb]).kind == "answer"
    assert parse_action("Answer[7]", [with_verb], allow_answer=False).tool_calls[0].name == "final"
    assert parse_action("<answer>7</answer>", [with_verb], allow_answer=False).error == "no action found"


def test_bad_arguments_and_raising_tools_are_steps_not_crashes() -> None:
    env = _env()(max_steps=3)
    env.reset(seed=0, options={"task_index": 0})
    _, _, _, _, info = env.step('<tool_call>{"name": "add", "arguments": {"b": 1}}</tool_call>')
    assert not info["valid"] and info["feedback"].startswith("tool 'add' needs the argument 'a'. Reply with one action:")
    obs, reward, terminated, truncated, info = env.step("Lookup[boom]")
    assert info["valid"] and info["extra"]["tool_errors"] == ["lookup: ValueError: the notes are on fire"]
    assert "Error: ValueError: the notes are on fire" in obs and not terminated
    _, _, terminated, truncated, info = env.step('<tool_call>{"name": "add", "arguments": {"a": 1, "z": 2}}</tool_call>')
    assert not info["valid"] and "has no argument 'z'" in info["feedback"] and (terminated, truncated) == (False, True)
    assert info["metrics"]["invalid_actions"] == 2.0


def test_the_observation_keeps_the_task_and_the_latest_result_within_budget() -> None:
    def read(page: str) -> str:
        """Read a page."""
        return f"{page}: " + "word " * 400

    env = tool_env("steppotest/Read-v0", tasks=TASKS, tools=[read], prompt="{question}", reward=_reward,
                   config=ToolEnvConfig(budget_chars=900, result_chars=500, history_result_chars=80, max_steps=10))()
    env.reset(seed=0, options={"task_index": 0})
    for left, page in enumerate(("alpha", "beta", "gamma", "delta"), start=-9):
        obs, *_ = env.step(f"Read[{page}]")
        assert len(obs) <= 900 and obs.startswith("## Task\nWhat is 2 + 3?") and obs.endswith(f"Steps left: {-left}.")
    assert "## Step 4, latest result: read(page=\"delta\")\ndelta: word" in obs
    assert "gamma: word" in obs and "alpha" not in obs  # the oldest result went first


def test_same_seed_same_task_and_overrides_through_gymnasium() -> None:
    _env("steppotest/SumMake-v0")
    env = gymnasium.make("steppotest/SumMake-v0", max_steps=2, budget_chars=900)
    first, info = env.reset(seed=3)
    assert env.reset(seed=3)[0] == first and info["max_steps"] == 2
    assert "You have 2 steps in total." in info["system_prompt"]
    with pytest.raises(ConfigError, match="did you mean max_steps"):
        gymnasium.make("steppotest/SumMake-v0", max_step=2)
    with pytest.raises(ConfigError, match="accepted options are 'task_index'"):
        env.reset(seed=0, options={"index": 1})


def test_custom_renderer_sees_the_state() -> None:
    states: list[ToolEnvState] = []

    def render(state: ToolEnvState) -> str:
        states.append(state)
        return f"{state.prompt} | turns={len(state.turns)} | left={state.max_steps - state.step}"

    env = _env("steppotest/SumRender-v0", render=render, max_steps=3)()
    assert env.reset(seed=0, options={"task_index": 1})[0] == "What is 4 + 4? | turns=0 | left=3"
    assert env.step("Lookup[x]")[0] == "What is 4 + 4? | turns=1 | left=2"
    assert states[-1].turns[0].calls[0].result == "notes on x for t1" and states[-1].task is TASKS[1]


def test_registration_replaces_a_tool_env_but_not_a_bundled_id() -> None:
    first = _env("steppotest/SumAgain-v0")
    second = _env("steppotest/SumAgain-v0", max_steps=2)
    assert gymnasium.spec("steppotest/SumAgain-v0").entry_point is second is not first
    assert steppo_envs.registered_ids().count("steppotest/SumAgain-v0") == 1
    with pytest.raises(ConfigError, match="already registered"):
        _env("steppo/MultiHopQA-v0")
    with pytest.raises(ConfigError, match="namespace/Name-vN"):
        _env("NoNamespace")


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(tasks=[]), "has no tasks"),
        (dict(prompt="{missing}"), "cannot be filled from task 0"),
        (dict(tools=[add, add]), "share the name 'add'"),
        (dict(tools=add), "non-empty list of functions"),
        (dict(max_steps=0), r"max_steps must be >= 1 \(got 0\)"),
    ],
)
def test_bad_definitions_name_the_fix(kw: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = dict(tasks=TASKS, tools=[add, answer], prompt="{question}", reward=_reward)
    args.update(kw)
    with pytest.raises(ConfigError, match=needle):
        tool_env("steppotest/Bad-v0", **args)


def test_the_definition_pickles_as_a_reference() -> None:
    import pickle

    definition = _env("steppotest/SumPickle-v0")
    assert pickle.loads(pickle.dumps(definition)) is definition
    assert isinstance(definition.tools[0], FunctionTool) and definition.answer_tool is definition.tools[2]


def test_a_list_result_is_shown_as_json_and_sections_work_too() -> None:
    def titles(query: str) -> list[str]:
        """Titles matching the query."""
        return ["Ünïcode", query]

    def render(state: ToolEnvState) -> list[Section]:
        return [Section(state.prompt, keep=True), *(Section(c.result) for t in state.turns for c in t.calls)]

    env = tool_env("steppotest/Titles-v0", tasks=TASKS, tools=[titles], prompt="{question}", reward=_reward, render=render)()
    env.reset(seed=0)
    obs, *_ = env.step("Titles[x]")
    assert obs.endswith(json.dumps(["Ünïcode", "x"], ensure_ascii=False))


def test_a_raising_answer_tool_does_not_end_the_episode_and_must_be_called_alone() -> None:
    def answer(value: int, task: dict[str, Any]) -> int:
        """Give the final number."""
        if value < 0:
            raise ValueError("negative answers are not accepted")
        return value - task["answer"]

    env = tool_env("steppotest/SumStrict-v0", tasks=TASKS, tools=[add, answer], prompt="{question}",
                   reward=lambda task, diff: float(diff == 0), config=ToolEnvConfig(max_tool_calls=2))()
    env.reset(seed=0, options={"task_index": 0})
    obs, reward, terminated, _, info = env.step("<answer>-1</answer>")
    assert (reward, terminated, info["valid"]) == (0.0, False, True) and "negative answers are not accepted" in obs
    two = ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
           '<tool_call>{"name": "answer", "arguments": {"value": 5}}</tool_call>')
    _, _, terminated, _, info = env.step(two)
    assert not info["valid"] and info["feedback"].startswith("call 'answer' alone, in a step of its own") and not terminated
    _, reward, terminated, _, info = env.step("Answer[5]")
    assert (reward, terminated, info["extra"]["answer"]) == (1.0, True, 0)


def test_a_tool_with_the_compact_verb_answer_is_the_answer_tool() -> None:
    def submit(text: str) -> str:
        """Submit the final text."""
        return text.strip().lower()

    definition = tool_env("steppotest/Submit-v0", tasks=TASKS, tools=[add, function_tool(submit, compact="Answer")],
                          prompt="{question}", reward=lambda task, text: float(text == str(task["answer"])))
    assert definition.answer_tool is not None and definition.answer_tool.name == "submit"
    env = definition()
    for action in ("Answer[ 5 ]", "<answer>5</answer>", '<tool_call>{"name": "submit", "arguments": {"text": "5"}}</tool_call>'):
        env.reset(seed=0, options={"task_index": 0})
        _, reward, terminated, _, info = env.step(action)
        assert (reward, terminated, info["action"]["tool_calls"][0]["name"]) == (1.0, True, "submit"), action
    with pytest.raises(ConfigError, match="more than one tool is an answer tool"):
        tool_env("steppotest/Submit-v1", tasks=TASKS, tools=[answer, function_tool(submit, compact="Answer")],
                 prompt="{question}", reward=_reward)
