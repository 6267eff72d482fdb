"""``steppo/TextWorld-v0``: TextWorld games from presets or ``.z8`` files (see :mod:`.env`).

This package is light to import: textworld itself is imported only when a game is generated or
an environment is built. The env lives in ``steppo_envs.textworld_env.env`` (``TextWorldEnv``,
``TextWorldConfig``); the presets, cache and pools in ``steppo_envs.textworld_env.games``.
"""

from __future__ import annotations

from steppo_envs.textworld_env.games import EVAL_SEED_START, PRESETS, TRAIN_SEED_START, GameRef, Preset

__all__ = ["EVAL_SEED_START", "PRESETS", "TRAIN_SEED_START", "GameRef", "Preset"]
