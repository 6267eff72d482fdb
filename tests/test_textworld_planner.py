"""The TextWorld expert on user games without a walkthrough (issue 16): it plans from the game's own
logic and wins, re-plans after a detour, works through `steppo rollout --backend expert`, and refuses
a game it cannot plan at reset with an error naming the game."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import steppo_envs
from steppo_envs.textworld_env.games import game_ref, generate_game

pytest.importorskip("textworld")


@pytest.fixture(scope="module")
def source_game(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated tw-simple game (an 8-command quest), made once for the module."""
    return generate_game(game_ref("simple", 1, 7, root=tmp_path_factory.mktemp("tw_games")))


def _user_copy(src: Path, folder: Path, *, keep_quest_actions: bool, keep_quests: bool = True) -> Path:
    """Copy ``src`` as a user game whose .json has no walkthrough in its metadata; optionally without
    the quests' recorded actions (TextWorld's own expert replays those) or without any quest."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(src.with_suffix(".json").read_text())
    assert data["metadata"].pop("walkthrough")
    for quest in data["quests"]:
        if not keep_quest_actions:
            quest["commands"] = []
            for event in quest["win_events"]:
                event["actions"], event["commands"] = [], []
    if not keep_quests:
        data["quests"] = []
    dst = folder / f"my_game_{int(keep_quest_actions)}{int(keep_quests)}.z8"
    shutil.copy(src, dst)
    dst.with_suffix(".json").write_text(json.dumps(data))
    return dst


def _play_expert(env: gym.Env[str, str], info: dict[str, Any], limit: int = 40) -> tuple[dict[str, Any], list[str]]:
    played: list[str] = []
    for _ in range(limit):
        command = info["extra"]["expert_command"]
        assert command, f"no expert command at step {info['step']}"
        played.append(command)
        _, _, terminated, truncated, info = env.step(f"Act[{command}]")
        if terminated or truncated:
            break
    return info, played


@pytest.mark.parametrize("keep_quest_actions", [True, False], ids=["quest-actions", "win-condition-only"])
def test_expert_wins_a_game_without_walkthrough(source_game: Path, tmp_path: Path, keep_quest_actions: bool) -> None:
    game = _user_copy(source_game, tmp_path, keep_quest_actions=keep_quest_actions)
    assert "walkthrough" not in json.loads(game.with_suffix(".json").read_text())["metadata"]
    env = gym.make("steppo/TextWorld-v0", game_files=[str(game)], expert=True, max_steps=40)
    _, info = env.reset(seed=0)
    assert info["task_id"] == game.stem
    info, played = _play_expert(env, info)
    assert info["success"] and info["metrics"]["won"] == 1.0, played
    assert info["metrics"]["score"] == info["metrics"]["max_score"]
    assert len(played) == len(json.loads(source_game.with_suffix(".json").read_text())["metadata"]["walkthrough"])
    env.close()


def test_expert_replans_after_a_detour(source_game: Path, tmp_path: Path) -> None:
    game = _user_copy(source_game, tmp_path, keep_quest_actions=False)
    env = gym.make("steppo/TextWorld-v0", game_files=[str(game)], expert=True, max_steps=40)
    _, info = env.reset(seed=0)
    first = info["extra"]["expert_command"]
    detour = next(c for c in info["extra"]["admissible_commands"] if c.startswith(("open ", "take ")) and c != first)
    _, _, _, _, info = env.step(f"Act[{detour}]")  # leave the plan: the expert plans again from here
    assert info["valid"] and info["extra"]["expert_command"]
    info, played = _play_expert(env, info)
    assert info["success"], played
    env.close()


def test_expert_refuses_a_game_it_cannot_plan_at_reset(source_game: Path, tmp_path: Path) -> None:
    game = _user_copy(source_game, tmp_path, keep_quest_actions=False, keep_quests=False)
    env = gym.make("steppo/TextWorld-v0", game_files=[str(game)], expert=True)
    with pytest.raises(steppo_envs.ConfigError) as err:
        env.reset(seed=0)
    message = str(err.value)
    assert game.stem in message and "no walkthrough" in message and "no quest with a win condition" in message
    assert "\n" not in message
    env.close()
    plain = gym.make("steppo/TextWorld-v0", game_files=[str(game)])  # without the expert the game still plays
    _, info = plain.reset(seed=0)
    assert info["task_id"] == game.stem
    plain.close()


@pytest.mark.slow
def test_rollout_expert_backend_on_a_game_without_walkthrough(source_game: Path, tmp_path: Path) -> None:
    from steppo.cli import main
    from steppo_agent.trajectory_io import read_trajectories

    game = _user_copy(source_game, tmp_path / "games", keep_quest_actions=False)
    records = tmp_path / "expert.jsonl"
    rc = main([
        "rollout", "--backend", "expert", "--env", "steppo/TextWorld-v0", "--env-arg", "expert=true",
        "--env-arg", f"game_files={json.dumps([str(game)])}", "-n", "1", "--temperature", "0", "-q", "-o", str(records),
    ])  # fmt: skip
    assert rc == 0
    (traj,) = read_trajectories(records)
    assert traj.success and traj.terminated and all(step.valid for step in traj.steps)
