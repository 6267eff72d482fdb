"""Every registered environment survives hostile actions: no exception, no hang, storable output.

A few hundred actions per env here (``benchmarks/fuzz_envs.py`` runs 10,000 each). The actions come
from :func:`steppo_envs.fuzzing.hostile_actions`: JSON nested thousands of levels deep, 200k-character
strings, NUL bytes, lone surrogates (raw and as ``\\ud800`` escapes), broken tags, wrongly typed
tool arguments, numbers the decoder cannot convert.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import steppo_envs
from steppo_envs.actions import MAX_ACTION_CHARS, MAX_JSON_DEPTH, clean_action_text, parse_action
from steppo_envs.fuzzing import FuzzReport, fuzz_env, hostile_actions

ACTIONS_PER_ENV = {"steppo/ALFWorld-v0": 150}  # ALFWorld steps are ~20x slower than the others
DEFAULT_ACTIONS = 400


def _data(subdir: str) -> None:
    try:
        steppo_envs.resolve_data_dir(subdir=subdir)
    except steppo_envs.DataDirError:
        pytest.skip(f"{subdir} data not found (set STEPPO_DATA_DIR)")


def _multihop(tmp: Path) -> dict[str, Any]:
    _data("multihop_qa")
    return {"split": "eval"}


def _textworld(tmp: Path) -> dict[str, Any]:
    pytest.importorskip("textworld")
    return {"preset": "cooking", "level": 1, "pool_size": 1, "max_steps": 25, "cache_dir": str(tmp), "progress": False}


def _alfworld(tmp: Path) -> dict[str, Any]:
    pytest.importorskip("alfworld")
    _data("alfworld/json_2.1.1")
    return {"split": "valid_seen", "max_steps": 40}


def _paper_search(tmp: Path) -> dict[str, Any]:
    _data("paper_search")
    return {"split": "test", "progress": False}


#: env id -> options for a small instance. A newly registered env must be added here (see the test below).
CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "steppo/MultiHopQA-v0": _multihop,
    "steppo/TextWorld-v0": _textworld,
    "steppo/ALFWorld-v0": _alfworld,
    "steppo/PaperSearch-v0": _paper_search,
}


def test_every_bundled_env_is_fuzzed() -> None:
    assert {e.id for e in steppo_envs.BUNDLED} == set(CASES), "add the new env id to CASES"


@pytest.mark.parametrize("env_id", sorted(CASES))
def test_hostile_actions_are_normal_steps(env_id: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    kwargs = CASES[env_id](tmp_path_factory.mktemp("fuzz"))
    env = gym.make(env_id, **kwargs)
    try:
        report = fuzz_env(env, ACTIONS_PER_ENV.get(env_id, DEFAULT_ACTIONS), seed=7, step_timeout_s=10.0)
    finally:
        env.close()
    assert report.actions == ACTIONS_PER_ENV.get(env_id, DEFAULT_ACTIONS)
    assert report.failures == 0, "\n".join(report.examples)
    assert report.episodes >= 2  # episodes ended and were reset during the run


def test_the_generator_is_hostile_and_reproducible() -> None:
    actions = list(hostile_actions(3, 400, ["search"], ["Search"]))
    assert actions == list(hostile_actions(3, 400, ["search"], ["Search"]))
    assert any(len(a) > 100_000 for a in actions)
    assert any("\x00" in a for a in actions) and any("\ud800" in a for a in actions)
    assert any(a.count("[") > 1000 for a in actions)


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "search", "arguments": {"query": ' + "[" * 5000,
        '<tool_call>{"name": "search", "arguments": "' + "[" * 5000 + '"}</tool_call>',
        '<tool_call>{"name": "search", "arguments": {"query": 1' + "0" * 6000 + "}}</tool_call>",
        "Search[" * 20_000,
        "x" * 200_000,
    ],
)
def test_parser_turns_pathological_input_into_an_invalid_action(text: str) -> None:
    parsed = parse_action(text, [steppo_envs.ToolSpec("search", "s", {"type": "object"}, compact="Search")])
    error = parsed.error or ""
    assert parsed.kind == "invalid"
    assert "JSON" in error or "arguments" in error or "characters long" in error or "empty" in error


#: Every pathological shape fuzzing found (or that could make a scan quadratic), as a repeated unit.
PATHOLOGICAL_UNITS: dict[str, str] = {
    "compact search": "Search[",
    "compact act": "Act[",
    "compact answer": "Answer[",
    "nested brackets": "[",
    "closing brackets": "]",
    "json objects": '{"a":',
    "open tool calls": "<tool_call>",
    "empty tool calls": "<tool_call></tool_call>",
    "tool call prefix": '<tool_call>{"name": "search", "arguments": {"query": ',
    "open answers": "<answer>",
    "open think": "<think>",
    "mixed tags": "Search[<tool_call>{[<answer>",
    "one action per line": "Search[x\n",
    "escapes": '"\\',
    "surrogates and NULs": "\ud800\x00",
}
ONE_MB = 1_000_000


@pytest.mark.parametrize("shape", sorted(PATHOLOGICAL_UNITS))
def test_1mb_pathological_responses_parse_in_linear_time(shape: str) -> None:
    """Not a speed target (those are in benchmarks/): a guard that no shape makes a scan quadratic. A
    quadratic scan of 1 MB takes hours (Search[ x 20k took 159 s before the parser was bounded); a
    linear one milliseconds, so 1 s is far from both."""
    from steppo_envs.textworld_env.common import ACT_TOOL, read_command

    unit = PATHOLOGICAL_UNITS[shape]
    text = unit * (ONE_MB // len(unit))
    search = steppo_envs.ToolSpec("search", "s", {"type": "object", "properties": {"query": {"type": "string"}}},
                                  compact="Search")
    for name, fn in (("parse_action", lambda t: parse_action(t, [search, ACT_TOOL])),
                     ("parse_action without tools", lambda t: parse_action(t)),
                     ("clean_action_text", clean_action_text),
                     ("TextWorld read_command", lambda t: read_command(t, [ACT_TOOL], 120))):
        for sample in (text, text[: MAX_ACTION_CHARS - 1]):  # past the length bound, and just under it
            start = time.perf_counter()
            fn(sample)
            elapsed = time.perf_counter() - start
            assert elapsed < 1.0, f"{name} took {elapsed:.2f} s on {len(sample):,} characters of {shape!r}"


def test_1mb_pathological_responses_step_multihop_in_linear_time() -> None:
    """The same shapes through a whole MultiHopQA step (parse, search, render, info)."""
    _data("multihop_qa")
    env = gym.make("steppo/MultiHopQA-v0", split="eval", max_steps=len(PATHOLOGICAL_UNITS) + 1)
    try:
        env.reset(seed=0)
        for shape, unit in sorted(PATHOLOGICAL_UNITS.items()):
            for sample in (unit * (ONE_MB // len(unit)), unit * ((MAX_ACTION_CHARS - 1) // len(unit))):
                start = time.perf_counter()
                obs, _, terminated, truncated, info = env.step(sample)
                elapsed = time.perf_counter() - start
                assert elapsed < 1.0, f"a MultiHopQA step took {elapsed:.2f} s on {len(sample):,} characters of {shape!r}"
                json.dumps({"observation": obs, "info": info}, ensure_ascii=False).encode("utf-8")
                if terminated or truncated:
                    env.reset(seed=1)
    finally:
        env.close()


def test_parser_accepts_nesting_up_to_the_bound_and_cleans_escapes() -> None:
    spec = steppo_envs.ToolSpec("f", "f", {"type": "object", "properties": {"x": {}}})
    inner = "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)
    ok = parse_action('<tool_call>{"name": "f", "arguments": {"x": ' + inner + "}}</tool_call>", [spec])
    assert ok.kind == "tool_call"
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    bad = parse_action('<tool_call>{"name": "f", "arguments": {"x": ' + deep + "}}</tool_call>", [spec])
    assert bad.kind == "invalid" and "nested more than" in (bad.error or "")
    escaped = parse_action('<tool_call>{"name": "f", "arguments": {"x": "a\\u0000b\\ud800c"}}</tool_call>', [spec])
    assert escaped.tool_calls[0].arguments == {"x": "ab\ufffdc"}
    json.dumps(escaped.to_dict(), ensure_ascii=False).encode("utf-8")


class _SlowOrBrokenEnv(gym.Env[str, str]):
    """Hangs on 'sleep', raises on 'boom', returns an unstorable observation on 'bad'."""

    observation_space = steppo_envs.text_space()
    action_space = steppo_envs.text_space()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        return "start", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if "a" in action[:1]:
            time.sleep(5)
        if "<" in action[:1]:
            raise RuntimeError("boom")
        return ("\ud800" if "\x00" in action else "ok"), 0.0, False, False, {}


def test_fuzz_env_catches_hangs_exceptions_and_unstorable_output() -> None:
    start = time.perf_counter()
    report = fuzz_env(_SlowOrBrokenEnv(), 200, seed=1, step_timeout_s=0.05)
    assert report.hangs > 0 and report.exceptions > 0 and report.bad_outputs > 0
    assert report.actions == 200 and time.perf_counter() - start < 60
    assert report.episodes == 1 + report.failures


def test_report_counts_and_keeps_examples() -> None:
    report = FuzzReport(env_id="x")
    for kind in ("exception", "hang", "bad output"):
        report.add(kind, "a" * 500, "boom")
    assert (report.exceptions, report.hangs, report.bad_outputs, report.failures) == (1, 1, 1, 3)
    assert len(report.examples[0]) < 200
