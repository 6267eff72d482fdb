"""steppo_envs: Gymnasium step environments for LLM agents, and their registry.

``import steppo_envs`` registers the bundled ids with Gymnasium (string entry points, so nothing heavy
is imported until ``gymnasium.make``), runs the ``gymnasium.envs`` entry-point hooks of installed
packages (:mod:`steppo_envs.plugins`), and never imports torch, vllm or textworld itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium

from steppo_envs.actions import ParsedAction, ToolCall, clean_action_text, format_hint, parse_action
from steppo_envs.checker import check_step_env
from steppo_envs.config import ConfigError, UserError, build_config, deprecated_aliases, renamed_options
from steppo_envs.config_model import ConfigModel
from steppo_envs.contract import (
    EpisodeOverError,
    MissingExtraError,
    StepInfo,
    TextSpace,
    check_can_step,
    check_render_mode,
    make_info,
    optional_import,
    pick_task_index,
    reject_reset_options,
    text_space,
)
from steppo_envs.function_tools import FunctionTool, function_tool
from steppo_envs.fuzzing import fuzz_env
from steppo_envs.paths import DataDirError, cache_dir, resolve_data_dir
from steppo_envs.plugins import PLUGIN_GROUP, check_env_id, check_reregistration, run_plugin_hooks
from steppo_envs.render import Section, render_sections, truncate_text
from steppo_envs.search import BM25Index, Passage, SearchHit
from steppo_envs.step_limit import STEP_LIMIT_WRAPPER
from steppo_envs.toolenv import (
    ToolEnv,
    ToolEnvConfig,
    ToolEnvDefinition,
    ToolEnvState,
    default_sections,
    route_answer,
    tool_env,
)
from steppo_envs.tools import ToolSpec

__all__ = [
    "BUNDLED",
    "PLUGIN_GROUP",
    "BM25Index",
    "ConfigError",
    "ConfigModel",
    "DataDirError",
    "EnvEntry",
    "EpisodeOverError",
    "FunctionTool",
    "MissingExtraError",
    "ParsedAction",
    "Passage",
    "SearchHit",
    "Section",
    "StepInfo",
    "TextSpace",
    "ToolCall",
    "ToolEnv",
    "ToolEnvConfig",
    "ToolEnvDefinition",
    "ToolEnvState",
    "ToolSpec",
    "UserError",
    "build_config",
    "cache_dir",
    "check_can_step",
    "check_render_mode",
    "check_step_env",
    "clean_action_text",
    "default_sections",
    "deprecated_aliases",
    "describe",
    "fuzz_env",
    "format_hint",
    "function_tool",
    "load_plugin_envs",
    "make_info",
    "optional_import",
    "parse_action",
    "pick_task_index",
    "register",
    "registered_ids",
    "reject_reset_options",
    "render_sections",
    "renamed_options",
    "resolve_data_dir",
    "route_answer",
    "text_space",
    "tool_env",
    "truncate_text",
]

__version__ = "0.1.0"


@dataclass(frozen=True)
class EnvEntry:
    """A registered steppo environment: Gymnasium id, string entry point and a one-line description."""

    id: str
    entry_point: str
    description: str


BUNDLED: tuple[EnvEntry, ...] = (
    EnvEntry(
        "steppo/MultiHopQA-v0",
        "steppo_envs.multihop.env:MultiHopQAEnv",
        "Multi-hop QA (HotpotQA, MuSiQue, 2Wiki) with BM25 search over a pooled Wikipedia-paragraph corpus.",
    ),
    EnvEntry(
        "steppo/TextWorld-v0",
        "steppo_envs.textworld_env.env:TextWorldEnv",
        "TextWorld text games generated offline from presets (simple, coin_collector, treasure_hunter, cooking).",
    ),
    EnvEntry(
        "steppo/ALFWorld-v0",
        "steppo_envs.alfworld_env.env:ALFWorldEnv",
        "ALFWorld household tasks (six task types) played through TextWorld from the json_2.1.1 games.",
    ),
    EnvEntry(
        "steppo/PaperSearch-v0",
        "steppo_envs.paper_search.env:PaperSearchEnv",
        "Offline academic paper search (PaSa / LitSearch questions) with BM25 and related-paper tools over 154k papers.",
    ),
)

_DESCRIPTIONS: dict[str, str] = {}


def register(id: str, entry_point: str | Callable[..., Any], description: str) -> None:
    """Register an environment with Gymnasium and steppo's listing (``steppo envs``).

    ``entry_point`` is a ``"module:Class"`` string so nothing is imported until ``gymnasium.make``
    (a callable works too: :func:`tool_env` registers its definition that way). Registering an id
    again with the same entry point keeps the first registration (only the description is updated);
    with another entry point it is a :class:`ConfigError` naming both.
    """
    check_env_id(id)
    check_reregistration(id, entry_point)
    if id not in gymnasium.registry:  # StepLimitSync: make(id, max_episode_steps=N) sets the env's own max_steps
        gymnasium.register(id=id, entry_point=entry_point, disable_env_checker=False, additional_wrappers=(STEP_LIMIT_WRAPPER,))
    _DESCRIPTIONS[id] = description


def registered_ids() -> list[str]:
    """Ids registered through :func:`register`, :func:`tool_env` or by installed plugins (bundled
    first), in registration order."""
    return list(_DESCRIPTIONS)


def describe(id: str) -> str:
    """The one-line description of a registered id."""
    return _DESCRIPTIONS[id]


for _entry in BUNDLED:
    register(_entry.id, _entry.entry_point, _entry.description)


def load_plugin_envs() -> list[str]:
    """Run the ``gymnasium.envs`` entry-point hooks of installed packages not run yet in this process
    (:mod:`steppo_envs.plugins`) and return the ids they registered (``import steppo_envs`` calls it)."""
    return run_plugin_hooks(_DESCRIPTIONS)


load_plugin_envs()  # last: a hook may import steppo_envs and use everything above
