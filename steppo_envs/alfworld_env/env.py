"""``steppo/ALFWorld-v0``: ALFWorld household tasks played through TextWorld from the json_2.1.1 games.

Each game is a self-contained ``game.tw-pddl`` file under ``<data_dir>/alfworld/json_2.1.1/<split>/
<task folder>/<trial>/``; it is loaded directly with ``textworld.start`` and ALFWorld's
``AlfredDemangler`` / ``AlfredInfos`` wrappers (ALFWorld's downloader and ``collect_game_files`` are
not used). The state, action and step rules are those of ``steppo/TextWorld-v0``
(:mod:`steppo_envs.textworld_env.episode`); the reward is 1 when the task is solved (which
terminates the episode), and ``info["extra"]["task_type"]`` names one of the six task types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
from pydantic import Field

from steppo_envs.config import ConfigError, build_config
from steppo_envs.config_model import PathStr
from steppo_envs.contract import check_render_mode, optional_import, pick_task_index, text_space
from steppo_envs.paths import resolve_data_dir
from steppo_envs.textworld_env.common import ACT_TOOL, clean_feedback
from steppo_envs.textworld_env.episode import GAME_INDEX_ALIAS, EpisodeSettings, GameEpisode
from steppo_envs.tools import ToolSpec

__all__ = ["SPLITS", "SUBDIR", "COMPACT_SYSTEM_PROMPT", "SYSTEM_PROMPT", "TASK_TYPES", "ALFWorldConfig", "ALFWorldEnv", "AlfGame", "list_games"]

SUBDIR = "alfworld/json_2.1.1"
SPLITS = ("train_subset", "valid_seen", "valid_unseen")
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
_TASK_RE = re.compile(r"Your task is to:\s*(.+)", re.S)


class ALFWorldConfig(EpisodeSettings):
    """Settings of :class:`ALFWorldEnv` (pass as ``config=`` or as keyword overrides): the shared
    episode settings of :class:`~steppo_envs.textworld_env.episode.EpisodeSettings` (the same fields
    and defaults as ``TextWorldConfig``, except ``show_inventory=False``; with ``expert=True``
    ALFWorld's PDDL planner runs every step) plus the game source fields below."""

    fix_hints: ClassVar[dict[str, str]] = {
        "game_files": 'pass a list of paths, not one string, e.g. game_files=["game.tw-pddl"]',
        "task_types": 'pass a list of task types, not one string, e.g. task_types=["pick_and_place_simple"]',
    }

    data_dir: PathStr | None = Field(None, description=(
        "Folder holding ``alfworld/json_2.1.1``; ``None`` uses ``$STEPPO_DATA_DIR`` or ``../shared/data``."))
    split: str = Field("train_subset", description=(
        "``\"train_subset\"`` (360 games), ``\"valid_seen\"`` (140) or ``\"valid_unseen\"`` (134); a comma-separated "
        "list pools several."))
    task_types: tuple[str, ...] = Field((), description="Keep only these task types (empty: all six, see ``TASK_TYPES``).")
    game_files: tuple[PathStr, ...] = Field((), description=(
        "Explicit ``game.tw-pddl`` paths; when given, ``split`` and ``task_types`` are ignored."))
    show_inventory: bool = Field(False, description=(
        "Include the inventory section (one extra engine call per step); off by default."))


SYSTEM_PROMPT = """You are a household robot in a text world. Each turn shows your task, what just happened, your recent
actions and the commands you can use now.
Reply each turn with exactly one command, after any reasoning you want to write:
<tool_call>{{"name": "act", "arguments": {{"command": "go to countertop 1"}}}}</tool_call> or Act[go to countertop 1]
Use one of the admissible commands. The episode ends when the task is done (reward 1) or after {max_steps} steps."""

COMPACT_SYSTEM_PROMPT = """You are a household robot in a text world. Reply with one admissible command, written as
Act[command], for example Act[go to countertop 1]. The episode ends when the task is done or after {max_steps} steps."""


@dataclass(frozen=True)
class AlfGame:
    """One ALFWorld game: ``id`` (``split/task folder/trial``, the ``task_id``), its file and task type."""

    id: str
    path: Path
    task_type: str


def task_type_of(path: Path) -> str:
    """The task type from the task folder name (``pick_heat_then_place_in_recep-Egg-None-...``)."""
    name = path.parent.parent.name.split("-", 1)[0]
    return name if name in TASK_TYPES else "unknown"


def list_games(data_dir: str | None, split: str, task_types: tuple[str, ...] = ()) -> list[AlfGame]:
    """The games of one or more comma-separated splits, sorted by id, optionally filtered by task type."""
    root = resolve_data_dir(data_dir, subdir=SUBDIR)
    bad_types = sorted(set(task_types) - set(TASK_TYPES))
    if bad_types:
        raise ConfigError(f"unknown task type(s) {', '.join(bad_types)}: use some of {', '.join(TASK_TYPES)}.")
    games: list[AlfGame] = []
    for name in [s.strip() for s in split.split(",") if s.strip()]:
        if name not in SPLITS or not (root / name).is_dir():
            raise ConfigError(f"unknown or missing ALFWorld split {name!r} under {str(root)!r}: use one of {', '.join(SPLITS)}.")
        for path in sorted((root / name).glob("*/*/game.tw-pddl")):
            ttype = task_type_of(path)
            if not task_types or ttype in task_types:
                games.append(AlfGame(f"{name}/{path.parent.parent.name}/{path.parent.name}", path, ttype))
    if not games:
        raise ConfigError(f"no ALFWorld games in split {split!r} with task types {task_types or 'any'}: check split and task_types.")
    return games


def _user_games(files: tuple[str, ...]) -> list[AlfGame]:
    games = []
    for f in files:
        path = Path(f).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"ALFWorld game file {str(f)!r} does not exist: pass paths to game.tw-pddl files.")
        games.append(AlfGame(f"{path.parent.parent.name}/{path.parent.name}", path, task_type_of(path)))
    return games


