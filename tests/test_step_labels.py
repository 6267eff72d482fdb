"""Ground-truth step labels (``step_labels=True``, ``info["step_label"]``) of TextWorld, MultiHopQA and
PaperSearch on hand-checked episodes, and no label key when the option is off."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from test_paper_search import _tiny_env, _write_tiny  # the tiny corpus and questions of that module

from steppo_envs.multihop import MultiHopQAEnv
from steppo_envs.textworld_env import episode as tw_episode
from steppo_envs.textworld_env.planner import PlanLength, plan_length, progress_label

# -- the label rule (pure) -------------------------------------------------------------------------


def test_progress_label_hand_cases() -> None:
    assert progress_label(PlanLength(5), PlanLength(4)) == (1, None)
    assert progress_label(PlanLength(5), PlanLength(5)) == (0, None)
    assert progress_label(PlanLength(5), PlanLength(6)) == (0, None)
    assert progress_label(PlanLength(1), PlanLength(0)) == (1, None)
    assert progress_label(PlanLength(None, "gave up"), PlanLength(0)) == (1, None)  # a winning step is 1
    assert progress_label(PlanLength(None, "gave up"), PlanLength(3)) == (0, "no plan from the state before the step: gave up")
    assert progress_label(PlanLength(3), PlanLength(None, "gave up")) == (0, "no plan from the state after the step: gave up")


# -- TextWorld ----------------------------------------------------------------------------------------

TW_SETTINGS: dict[str, Any] = {
    "preset": "coin_collector", "level": 10, "max_steps": 18, "budget_chars": 1000, "prompt_style": "compact",
    "show_inventory": False, "pool_size": 1, "progress": False,
}  # fmt: skip
"""The credit-assignment benchmark's settings (one game: coin_collector-L10-seed0, a 10-command quest)."""

REVERSE = {"go north": "go south", "go south": "go north", "go east": "go west", "go west": "go east"}


@pytest.fixture(scope="module")
def tw_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("textworld")
    return str(tmp_path_factory.mktemp("tw_labels"))


def _tw(cache: str, **kw: Any) -> gym.Env[str, str]:
    return gym.make("steppo/TextWorld-v0", cache_dir=cache, **{**TW_SETTINGS, **kw})


def _act(env: gym.Env[str, str], command: str) -> dict[str, Any]:
    return env.step(f"Act[{command}]")[4]


def test_textworld_expert_steps_are_1_detours_and_no_ops_are_0(tw_cache: str) -> None:
    env = _tw(tw_cache, step_labels=True, expert=True)
    _, info = env.reset(seed=0)
    walkthrough = json.loads(Path(info["extra"]["game_file"]).with_suffix(".json").read_text())["metadata"]["walkthrough"]
    assert len(walkthrough) == 10 and walkthrough[-1] == "take coin"
    admissible = info["extra"]["admissible_commands"]
    first = info["extra"]["expert_command"]
    assert first == walkthrough[0] and first in admissible

    info = _act(env, "look")  # admissible, changes nothing
    assert info["valid"] and info["step_label"] == 0 and "step_label_error" not in info
    wrong = next(d for d in REVERSE if d not in admissible)  # a direction with no exit: not admissible
    info = _act(env, wrong)
    assert not info["valid"] and info["step_label"] == 0
    info = _act(env, first)
    assert info["valid"] and info["step_label"] == 1
    info = _act(env, REVERSE[first])  # back where it started: away from the goal
    assert info["valid"] and info["step_label"] == 0
    labels = []
    for _ in range(14):
        command = info["extra"]["expert_command"]
        _, reward, terminated, truncated, info = env.step(f"Act[{command}]")
        labels.append(info["step_label"])
        assert "step_label_error" not in info
        if terminated or truncated:
            break
    assert terminated and info["success"] and reward == 1.0
    assert labels == [1] * 10  # every expert step shortens the plan, the winning one included
    env.close()


def test_textworld_invalid_command_the_game_acts_on_is_0_and_the_plan_is_remeasured(tw_cache: str) -> None:
    env = _tw(tw_cache, step_labels=True)
    _, info = env.reset(seed=0)
    walkthrough = json.loads(Path(info["extra"]["game_file"]).with_suffix(".json").read_text())["metadata"]["walkthrough"]
    bare = walkthrough[0].removeprefix("go ")  # "west": not an admissible command, but the game moves
    info = _act(env, bare)
    assert not info["valid"] and info["step_label"] == 0
    assert walkthrough[1] in info["extra"]["admissible_commands"]  # it did move
    labels = [_act(env, command)["step_label"] for command in walkthrough[1:]]
    assert labels == [1] * 9


