"""Environments that fail on purpose, for the command line's error tests (tests/test_cli_errors.py).

* ``steppotest/NeedsExtra-v0`` needs a package that is not installed (a missing extra);
* ``steppotest/NoExpert-v0`` is made with ``expert=True`` but has no expert command to give
  (like a game without a walkthrough).
"""

from __future__ import annotations

from typing import Any

import gymnasium
from toy_env import GuessEnv

from steppo_envs import optional_import


class NeedsExtraEnv(GuessEnv):
    """A guess game whose constructor imports a package nobody installed."""

    def __init__(self, **overrides: Any) -> None:
        optional_import("steppo_not_a_real_package", extra="imaginary")
        super().__init__(**overrides)


class NoExpertEnv(GuessEnv):
    """A guess game that takes ``expert=True`` and then offers no expert command."""

    def __init__(self, expert: bool = False, **overrides: Any) -> None:
        self.expert = expert
        super().__init__(**overrides)

    def _info(self, action: Any = None, valid: bool = True, success: bool = False) -> dict[str, Any]:
        info = super()._info(action, valid, success)
        if self.expert:
            info["extra"] = {**info["extra"], "expert_command": None}
        return info


# registered with Gymnasium only: they stay out of steppo's listing (and so out of tests/test_registry.py)
gymnasium.register("steppotest/NeedsExtra-v0", entry_point=f"{__name__}:NeedsExtraEnv")
gymnasium.register("steppotest/NoExpert-v0", entry_point=f"{__name__}:NoExpertEnv")