def _objective(state: Any) -> tuple[str, str]:
    text = str(state.get("feedback") or "")
    match = _TASK_RE.search(text)
    objective = match.group(1).strip() if match else ""
    body = text[: match.start()] if match else text
    body = body.replace("-= Welcome to TextWorld, ALFRED! =-", "")
    return objective, clean_feedback(body)


def _wrappers() -> list[Any]:
    module = optional_import("alfworld.agents.environment.alfred_tw_env", "alfworld")
    return [module.AlfredDemangler(), module.AlfredInfos]


class ALFWorldEnv(gym.Env[str, str]):
    """ALFWorld text games (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}

    def __init__(self, config: ALFWorldConfig | None = None, *, render_mode: str | None = None, **overrides: Any) -> None:
        self.config = build_config(ALFWorldConfig, config, overrides)
        optional_import("textworld", "alfworld")
        optional_import("alfworld.agents.environment.alfred_tw_env", "alfworld")
        self.render_mode = check_render_mode(render_mode)
        cfg = self.config
        self.games: list[AlfGame] = (
            _user_games(cfg.game_files) if cfg.game_files else list_games(cfg.data_dir, cfg.split, cfg.task_types)
        )
        self.tools: tuple[ToolSpec, ...] = (ACT_TOOL,)
        self.observation_space = text_space()
        self.action_space = text_space()
        self._episode = GameEpisode(
            "steppo/ALFWorld-v0", cfg, self.tools, prompts=(SYSTEM_PROMPT, COMPACT_SYSTEM_PROMPT),
            objective_fn=_objective, wrappers_fn=_wrappers,
        )
        self._obs = ""

    @property
    def system_prompt(self) -> str:
        """The system message of the current settings."""
        return self._episode.system_prompt

    def set_max_steps(self, max_steps: int) -> None:
        """Use ``max_steps`` as the step limit from the next episode on (``gymnasium.make(id,
        max_episode_steps=N)`` calls it, see :mod:`steppo_envs.step_limit`)."""
        self.config = self._episode.set_max_steps(max_steps)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on a game drawn uniformly (``options={"task_index": i}`` picks game ``i``)."""
        super().reset(seed=seed)
        index = pick_task_index(options, len(self.games), self.np_random, owner="steppo/ALFWorld-v0", aliases=GAME_INDEX_ALIAS)
        game = self.games[index]
        extra = {"task_type": game.task_type, "game_file": str(game.path)}
        self._obs, info = self._episode.reset_on(game.path, task_id=game.id, task_index=index, extra=extra)
        return self._obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Send one command to the game (or report an invalid response)."""
        out = self._episode.gym_step(action)
        self._obs = out[0]
        return out

    def render(self) -> str | None:
        return self._obs if self.render_mode == "ansi" else None

    def close(self) -> None:
        self._episode.close()
        super().close()
