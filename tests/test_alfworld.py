"""steppo/ALFWorld-v0: contract, expert wins on all six task types, determinism, fuzzing."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import steppo_envs

pytest.importorskip("alfworld")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from steppo_envs.alfworld_env.env import TASK_TYPES, list_games  # noqa: E402

ENV_ID = "steppo/ALFWorld-v0"

try:
    steppo_envs.resolve_data_dir(subdir="alfworld/json_2.1.1")
except steppo_envs.DataDirError:  # pragma: no cover
    pytest.skip("ALFWorld data not found (set STEPPO_DATA_DIR)", allow_module_level=True)


def test_games_and_task_types() -> None:
    games = list_games(None, "valid_seen,valid_unseen")
    assert len(games) == 274 and {g.task_type for g in games} == set(TASK_TYPES)
    assert len(list_games(None, "train_subset", ("pick_two_obj_and_place",))) == 60
    with pytest.raises(steppo_envs.ConfigError, match="split"):
        list_games(None, "nope")


def _expert_games() -> list[tuple[str, int]]:
    """One game of every task type, alternating the two eval splits (the CI-sized check; the expert's
    win rate over whole splits is what `steppo rollout --backend expert` measures)."""
    chosen: list[tuple[str, int]] = []
    for i in range(len(TASK_TYPES)):
        split = ("valid_seen", "valid_unseen")[i % 2]
        ttype = TASK_TYPES[i % len(TASK_TYPES)]
        games = list_games(None, split)
        idx = [j for j, g in enumerate(games) if g.task_type == ttype][i // len(TASK_TYPES)]
        chosen.append((split, idx))
    return chosen


@pytest.mark.slow
def test_expert_wins_a_game_of_every_task_type() -> None:
    envs = {s: gym.make(ENV_ID, split=s, expert=True, max_steps=50, show_admissible=False) for s in ("valid_seen", "valid_unseen")}
    types = set()
    for split, idx in _expert_games():
        env = envs[split]
        _, info = env.reset(options={"task_index": idx})
        types.add(info["extra"]["task_type"])
        total, terminated = 0.0, False
        while not terminated:
            command = info["extra"]["expert_command"]
            assert command, info["task_id"]
            _, reward, terminated, truncated, info = env.step(f"Act[{command}]")
            total += reward
            assert info["valid"] and not truncated, (info["task_id"], command)
        assert info["success"] and total == 1.0 and info["metrics"]["won"] == 1.0, info["task_id"]
    assert types == set(TASK_TYPES)


@pytest.mark.slow
def test_same_seed_same_game_and_state() -> None:
    def play(seed: int) -> list[object]:
        env = gym.make(ENV_ID, split="valid_unseen")
        obs, info = env.reset(seed=seed)
        assert info["max_steps"] == 20 and info["extra"]["task_type"] in TASK_TYPES
        assert "## Objective" in obs and "Your task is to" not in obs
        trace: list[object] = [info["task_id"], obs]
        for cmd in ["look", "inventory", "go to countertop 1", "fly away"]:
            trace.append(env.step(cmd)[:4])
        env.close()
        return trace

    first = play(3)
    assert first == play(3)
    assert first[-1][-1] is False  # not truncated after 4 steps


@pytest.fixture(scope="module")
def fuzz_env() -> gym.Env[str, str]:
    env = gym.make(ENV_ID, split="valid_seen", max_steps=40)
    env.reset(seed=0)
    return env


_words = st.sampled_from(["go", "to", "take", "from", "put", "in/on", "drawer", "1", "quit", "look", "\x00", "heat", "]"])
_actions = st.one_of(
    st.text(max_size=60),
    st.lists(_words, max_size=6).map(" ".join),
    st.lists(_words, max_size=4).map(lambda w: f"Act[{' '.join(w)}]"),
    st.text(max_size=30).map(lambda c: "<tool_call>" + json.dumps({"name": "act", "arguments": {"command": c}}) + "</tool_call>"),
)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # tests/test_fuzz_registry.py adds hostile actions
@given(action=_actions)
def test_fuzz_actions(fuzz_env: gym.Env[str, str], action: str) -> None:
    obs, reward, terminated, truncated, info = fuzz_env.step(action)
    assert isinstance(obs, str) and obs.startswith("## Objective") and reward in (0.0, 1.0)
    json.dumps(info)
    if terminated or truncated:
        fuzz_env.reset()
