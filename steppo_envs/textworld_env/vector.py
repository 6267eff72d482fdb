"""Run slow text-game envs in worker processes so one slow step does not serialize a batch.

Gymnasium's ``AsyncVectorEnv`` works with steppo's text spaces only with ``shared_memory=False``:
with shared memory (its default) every string observation is encoded through the ``Text`` space's
finite charset and comes back silently garbled (all ``"0"``). :func:`make_async_vector_env` sets
it; observations then arrive as a tuple of ``str`` (one per env) and ``info`` as Gymnasium's
batched dict (``info["task_id"]`` is an array of ids, ``info["_task_id"]`` its mask).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv

__all__ = ["make_async_vector_env"]


def _make(env_id: str, overrides: dict[str, Any]) -> gym.Env[str, str]:
    import steppo_envs  # noqa: F401  (registers the ids in the worker process)

    return gym.make(env_id, **overrides)


def make_async_vector_env(env_id: str, num_envs: int, **overrides: Any) -> AsyncVectorEnv:
    """``num_envs`` copies of ``env_id`` (built with ``overrides``), each in its own worker process."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}: pass a positive number of envs.")
    fns = [functools.partial(_make, env_id, dict(overrides)) for _ in range(num_envs)]
    return AsyncVectorEnv(fns, shared_memory=False)