def test_textworld_no_plan_is_label_0_with_a_reason(tw_cache: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tw_episode, "plan_length", functools.partial(plan_length, max_states=1))
    env = _tw(tw_cache, step_labels=True)
    _, info = env.reset(seed=0)
    walkthrough = json.loads(Path(info["extra"]["game_file"]).with_suffix(".json").read_text())["metadata"]["walkthrough"]
    info = _act(env, walkthrough[0])
    assert info["valid"] and info["step_label"] == 0
    assert info["step_label_error"] == (
        "no plan from the state before the step: no winning command sequence was found within 1 game states"
    )


def test_textworld_without_the_option_has_no_label(tw_cache: str) -> None:
    env = _tw(tw_cache)
    _, info = env.reset(seed=0)
    for command in ("look", "go west", "Act[", "go west"):
        info = _act(env, command)
        assert "step_label" not in info and "step_label_error" not in info


# -- MultiHopQA ---------------------------------------------------------------------------------------


def test_multihop_labels_new_support_and_correct_answers() -> None:
    env = MultiHopQAEnv(split="hotpotqa_ircot500", step_labels=True, top_k=1, max_steps=8)
    env.reset(options={"task_index": 0})
    ex = env.examples[0]
    assert ex.supporting_titles == ("Shirley Temple", "Kiss and Tell (1945 film)") and ex.answers[0] == "Chief of Protocol"
    steps = [
        ("Search[Shirley Temple]", ["Shirley Temple"], 1),  # a supporting paragraph, new
        ("Search[Shirley Temple]", ["Shirley Temple"], 0),  # the same search again
        ("Search[photosynthesis chlorophyll]", None, 0),  # no supporting paragraph
        ("Search[   ]", None, 0),  # invalid
        ("Search[Kiss and Tell (1945 film)]", ["Kiss and Tell (1945 film)"], 1),  # the second one
        ("Answer[Chief of Protocol]", None, 1),  # correct
    ]
    for action, titles, label in steps:
        _, _, _, _, info = env.step(action)
        if titles is not None:
            assert info["extra"]["retrieved_titles"] == titles
        assert info["step_label"] == label, action
    assert info["success"]
    env.reset(options={"task_index": 0})
    _, reward, terminated, _, info = env.step("Answer[Secretary of State]")
    assert terminated and reward == 0.0 and info["step_label"] == 0


def test_multihop_without_the_option_has_no_label() -> None:
    env = MultiHopQAEnv(split="hotpotqa_ircot500")
    env.reset(options={"task_index": 0})
    for action in ("Search[Shirley Temple]", "hello", "Answer[Chief of Protocol]"):
        assert "step_label" not in env.step(action)[4]


# -- PaperSearch --------------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path / "cache"))
    return _write_tiny(tmp_path / "data")


def test_paper_search_labels_new_gold_papers_and_rewarded_selections(tiny: Path) -> None:
    env = _tiny_env(tiny, step_labels=True, max_steps=10)
    env.reset(options={"task_index": 0})  # gold: p-dqn, p-dqn2 (cut-off 2019 + 1)
    steps = [
        ("Search[theoretical analysis]", ["p-dqn", "p-ica"], 0.0, 1),  # p-dqn: a gold paper, new
        ("Search[generative adversarial]", ["p-gan"], 0.0, 0),  # no gold paper
        ("Search[Theoretical, ANALYSIS]", [], -0.5, 0),  # the same search again (same terms)
        ("Related[p-dqn]", None, 0.0, 1),  # surfaces p-dqn2, the other gold paper
        ("Search[target networks q learning]", None, 0.0, 0),  # gold papers again, none new
        ("Select[p-gan]", [], -0.1, 0),  # a wrong pick
        ("Select[p-dqn]", [], 0.5, 1),  # a gold pick earns reward
        ("Select[p-dqn, p-gan]", [], 0.0, 0),  # nothing new selected
        ("Finish[]", [], 0.0, 0),
    ]
    for action, surfaced, reward, label in steps:
        _, r, _, _, info = env.step(action)
        if surfaced is not None:
            assert info["extra"]["surfaced_this_step"] == surfaced, action
        assert r == pytest.approx(reward) and info["step_label"] == label, action
        if action == "Related[p-dqn]":
            assert "p-dqn2" in info["extra"]["surfaced_this_step"]
    # a gold pick and a repeated search in one step: the selection's reward counts, the penalty does not
    env.reset(options={"task_index": 0})
    env.step("Search[target networks]")
    calls = [{"name": "search", "arguments": {"query": "target networks"}}, {"name": "select", "arguments": {"paper_ids": "p-dqn2"}}]
    _, r, _, _, info = env.step("".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in calls))
    assert r == pytest.approx(-0.5 + 0.5) and info["step_label"] == 1


def test_paper_search_without_the_option_has_no_label(tiny: Path) -> None:
    env = _tiny_env(tiny)
    env.reset(options={"task_index": 0})
    for action in ("Search[theoretical analysis]", "Select[p-dqn]", "Finish[]"):
        assert "step_label" not in env.step(action)[4]
