"""One environment skeleton (issue 15): one name per setting (old names deprecated aliases for one
release), the same reset options, the same behaviour after the end, and registration that refuses
to replace an id's entry point. Every rule here is cheap to check on configs and a tool env; that
every registered id follows them is ``check_step_env``'s job (``tests/test_registry.py``)."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium
import numpy as np
import pydantic
import pytest

import steppo_envs
from steppo_envs import (
    ConfigError,
    EpisodeOverError,
    ToolEnv,
    ToolEnvConfig,
    build_config,
    check_step_env,
    deprecated_aliases,
    pick_task_index,
    register,
    tool_env,
)
from steppo_envs.alfworld_env.env import ALFWorldConfig
from steppo_envs.config_model import ConfigModel
from steppo_envs.multihop import MultiHopQAConfig
from steppo_envs.paper_search.env import PaperSearchConfig
from steppo_envs.textworld_env.env import TextWorldConfig
from steppo_envs.textworld_env.episode import GAME_INDEX_ALIAS, EpisodeSettings

#: Every deprecated option name: (config class, old name, new name, a non-default value).
ALIASES: list[tuple[type[Any], str, str, Any]] = [
    (MultiHopQAConfig, "dataset", "split", "eval"),
    (PaperSearchConfig, "obs_budget_chars", "budget_chars", 900),
    (PaperSearchConfig, "backend", "search_backend", "rank_bm25"),
    (PaperSearchConfig, "show_progress", "progress", False),
    (ToolEnvConfig, "history_chars", "history_result_chars", 7),
]
CONFIGS = (MultiHopQAConfig, PaperSearchConfig, ToolEnvConfig, TextWorldConfig, ALFWorldConfig)

TASKS = [{"id": "a", "q": "Say yes."}, {"id": "b", "q": "Say no."}]


def note(text: str) -> str:
    """Write a note to yourself."""
    return text


YesNo = tool_env("skeleton/YesNo-v0", tasks=TASKS, tools=[note], prompt="{q}", max_steps=2,
                 reward=lambda task, answer: float(answer == ("yes" if task["id"] == "a" else "no")))


def test_the_alias_table_is_every_deprecated_name() -> None:
    table = {(cls, old, new) for cls, old, new, _ in ALIASES}
    assert {(cls, old, new) for cls in CONFIGS for old, new in deprecated_aliases(cls).items()} == table
    assert GAME_INDEX_ALIAS == {"game_index": "task_index"}  # the one reset option alias


@pytest.mark.parametrize(("cls", "old", "new", "value"), ALIASES, ids=[f"{c.__name__}.{o}" for c, o, _, _ in ALIASES])
def test_an_old_name_still_works_with_a_deprecation_warning(cls: type[Any], old: str, new: str, value: Any) -> None:
    with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated .*use '{new}'"):
        built = build_config(cls, None, {old: value})  # gymnasium.make / --env-arg overrides
    assert getattr(built, new) == value and getattr(cls(), new) != value
    with pytest.warns(DeprecationWarning, match=f"use '{new}'"):
        direct = cls(**{old: value})  # the config's own constructor
    assert direct == built
    with pytest.raises(ConfigError, match=f"both '{old}' and '{new}': give only '{new}'"):
        build_config(cls, None, {old: value, new: value})
    with pytest.raises(ConfigError, match=f"both '{old}' and '{new}': give only '{new}'"):
        cls(**{old: value, new: value})


def test_the_warning_points_at_the_callers_line() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gymnasium.make("skeleton/YesNo-v0", history_chars=5)  # through Gymnasium and the entry point
    found = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(found) == 1 and found[0].filename == __file__
    assert env.unwrapped.config.history_result_chars == 5


def test_text_worlds_share_one_settings_class() -> None:
    shared = list(EpisodeSettings.model_fields)
    for cls in (TextWorldConfig, ALFWorldConfig):
        assert issubclass(cls, EpisodeSettings) and list(cls.model_fields)[: len(shared)] == shared
    assert (TextWorldConfig().show_inventory, ALFWorldConfig().show_inventory) == (True, False)
    assert TextWorldConfig(prompt_style="compact").compact and not ALFWorldConfig().compact
    with pytest.raises(ConfigError, match=r"bad value for TextWorldConfig: budget_chars must be >= 500 \(got 10\): e.g. budget_chars=6000\.$"):
        TextWorldConfig(budget_chars=10)
    with pytest.raises(ConfigError, match=r"bad value for ALFWorldConfig: max_command_chars must be >= 8 \(got 2\)"):
        ALFWorldConfig(max_command_chars=2)


@pytest.mark.parametrize("cls", CONFIGS, ids=[c.__name__ for c in CONFIGS])
def test_every_env_config_is_one_frozen_documented_model(cls: type[Any]) -> None:
    """One configuration style (issue 15): a frozen ConfigModel, a description per field, unknown names
    and bad values one ConfigError naming the fix, ``updated`` the validated ``dataclasses.replace``."""
    assert issubclass(cls, ConfigModel) and cls.model_config.get("frozen") is True
    assert [name for name, f in cls.model_fields.items() if not (f.description or "").strip()] == []
    config = cls()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.max_steps = 3
    assert config.updated(max_steps=3).max_steps == 3 and config.max_steps != 3
    with pytest.raises(ConfigError, match=rf"bad value for {cls.__name__}: max_steps must be >= 1 \(got 0\): e.g. max_steps="):
        config.updated(max_steps=0)
    with pytest.raises(ConfigError, match=r"unknown option max_step \(did you mean max_steps\?\): valid options are "):
        cls(max_step=3)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) max_step for .*\(did you mean max_steps\?\)"):
        build_config(cls, None, {"max_step": 3})
    with pytest.raises(ConfigError, match="invalid_penalty must be a finite number, not nan"):
        build_config(cls, config, {"invalid_penalty": float("nan")})
    assert build_config(cls, None, {"max_steps": "7"}).max_steps == 7  # --env-arg strings are converted


def test_pick_task_index_rules() -> None:
    rng = np.random.default_rng(0)
    assert pick_task_index({"task_index": 2}, 3, rng, owner="x/Y-v0") == 2
    assert pick_task_index({"task_index": np.int64(1)}, 3, rng, owner="x/Y-v0") == 1
    assert 0 <= pick_task_index(None, 3, rng, owner="x/Y-v0") < 3
    for bad in (3, -1):
        with pytest.raises(ConfigError, match=r"task_index -?\d+ is out of range for x/Y-v0: use 0\.\.2"):
            pick_task_index({"task_index": bad}, 3, rng, owner="x/Y-v0")
    with pytest.raises(ConfigError, match="task_index must be an integer in 0..2"):
        pick_task_index({"task_index": "1"}, 3, rng, owner="x/Y-v0")
    with pytest.raises(ConfigError, match="unknown reset option.*'seed_offset' for x/Y-v0: the accepted options are 'task_index'"):
        pick_task_index({"seed_offset": 1}, 3, rng, owner="x/Y-v0")
    with pytest.warns(DeprecationWarning, match="'game_index' is deprecated .*use 'task_index'"):
        assert pick_task_index({"game_index": 1}, 3, rng, owner="x/Y-v0", aliases=GAME_INDEX_ALIAS) == 1
    with pytest.raises(ConfigError, match="both 'game_index' and 'task_index'"):
        pick_task_index({"game_index": 1, "task_index": 1}, 3, rng, owner="x/Y-v0", aliases=GAME_INDEX_ALIAS)


def test_a_finished_episode_cannot_be_stepped() -> None:
    env = YesNo()
    with pytest.raises(EpisodeOverError, match="before reset"):
        env.step("Answer[yes]")
    env.reset(seed=0, options={"task_index": 0})
    assert env.step("Answer[yes]")[1:3] == (1.0, True)
    with pytest.raises(EpisodeOverError, match=r"skeleton/YesNo-v0: the episode has ended .*call reset\(\)"):
        env.step("Answer[yes]")
    env.reset(seed=0)
    assert isinstance(env.step("hm")[0], str)  # a new episode steps again


def test_render_mode_is_none_or_ansi_in_every_env() -> None:
    assert YesNo(render_mode="ansi").render_mode == "ansi" and YesNo().render() is None
    with pytest.raises(ConfigError, match="render_mode 'human' is not supported: use None or 'ansi'"):
        YesNo(render_mode="human")


# -- check_step_env catches each broken rule ----------------------------------------------------------


class _StepsAfterTheEnd(ToolEnv):
    """Answers an invalid step after the end (what PaperSearch did)."""

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            return self._obs, 0.0, False, True, self._info(None, "the episode is over", False)
        return super().step(action)


class _IgnoresOptions(ToolEnv):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        return super().reset(seed=seed)


class _ValueErrorIndex(ToolEnv):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        if (options or {}).get("task_index", 0) not in (0, 1):
            raise ValueError("bad index")
        return super().reset(seed=seed, options=options)


@pytest.mark.parametrize(
    ("cls", "needle"),
    [
        (_StepsAfterTheEnd, "after the episode ended .* must raise a RuntimeError"),
        (_IgnoresOptions, "must reject an unknown option with a ConfigError"),
        (_ValueErrorIndex, r"task_index': -1}\) must raise a ConfigError naming the valid range"),
    ],
)
def test_check_step_env_catches_each_broken_rule(cls: type[ToolEnv], needle: str) -> None:
    check_step_env(ToolEnv(YesNo))  # the unbroken env passes
    with pytest.raises(AssertionError, match=needle):
        check_step_env(cls(YesNo))


# -- registration ---------------------------------------------------------------------------------------


def test_registering_an_id_again_with_another_entry_point_is_an_error() -> None:
    register("skeleton/Twice-v0", "tests_skeleton.envs:First", "first")
    register("skeleton/Twice-v0", "tests_skeleton.envs:First", "first, described again")  # same: a no-op
    assert gymnasium.spec("skeleton/Twice-v0").entry_point == "tests_skeleton.envs:First"
    assert steppo_envs.describe("skeleton/Twice-v0") == "first, described again"
    with pytest.raises(ConfigError, match="skeleton/Twice-v0 is already registered with the entry point "
                                          "tests_skeleton.envs:First, so it cannot be registered again with tests_skeleton.envs:Second"):
        register("skeleton/Twice-v0", "tests_skeleton.envs:Second", "second")
    assert gymnasium.spec("skeleton/Twice-v0").entry_point == "tests_skeleton.envs:First"
    with pytest.raises(ConfigError, match="already registered with the entry point steppo_envs.multihop.env:MultiHopQAEnv"):
        register("steppo/MultiHopQA-v0", "tests_skeleton.envs:First", "not the bundled one")
    register("steppo/MultiHopQA-v0", steppo_envs.multihop.MultiHopQAEnv, steppo_envs.describe("steppo/MultiHopQA-v0"))


def test_a_tool_env_of_another_module_cannot_take_an_id() -> None:
    namespace: dict[str, Any] = {"__name__": "tests_skeleton_other", "tool_env": tool_env, "TASKS": TASKS, "note": note}
    source = 'tool_env("skeleton/YesNo-v0", tasks=TASKS, tools=[note], prompt="{q}", reward=lambda t, a: 0.0)'
    with pytest.raises(ConfigError, match="tool_env 'skeleton/YesNo-v0' defined in tests_skeleton_other"):
        exec(compile(source, "<other module>", "exec"), namespace)
    assert gymnasium.spec("skeleton/YesNo-v0").entry_point is YesNo
