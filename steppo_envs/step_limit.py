"""``gymnasium.make(id, max_episode_steps=N)``: the env's own step limit becomes ``N``.

Gymnasium enforces ``max_episode_steps`` with a ``TimeLimit`` wrapper the env never sees, so without
help the env would still render its own limit ("3 steps left") and report it in ``info["max_steps"]``.
Every id registered through :func:`steppo_envs.register` therefore gets :class:`StepLimitSync` as an
additional wrapper, applied by ``gymnasium.make`` right after the ``TimeLimit``: it hands the limit to
the env's ``set_max_steps(n)`` before the first reset.

The limit becomes ``N``; when ``max_steps`` (or a ``config``) was also given explicitly, the smaller of
the two (both limits apply). Envs without a ``set_max_steps`` method are left as they are.
"""

from __future__ import annotations

from typing import Any

import gymnasium
from gymnasium.envs.registration import WrapperSpec
from gymnasium.utils import RecordConstructorArgs
from gymnasium.wrappers import TimeLimit

__all__ = ["STEP_LIMIT_WRAPPER", "StepLimitSync", "time_limit_of"]


def time_limit_of(env: Any) -> int | None:
    """The ``max_episode_steps`` of the first ``TimeLimit`` wrapper in ``env``'s chain, or ``None``."""
    while isinstance(env, gymnasium.Wrapper):
        if isinstance(env, TimeLimit):
            return int(env._max_episode_steps)
        env = env.env
    return None


def _new_limit(env: Any, limit: int) -> int:
    """``limit``, or the smaller of it and the env's ``max_steps`` when that was given explicitly."""
    kwargs = getattr(getattr(env, "spec", None), "kwargs", None) or {}
    own = getattr(getattr(env, "config", None), "max_steps", None)
    explicit = "max_steps" in kwargs or kwargs.get("config") is not None
    return min(limit, int(own)) if explicit and isinstance(own, int) else limit


class StepLimitSync(gymnasium.Wrapper[Any, Any, Any, Any], RecordConstructorArgs):
    """Gives the ``TimeLimit`` below it (if any) to the env's ``set_max_steps`` (see the module docstring)."""

    def __init__(self, env: gymnasium.Env[Any, Any]) -> None:
        RecordConstructorArgs.__init__(self)
        gymnasium.Wrapper.__init__(self, env)
        limit = time_limit_of(env)
        setter = getattr(env.unwrapped, "set_max_steps", None)
        if limit is not None and limit > 0 and callable(setter):
            setter(_new_limit(env.unwrapped, limit))


#: The additional wrapper :func:`steppo_envs.register` registers every id with.
STEP_LIMIT_WRAPPER = WrapperSpec(name="StepLimitSync", entry_point="steppo_envs.step_limit:StepLimitSync", kwargs={})
