"""steppo/TextWorld-v0: presets, cache, pools, step rules, determinism, worker processes, fuzzing."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import steppo_envs
from steppo_envs.textworld_env.common import ACT_TOOL, clean_command, read_command
from steppo_envs.textworld_env.games import PRESETS, game_ref, generate_game, pool_refs, pool_seeds

pytest.importorskip("textworld")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ENV_ID = "steppo/TextWorld-v0"
LEVELS = {"simple": 1, "coin_collector": 2, "treasure_hunter": 3, "cooking": 3}


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One game cache shared by the whole test session (games are generated once)."""
    return str(tmp_path_factory.mktemp("tw_cache"))


def make(cache: str, **kw: object) -> gym.Env[str, str]:
    kw.setdefault("pool_size", 2)
    return gym.make(ENV_ID, cache_dir=cache, progress=False, **kw)


def test_import_is_light() -> None:
    code = (
        "import sys, steppo_envs, steppo_envs.textworld_env, steppo_envs.alfworld_env, steppo.cli.games;"
        "assert 'textworld' not in sys.modules and 'alfworld' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_read_command_forms() -> None:
    tools = (ACT_TOOL,)
    call = '<think>hmm</think><tool_call>{"name": "act", "arguments": {"command": "Go  East"}}</tool_call>'
    assert read_command(call, tools, 120).command == "go east"
    assert read_command("I will open it. Act[open wooden door]", tools, 120).command == "open wooden door"
    bare = read_command("  take key from table \n", tools, 120)
    assert bare.command == "take key from table" and bare.parsed.format == "none" and bare.parsed.valid
    assert read_command("<think>x</think>look", tools, 120).command == "look"
    for bad in ("", "   ", "line one\nline two", "x" * 200, "<tool_call>{not json", "quit", "save game", "\x00\x01"):
        choice = read_command(bad, tools, 120)
        assert choice.command is None and choice.error and not choice.parsed.valid, bad
    assert clean_command("open\x00 door\u00e9", 120) == "open door"
    assert clean_command("\\c$x", 120) == "c$x"


def test_pools_are_disjoint_and_named() -> None:
    for preset in PRESETS:
        train = {r.id for r in pool_refs(preset, 1, "train", 50)}
        evals = {r.id for r in pool_refs(preset, 1, "eval", 50)}
        assert len(train) == len(evals) == 50 and not train & evals
    assert pool_seeds("train", 3) == [0, 1, 2] and pool_seeds("eval", 2) == [100000, 100001]
    assert game_ref("simple", 1, 12).id == "simple-L1-seed12"
    with pytest.raises(steppo_envs.ConfigError, match="preset"):
        game_ref("nope", 1, 0)
    with pytest.raises(steppo_envs.ConfigError, match="level"):
        gym.make(ENV_ID, level=99)
    with pytest.raises(steppo_envs.ConfigError, match="pool_size"):
        gym.make(ENV_ID, pool_sizee=3)


@pytest.mark.slow
def test_train_and_eval_games_differ(tw_cache: str) -> None:
    train = make(tw_cache, pool="train")
    evals = make(tw_cache, pool="eval", pool_size=1)
    seen = {}
    for env, idx in ((train, 0), (train, 1), (evals, 0)):
        _, info = env.reset(seed=0, options={"task_index": idx})
        seen[info["task_id"]] = Path(info["extra"]["game_file"]).with_suffix(".json").read_text()
    assert set(seen) == {"simple-L1-seed0", "simple-L1-seed1", "simple-L1-seed100000"}
    assert len(set(seen.values())) == 3


@pytest.mark.slow
def test_check_step_env(tw_cache: str) -> None:
    steppo_envs.check_step_env(make(tw_cache))


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_walkthrough_wins(tw_cache: str, preset: str) -> None:
    env = make(tw_cache, preset=preset, level=LEVELS[preset], pool_size=1, max_steps=100)
    obs, info = env.reset(seed=3)
    assert info["task_id"] == f"{preset}-L{LEVELS[preset]}-seed0" and "## Objective" in obs
    commands = json.loads(Path(info["extra"]["game_file"]).with_suffix(".json").read_text())["metadata"]["walkthrough"]
    assert commands
    total, terminated = 0.0, False
    for i, cmd in enumerate(commands):
        form = [f"Act[{cmd}]", cmd, json.dumps({"name": "act", "arguments": {"command": cmd}})][i % 3]
        if i % 3 == 2:
            form = f"<tool_call>{form}</tool_call>"
        obs, reward, terminated, truncated, info = env.step(form)
        total += reward
        if preset != "cooking":  # tw-cooking walkthroughs may open a container the admissible list omits
            assert info["valid"], (cmd, info["feedback"])
        if terminated:
            break
    assert terminated and not truncated and info["success"]
    assert info["metrics"]["score"] == info["metrics"]["max_score"] == total > 0
    assert info["metrics"]["normalized_score"] == 1.0


@pytest.mark.slow
def test_expert_command_wins(tw_cache: str) -> None:
    env = make(tw_cache, preset="treasure_hunter", level=3, pool_size=1, expert=True)
    _, info = env.reset(seed=0)
    terminated = False
    for _ in range(30):
        command = info["extra"]["expert_command"]
        assert command
        _, _, terminated, _, info = env.step(f"Act[{command}]")
        if terminated:
            break
    assert terminated and info["success"]


@pytest.mark.slow
def test_invalid_and_non_admissible_steps(tw_cache: str) -> None:
    env = make(tw_cache, invalid_penalty=0.1, max_steps=3)
    obs0, _ = env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step("dance wildly")
    assert not info["valid"] and "not one of the admissible" in info["feedback"] and info["feedback"] in obs
    assert info["extra"]["command"] == "dance wildly" and reward == pytest.approx(-0.1)
    assert "> dance wildly" in obs  # the game received it
    obs, reward, terminated, truncated, info = env.step("<tool_call>{broken")
    assert not info["valid"] and info["extra"]["command"] is None and "did not receive" in info["feedback"]
    obs, reward, terminated, truncated, info = env.step("look")
    assert info["valid"] and truncated and not terminated and info["step"] == 3
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


@pytest.mark.slow
def test_same_seed_same_game_and_observations(tw_cache: str) -> None:
    def play(seed: int) -> list[object]:
        env = make(tw_cache, pool_size=2)
        obs, info = env.reset(seed=seed)
        trace: list[object] = [info["task_id"], obs]
        for cmd in ["look", "Act[open antique trunk]", "go east", "inventory"]:
            trace.append(env.step(cmd)[:4])
        env.close()
        return trace

    assert play(5) == play(5)
    ids = {make(tw_cache).reset(seed=s)[1]["task_id"] for s in range(6)}
    assert ids == {"simple-L1-seed0", "simple-L1-seed1"}


def _generate(root: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(str(generate_game(game_ref("treasure_hunter", 1, 7, root=root))))


@pytest.mark.slow
def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generate, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    folder = Path(paths.pop()).parent
    assert sorted(f.name for f in folder.iterdir() if not f.name.endswith(".lock")) == [
        "treasure_hunter-L1-seed7.json",
        "treasure_hunter-L1-seed7.z8",
    ]
    json.loads((folder / "treasure_hunter-L1-seed7.json").read_text())


@pytest.mark.slow
def test_async_vector_env_matches_in_process(tw_cache: str) -> None:
    from steppo_envs.textworld_env.vector import make_async_vector_env

    actions = [["look", "Act[open antique trunk]"], ["inventory", "go east"]]
    venv = make_async_vector_env(ENV_ID, 2, cache_dir=tw_cache, pool_size=2, progress=False)
    try:
        obs, infos = venv.reset(seed=[11, 12])
        got = [list(obs)]
        for step in zip(*actions, strict=True):
            obs, rewards, _, _, _ = venv.step(list(step))
            got.append(list(obs))
    finally:
        venv.close()
    for i, seed in enumerate((11, 12)):
        env = make(tw_cache)
        expected = [env.reset(seed=seed)[0]] + [env.step(a)[0] for a in actions[i]]
        assert [g[i] for g in got] == expected


@pytest.fixture(scope="module")
def fuzz_env(tw_cache: str) -> gym.Env[str, str]:
    env = make(tw_cache, preset="cooking", level=1, pool_size=1, max_steps=25)
    env.reset(seed=0)
    return env


_words = st.sampled_from(["go", "east", "take", "open", "door", "quit", "save", "look", "from", "fridge", "y", "\x00", "]"])
_actions = st.one_of(
    st.text(max_size=60),
    st.lists(_words, max_size=6).map(" ".join),
    st.lists(_words, max_size=4).map(lambda w: f"Act[{' '.join(w)}]"),
    st.text(max_size=30).map(lambda c: "<tool_call>" + json.dumps({"name": "act", "arguments": {"command": c}}) + "</tool_call>"),
    st.sampled_from(["take milk from fridge", "prepare meal", "eat meal", "examine cookbook", "inventory"]),
)


@pytest.mark.slow
@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action=_actions)
def test_fuzz_actions(fuzz_env: gym.Env[str, str], action: str) -> None:
    obs, reward, terminated, truncated, info = fuzz_env.step(action)
    assert isinstance(obs, str) and obs.startswith("## Objective")
    json.dumps(info)
    if terminated or truncated:
        fuzz_env.reset()


def test_compact_state_rendering_is_exact() -> None:
    from steppo_envs.textworld_env.common import HistoryEntry, StateView, render_compact_state

    view = StateView(
        objective="Find the coin.", observation="> go west\n-= Closet =-", admissible=("go east", "look"),
        history=(HistoryEntry("go north", "long text that is not shown"), HistoryEntry("go west", "-= Closet =-")),
        inventory=None, step=2, max_steps=8, feedback=None,
    )
    assert render_compact_state(view, budget_chars=1000) == (
        "## Objective\nFind the coin.\n\nStep 2 of 8.\n\n## Commands so far\ngo north, go west\n\n"
        "## Observation\n> go west\n-= Closet =-\n\n## Admissible commands\ngo east, look"
    )
    bad = dataclasses.replace(view, feedback="Invalid action: no command.")
    assert "## Feedback\nInvalid action: no command. Reply as Act[command]." in render_compact_state(bad, budget_chars=1000)


@pytest.mark.slow
def test_compact_prompt_style_passes_the_checker(tw_cache: str) -> None:
    env = make(tw_cache, prompt_style="compact", preset="coin_collector", level=2)
    steppo_envs.check_step_env(env)
    obs, info = env.reset(seed=0)
    assert info["tools"] == [] and "Act[command]" in info["system_prompt"]
    obs, *_ , info = env.step("Act[look]")
    assert "## Commands so far\nlook" in obs and "## Recent actions" not in obs


@pytest.mark.slow
def test_cycle_draw_plays_every_game_once(tw_cache: str) -> None:
    env = make(tw_cache, pool_size=3, draw="cycle")
    ids = [env.reset(seed=s)[1]["task_id"] for s in range(10, 13)]
    assert sorted(ids) == ["simple-L1-seed0", "simple-L1-seed1", "simple-L1-seed2"]
    assert env.reset(seed=13)[1]["task_id"] == ids[0]  # 13 % 3 == 10 % 3
    with pytest.raises(steppo_envs.ConfigError, match="draw"):
        make(tw_cache, draw="sequential")
