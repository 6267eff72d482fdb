"""``gymnasium.make(id, max_episode_steps=N)``: the env's own step limit (``info["max_steps"]``, the
rendered steps left, the system prompt) becomes ``N``, the one Gymnasium's ``TimeLimit`` enforces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest

import steppo_envs
from steppo_envs.step_limit import time_limit_of


def _data(subdir: str) -> None:
    try:
        steppo_envs.resolve_data_dir(subdir=subdir)
    except steppo_envs.DataDirError:
        pytest.skip(f"{subdir} data not found (set STEPPO_DATA_DIR)")


def _multihop() -> dict[str, Any]:
    _data("multihop_qa")
    return {"split": "eval"}


def _textworld() -> dict[str, Any]:
    pytest.importorskip("textworld")
    return {"preset": "simple", "level": 1, "pool_size": 2, "progress": False}  # the games test_trainer uses


def _alfworld() -> dict[str, Any]:
    pytest.importorskip("alfworld")
    _data("alfworld/json_2.1.1")
    return {"split": "valid_seen"}


def _paper_search() -> dict[str, Any]:
    _data("paper_search")
    return {"split": "test", "progress": False}


#: env id -> (options of a small instance, the text of the steps-left counter for 2 steps left).
CASES: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "steppo/MultiHopQA-v0": (_multihop, "Steps left: 2."),
    "steppo/TextWorld-v0": (_textworld, "Step 0 of 2 (2 left)."),
    "steppo/ALFWorld-v0": (_alfworld, "Step 0 of 2 (2 left)."),
    "steppo/PaperSearch-v0": (_paper_search, "Steps left: 2."),
}


def test_every_bundled_env_is_covered() -> None:
    assert {e.id for e in steppo_envs.BUNDLED} == set(CASES), "add the new env id to CASES"


@pytest.mark.parametrize("env_id", sorted(CASES))
def test_max_episode_steps_becomes_the_envs_own_limit(env_id: str) -> None:
    options, counter = CASES[env_id]
    env = gym.make(env_id, max_episode_steps=2, **options())
    try:
        assert time_limit_of(env) == 2
        obs, info = env.reset(seed=0)
        assert info["max_steps"] == 2 and counter in obs, obs[:600]
        assert "2 steps" in info["system_prompt"]
        obs, _, terminated, truncated, info = env.step("not an action\nat all")
        assert (terminated, truncated, info["max_steps"]) == (False, False, 2)
        obs, _, terminated, truncated, info = env.step("not an action\nat all")
        assert (terminated, truncated, info["max_steps"]) == (False, True, 2)  # the env and the TimeLimit agree
    finally:
        env.close()


def test_explicit_smaller_max_steps_wins_and_no_time_limit_changes_nothing() -> None:
    options = _multihop()
    with gym.make("steppo/MultiHopQA-v0", max_episode_steps=4, max_steps=2, **options) as env:
        assert env.reset(seed=0)[1]["max_steps"] == 2  # both limits apply: the smaller one
    with gym.make("steppo/MultiHopQA-v0", max_episode_steps=9, **options) as env:
        assert env.reset(seed=0)[1]["max_steps"] == 9  # the TimeLimit's, above the default of 5
    with gym.make("steppo/MultiHopQA-v0", **options) as env:
        assert time_limit_of(env) is None and env.reset(seed=0)[1]["max_steps"] == 5
