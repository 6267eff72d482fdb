"""Every registered id builds with ``gymnasium.make`` and passes ``check_step_env``."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import gymnasium
import pytest

from steppo_envs import BUNDLED, check_step_env, describe, register, registered_ids


@pytest.mark.parametrize("env_id", registered_ids())
def test_registered_env_passes_check_step_env(env_id: str) -> None:
    # every extra is installed by scripts/setup.sh, so a missing one is a failure, not a skip
    env = gymnasium.make(env_id)
    try:
        check_step_env(env)
    finally:
        env.close()


def test_bundled_ids_registered_in_order() -> None:
    ids = registered_ids()
    assert ids[: len(BUNDLED)] == [e.id for e in BUNDLED]
    for entry in BUNDLED:
        assert entry.id in gymnasium.registry
        assert describe(entry.id) == entry.description
        assert entry.id.startswith("steppo/") and ":" in entry.entry_point


def test_register_rejects_bad_ids() -> None:
    for bad in ("NoNamespace-v0", "steppo/NoVersion", "steppo/Bad-vX"):
        with pytest.raises(ValueError, match="namespace/Name-vN"):
            register(bad, "x:Y", "bad")



def test_docs_custom_env_example_passes_check_step_env(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = Path(__file__).resolve().parent.parent / "docs" / "environments.md"
    text = docs.read_text(encoding="utf-8")
    block = text.split("<!-- example: custom-env -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    module = types.ModuleType("steppo_docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # pydantic / dataclasses look their module up
    exec(compile(block, str(docs), "exec"), module.__dict__)
    env_cls = module.GuessEnv
    env = env_cls()  # type: ignore[operator]
    check_step_env(env)
    obs, _ = env.reset(seed=0)
    secret = env._secret  # type: ignore[attr-defined]
    _, reward, terminated, truncated, info = env.step(f"Guess[{secret}]")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
