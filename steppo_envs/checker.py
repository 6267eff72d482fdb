"""``check_step_env``: Gymnasium's ``check_env`` plus the text-environment checks of the steppo contract."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

from steppo_envs.config import ConfigError
from steppo_envs.contract import TextSpace

__all__ = ["GARBLED_ACTIONS", "HOSTILE_ACTIONS", "check_step_env"]

REQUIRED_INFO_KEYS = ("task_id", "system_prompt", "tools", "action", "valid", "step", "max_steps", "metrics")

GARBLED_ACTIONS: tuple[str, ...] = (
    "",
    " ",
    "<tool_call>{not json",
    '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>',
    '<tool_call>{"name": 3}</tool_call>',
    "<answer></answer>",
    "Search[",
    "]]]][[[[",
    "\x00\x01\x02 \ufffd \U0001f600",
    "x" * 20_000,
)

#: Actions that crashed parsers before (deep nesting, escapes that decode to NUL / lone surrogates,
#: numbers too long to convert): each must be a normal step whose output can be stored as UTF-8 JSON.
HOSTILE_ACTIONS: tuple[str, ...] = (
    '<tool_call>{"name": "search", "arguments": {"query": ' + "[" * 5000,
    '<tool_call>{"name": "act", "arguments": {"command": "go\\u0000 \\ud800east", "query": "\\udc00"}}</tool_call>',
    "Act[\ud800 go east\x00] Search[\udfff] <answer>\ud800</answer>",
    '<tool_call>{"name": "search", "arguments": {"query": 1' + "0" * 5000 + "}}</tool_call>",
    "Search[" * 5000,
)


def _check_step_output(out: tuple[Any, ...], where: str) -> None:
    assert len(out) == 5, f"{where}: step must return a 5-tuple"
    obs, reward, terminated, truncated, info = out
    assert isinstance(obs, str), f"{where}: observation must be str, got {type(obs).__name__}"
    assert isinstance(reward, float | int) and not isinstance(reward, bool), f"{where}: reward must be a float"
    assert math.isfinite(float(reward)), f"{where}: reward must be finite"
    assert isinstance(terminated, bool) and isinstance(truncated, bool), f"{where}: terminated/truncated must be bool"
    _check_info(info, where)


def _check_info(info: Any, where: str) -> None:
    assert isinstance(info, dict), f"{where}: info must be a dict"
    missing = [k for k in REQUIRED_INFO_KEYS if k not in info]
    assert not missing, f"{where}: info misses {missing}"
    try:
        json.dumps(info, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{where}: info is not JSON-serialisable as UTF-8: {exc}") from exc


def _play(env: gym.Env[str, str], seed: int, actions: list[str]) -> list[Any]:
    obs, info = env.reset(seed=seed)
    trace: list[Any] = [obs, info["task_id"]]
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        trace.append((obs, float(reward), terminated, truncated))
        if terminated or truncated:
            break
    return trace


def _raised(call: Any) -> BaseException | None:
    """What ``call()`` raised (``None`` when it returned)."""
    try:
        call()
    except Exception as exc:  # the caller checks the type
        return exc
    return None


def _check_after_end(env: gym.Env[str, str]) -> None:
    """Stepping a finished episode without ``reset()`` raises (``steppo_envs.EpisodeOverError``)."""
    exc = _raised(lambda: env.step(GARBLED_ACTIONS[0]))
    assert isinstance(exc, RuntimeError), (
        "step() after the episode ended (truncated) without reset() must raise a RuntimeError, "
        f"got {'no error' if exc is None else repr(exc)}: call steppo_envs.check_can_step(...) at the top of step()"
    )


def _check_reset_options(env: gym.Env[str, str], seed: int) -> None:
    """Unknown reset options and task indices out of range are ``ConfigError`` s naming the fix."""
    exc = _raised(lambda: env.reset(seed=seed, options={"no_such_reset_option": 1}))
    assert isinstance(exc, ConfigError), (
        "reset() must reject an unknown option with a ConfigError naming the accepted ones, "
        f"got {'no error' if exc is None else repr(exc)}: use steppo_envs.pick_task_index or reject_reset_options"
    )
    if _raised(lambda: env.reset(seed=seed, options={"task_index": 0})) is not None:
        return  # the env takes no task_index
    for bad in (-1, 10**9):
        exc = _raised(lambda bad=bad: env.reset(seed=seed, options={"task_index": bad}))
        assert isinstance(exc, ConfigError) and "0.." in str(exc), (
            f"reset(options={{'task_index': {bad}}}) must raise a ConfigError naming the valid range 0..N-1, "
            f"got {'no error' if exc is None else repr(exc)}: use steppo_envs.pick_task_index"
        )


def check_step_env(env: gym.Env[str, str], *, seed: int = 0, skip_gym_check: bool = False) -> None:
    """Raise ``AssertionError`` if ``env`` breaks the steppo environment contract.

    Runs Gymnasium's ``check_env`` on the unwrapped env, then checks: text spaces; ``reset`` returns a
    str observation and a JSON-serialisable info with the standard keys; garbled actions never raise
    and are reported invalid; an episode of garbled actions ends by truncation at ``max_steps``, and
    stepping it again without ``reset()`` raises a ``RuntimeError`` (:class:`~steppo_envs.EpisodeOverError`);
    :data:`HOSTILE_ACTIONS` never raise and give output storable as UTF-8 JSON; an unknown reset
    option is a :class:`~steppo_envs.ConfigError`, and so is a ``task_index`` out of range (when the
    env takes ``task_index``); the same seed gives the same task and the same observations.
    """
    base = env.unwrapped
    assert isinstance(base.observation_space, TextSpace), "observation_space must be steppo_envs.TextSpace"
    assert isinstance(base.action_space, TextSpace), "action_space must be steppo_envs.TextSpace"
    if not skip_gym_check:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(base, skip_render_check=True)

    obs, info = env.reset(seed=seed)
    assert isinstance(obs, str) and obs, "reset must return a non-empty str observation"
    _check_info(info, "reset")
    max_steps = int(info["max_steps"])
    assert max_steps >= 1, "info['max_steps'] must be >= 1"

    ended_by = None
    for i in range(max_steps + 1):
        action = GARBLED_ACTIONS[i % len(GARBLED_ACTIONS)]
        out = env.step(action)
        _check_step_output(out, f"garbled step {i}")
        _, _, terminated, truncated, step_info = out
        assert step_info["valid"] is False, f"garbled action {action[:40]!r} was accepted as valid"
        assert step_info.get("feedback"), "an invalid action must come with feedback for the agent"
        if terminated or truncated:
            ended_by = (i + 1, terminated, truncated)
            break
    assert ended_by is not None, f"an episode of invalid actions did not end within max_steps={max_steps}"
    assert ended_by == (max_steps, False, True), (
        f"an episode of invalid actions must be truncated at step {max_steps}, got (steps, terminated, truncated)={ended_by}"
    )
    _check_after_end(env)
    _check_reset_options(env, seed)

    env.reset(seed=seed)
    for i, action in enumerate(HOSTILE_ACTIONS):
        out = env.step(action)
        _check_step_output(out, f"hostile step {i}")
        out[0].encode("utf-8")  # the observation must be storable too
        if out[2] or out[3]:
            env.reset(seed=seed)

    probe = [GARBLED_ACTIONS[2], GARBLED_ACTIONS[7]]
    first, second = _play(env, seed + 1, probe), _play(env, seed + 1, probe)
    assert first == second, "the same seed must give the same task and the same observations"
