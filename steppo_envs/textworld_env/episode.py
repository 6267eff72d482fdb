"""One episode of a TextWorld-engine game, shared by ``TextWorldEnv`` and ``ALFWorldEnv`` (composition,
not inheritance): it owns the engine, the step counter and the history, and returns the pieces of
the Gymnasium ``reset`` / ``step`` results.

Step rules (both envs):

* a response with no readable command (see :mod:`steppo_envs.textworld_env.common`) or with an
  interpreter meta-command is an invalid step that is **not** sent to the game: the state stays,
  the reward is ``-invalid_penalty``;
* a readable command is always sent to the game; when it is not one of the admissible commands the
  step is flagged ``valid=False`` (feedback in ``info`` and in the next observation) and also costs
  ``invalid_penalty``;
* reward = the game's score increase at this step (dense), minus the penalty;
* won or lost -> ``terminated``; otherwise the ``max_steps``-th step -> ``truncated``.

Step labels (``step_labels=True``, TextWorld games): each step's ``info["step_label"]`` is 1 iff the
step shortened the remaining plan, the length of a shortest winning command sequence
(:func:`.planner.plan_length`), and 0 otherwise: a winning step is 1; an invalid step that does not
win is 0 without planning; a step after which the game's logic state (:func:`.planner.logic_key`) is
unchanged (``look``, ``examine ...``) is 0 without planning. The length is planned at reset and after
each valid step that changed the logic state, and reused as the next step's "before" (after an
invalid command that the game did act on, it is planned again before the next valid one). When no
plan is found (the search gives up), the label is 0 and ``info["step_label_error"]`` says why.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import ConfigDict, Field

from steppo_envs.actions import ParsedAction
from steppo_envs.config import ConfigError, with_max_steps
from steppo_envs.config_model import ConfigModel
from steppo_envs.contract import check_can_step, make_info, optional_import
from steppo_envs.textworld_env.common import (
    CommandChoice,
    HistoryEntry,
    StateView,
    clean_feedback,
    normalize,
    read_command,
    render_state,
)
from steppo_envs.textworld_env.planner import Plan, PlanLength, logic_key, plan_length, progress_label
from steppo_envs.tools import ToolSpec

__all__ = ["GAME_INDEX_ALIAS", "EpisodeSettings", "GameEpisode", "PlannerFn", "StepResult"]

ObjectiveFn = Callable[[Any], tuple[str, str]]
"""``GameState at reset -> (objective, first observation text)``."""

PlannerFn = Callable[[Any], Plan]
"""``GameState -> Plan``: winning commands from the current state (see :mod:`.planner`)."""


class EpisodeSettings(ConfigModel):
    """The episode settings every TextWorld-engine env shares: ``TextWorldConfig`` and ``ALFWorldConfig``
    are this class plus their own game-source fields (pass any of these as ``config=`` fields or as
    ``gymnasium.make`` overrides)."""

    model_config = ConfigDict(frozen=True)

    max_steps: int = Field(20, ge=1, description="Steps per episode (valid and invalid ones count); the last one truncates.")
    budget_chars: int = Field(6000, ge=500, description="Character budget of one observation (about 4 characters per token).")
    history_window: int = Field(5, ge=0, description="How many earlier steps (command + result) are shown, besides the latest one.")
    history_result_chars: int = Field(300, ge=0, description="Each earlier result is cut to this many characters.")
    max_command_chars: int = Field(120, ge=8, description=(
        "Longer commands are cut; a bare (no tool-call syntax) response longer than this is not taken as a command."))
    invalid_penalty: float = Field(0.0, ge=0, description="Subtracted from the reward of an invalid step (non-negative).")
    show_inventory: bool = Field(True, description="Include the inventory section (costs one extra engine call per step).")
    show_admissible: bool = Field(True, description="Include the admissible commands section.")
    expert: bool = Field(False, description=(
        "Re-plan each step and put the expert's next command in ``info[\"extra\"][\"expert_command\"]`` (slower: "
        "the planner runs every step)."))
    prompt_style: Literal["full", "compact"] = Field("full", description=(
        "``\"full\"`` (sections with recent results, the tool list in ``info[\"tools\"]``) or ``\"compact\"``: a "
        "two-line system prompt, no tool list, every command so far on one line and the admissible commands on "
        "one line (about 40% of the full prompt's tokens; for small models and CPU training)."))

    @property
    def compact(self) -> bool:
        """Render the short state (all commands on one line, no per-step results) and advertise no tool list."""
        return self.prompt_style == "compact"


S = TypeVar("S", bound=EpisodeSettings)


@dataclass(frozen=True)
class StepResult:
    """What one step produced; the env turns it into the Gymnasium tuple and ``info``."""

    observation: str
    reward: float
    terminated: bool
    truncated: bool
    choice: CommandChoice | None
    valid: bool
    feedback: str | None
    label: int | None = None
    label_error: str | None = None


def _as_float(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


#: The deprecated reset option of the TextWorld-engine envs (old -> new name).
GAME_INDEX_ALIAS: dict[str, str] = {"game_index": "task_index"}


class GameEpisode(Generic[S]):
    """Plays one game at a time on a TextWorld engine started with ``request_infos`` and ``wrappers``,
    and gives the Gymnasium ``reset`` / ``step`` results of the env that owns it (``name``).

    ``settings`` is the env's whole config (an :class:`EpisodeSettings`); ``prompts`` the full and the
    compact system prompt, each with a ``{max_steps}`` slot. ``planner`` (TextWorld games) computes
    winning commands from the game's logic when the engine's own expert has no plan and the game no
    walkthrough; with ``expert=True`` a game it cannot plan is refused at reset. ``step_labels`` turns on
    the step labels of TextWorld games (``info["step_label"]``, see the module docstring).
    """

    def __init__(
        self,
        name: str,
        settings: S,
        tools: Sequence[ToolSpec],
        *,
        prompts: tuple[str, str],
        objective_fn: ObjectiveFn,
        wrappers_fn: Callable[[], list[Any]] | None = None,
        inventory_infos: bool = True,
        planner: PlannerFn | None = None,
        step_labels: bool = False,
    ) -> None:
        self.name = name
        self.settings: S = settings
        self._prompts = prompts
        self._task_id = ""
        self._extra: dict[str, Any] = {}
        self._planner = planner
        self._planned_at = -1
        self._step_labels = step_labels
        self._remaining: tuple[Hashable, PlanLength] | None = None  # a logic state's key and its plan length
        self.tools = tuple(tools)
        self._objective_fn = objective_fn
        self._wrappers_fn = wrappers_fn or list
        self._inventory_infos = inventory_infos and settings.show_inventory
        self._engine: Any = None
        self._path: Path | None = None
        self._state: Any = None
        self.objective = ""
        self.observation = ""
        self.history: list[HistoryEntry] = []
        self.step_count = 0
        self.score = 0.0
        self.walkthrough: list[str] = []
        self._commands: list[str] = []
        self.done = False

    # -- engine -------------------------------------------------------------------------------------
    def _request_infos(self) -> Any:
        textworld = optional_import("textworld", "textworld")
        return textworld.EnvInfos(
            objective=True,
            admissible_commands=True,
            inventory=self._inventory_infos,
            won=True,
            lost=True,
            score=True,
            max_score=True,
            moves=True,
            policy_commands=self.settings.expert,
            intermediate_reward=self._step_labels,  # tracks quests: a completed sub-quest stays done
            extras=["walkthrough"],
        )

    def start(self, path: Path) -> None:
        """Reset the engine on ``path`` (reusing it when the same game is drawn again) and clear the episode."""
        if self._engine is None or self._path != path:
            self.close()
            textworld = optional_import("textworld", "textworld")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jericho: "not fully supported" (TextWorld tracks the score)
                self._engine = textworld.start(str(path), request_infos=self._request_infos(), wrappers=self._wrappers_fn())
            self._path = path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._state = self._engine.reset()
        self.objective, self.observation = self._objective_fn(self._state)
        self.history, self._commands = [], []
        self.step_count, self.done = 0, False
        self.score = _as_float(self._state.get("score"), 0.0)
        walkthrough = self._state.get("extra.walkthrough")
        self.walkthrough = list(walkthrough) if isinstance(walkthrough, list | tuple) else []
        self._planned_at = -1
        self._remaining = self._measure() if self._step_labels else None
        if self.settings.expert and self._planner is not None and not self._state.get("policy_commands") and not self.walkthrough:
            self._plan_first(path)

    def _plan_first(self, path: Path) -> None:
        """Plan the whole game at reset (it has no walkthrough and the engine no plan), or refuse it."""
        assert self._planner is not None
        plan = self._planner(self._state)
        if plan.commands is None:
            raise ConfigError(
                f"expert=True cannot play the TextWorld game {path.stem!r} ({str(path)!r}): it has no walkthrough "
                f"and {plan.reason}; use expert=False for it, or give its .json a metadata 'walkthrough'."
            )
        self.walkthrough, self._planned_at = list(plan.commands), 0

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine, self._path, self._state = None, None, None

    # -- views --------------------------------------------------------------------------------------
    @property
    def admissible(self) -> tuple[str, ...] | None:
        cmds = self._state.get("admissible_commands") if self._state is not None else None
        return tuple(cmds) if cmds is not None else None

    @property
    def won(self) -> bool:
        return bool(self._state is not None and self._state.get("won"))

    @property
    def lost(self) -> bool:
        return bool(self._state is not None and self._state.get("lost"))

    @property
    def max_score(self) -> float:
        return _as_float(self._state.get("max_score") if self._state is not None else None, 1.0)

    @property
    def moves(self) -> float:
        return _as_float(self._state.get("moves") if self._state is not None else None, float(len(self._commands)))

    def expert_command(self) -> str | None:
        """The expert's next command: the re-planned ``policy_commands[0]``, else the walkthrough's
        next command while the agent has followed the walkthrough exactly, else (with a ``planner``)
        the first command of a plan searched from the current state; ``None`` when unknown."""
        plan = self._state.get("policy_commands") if self._state is not None else None
        if plan:
            return str(plan[0])
        if not self._on_walkthrough():
            self._replan()
        return self.walkthrough[len(self._commands)] if self._on_walkthrough() else None

    def _on_walkthrough(self) -> bool:
        """Whether the commands sent so far are the walkthrough's first ones and it has a next one."""
        n = len(self._commands)
        return n < len(self.walkthrough) and [normalize(c) for c in self.walkthrough[:n]] == self._commands

    def _replan(self) -> None:
        """Plan from the current state once per game command (the agent left the walkthrough)."""
        n = len(self._commands)
        if self._planner is None or not self.settings.expert or self._planned_at == n or self.won or self.lost:
            return
        self._planned_at = n
        plan = self._planner(self._state)
        if plan.commands:
            self.walkthrough = [*self._commands, *plan.commands]

    def metrics(self) -> dict[str, float]:
        max_score = self.max_score
        return {
            "score": self.score,
            "max_score": max_score,
            "normalized_score": self.score / max_score if max_score > 0 else 0.0,
            "won": float(self.won),
            "lost": float(self.lost),
            "moves": self.moves,
            "steps": float(self.step_count),
        }

    @property
    def system_prompt(self) -> str:
        """The system prompt of the current settings (full or compact, with ``max_steps`` filled in)."""
        full, compact = self._prompts
        return (compact if self.settings.compact else full).format(max_steps=self.settings.max_steps)

    def set_max_steps(self, max_steps: int) -> S:
        """Use ``max_steps`` from the next episode on (checked by the settings' class); return the new settings."""
        self.settings = with_max_steps(self.settings, max_steps)
        return self.settings

    def reset_on(self, path: Path, *, task_id: str, task_index: int, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Start an episode on the game at ``path``: the Gymnasium ``reset`` result. ``extra`` goes into
        every ``info["extra"]`` of the episode (with ``task_index``; ``game_index`` is its deprecated copy)."""
        self.start(path)
        self._task_id = task_id
        self._extra = {**extra}
        obs = self.render()
        return obs, self.info(None, True, None, {"task_index": task_index, "game_index": task_index})

    def gym_step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """One Gymnasium ``step``: send the response's command to the game (or report an invalid response)."""
        result = self.step(action)
        parsed = result.choice.parsed if result.choice is not None else None
        extra = {"command": result.choice.command if result.choice is not None else None}
        info = self.info(parsed, result.valid, result.feedback, extra)
        if result.label is not None:
            info["step_label"] = result.label
            if result.label_error is not None:
                info["step_label_error"] = result.label_error
        return result.observation, result.reward, result.terminated, result.truncated, info

    def info(self, parsed: ParsedAction | None, valid: bool, feedback: str | None, extra: dict[str, Any]) -> dict[str, Any]:
        """The contract's ``info`` for this episode's current state (``expert`` adds the expert's next command)."""
        extra = {"admissible_commands": list(self.admissible or []), **self._extra, **extra}
        if self.settings.expert:
            extra["expert_command"] = self.expert_command()
        return make_info(
            task_id=self._task_id, system_prompt=self.system_prompt, tools=() if self.settings.compact else self.tools,
            step=self.step_count, max_steps=self.settings.max_steps, action=parsed, valid=valid, feedback=feedback,
            metrics=self.metrics(), success=self.won, extra=extra,
        )

    def render(self, feedback: str | None = None) -> str:
        s = self.settings
        inventory = self._state.get("inventory") if self._inventory_infos and self._state is not None else None
        view = StateView(
            objective=self.objective,
            observation=self.observation,
            history=(
                tuple(self.history) if s.compact
                else tuple(self.history[-(s.history_window + 1) : -1]) if s.history_window > 0 else ()
            ),
            admissible=self.admissible if s.show_admissible else None,
            inventory=clean_feedback(inventory) if isinstance(inventory, str) else None,
            step=self.step_count,
            max_steps=s.max_steps,
            feedback=feedback,
        )
        return render_state(view, budget_chars=s.budget_chars, history_result_chars=s.history_result_chars, tools=self.tools,
                            compact=s.compact)

    # -- step ---------------------------------------------------------------------------------------
    def step(self, action: str) -> StepResult:
        """Apply one response (see the module docstring for the rules)."""
        check_can_step(self.name, started=self._state is not None, done=self.done)
        s = self.settings
        self.step_count += 1
        choice = read_command(action, self.tools, s.max_command_chars)
        reward, feedback, valid = 0.0, None, True
        if choice.command is None:
            # not sent: the game state, the observation and the history stay as they were
            valid, feedback = False, f"Invalid action: {choice.error}. The game did not receive it."
        else:
            command = choice.command
            admissible = self.admissible
            if admissible is not None and command not in {normalize(c) for c in admissible}:
                valid = False
                feedback = f"{command!r} is not one of the admissible commands; the game received it anyway."
            if valid and self._step_labels and (self._remaining is None or self._remaining[0] != logic_key(self._state)):
                self._remaining = self._measure()  # after an invalid command the game acted on
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jericho's "not fully supported" on TextWorld's helper games
                self._state, score, _ = self._engine.step(command)
            self._commands.append(command)
            new_score = _as_float(score, _as_float(self._state.get("score"), self.score))
            reward = new_score - self.score
            self.score = new_score
            text = clean_feedback(str(self._state.get("feedback") or ""))
            self.history.append(HistoryEntry(command, text))
            self.observation = f"> {command}\n{text}"
        if not valid:
            reward -= s.invalid_penalty
        terminated = self.won or self.lost
        truncated = not terminated and self.step_count >= s.max_steps
        self.done = terminated or truncated
        label, label_error = self._step_label(valid) if self._step_labels else (None, None)
        return StepResult(self.render(feedback), float(reward), terminated, truncated, choice, valid, feedback, label, label_error)

    def _measure(self) -> tuple[Hashable, PlanLength]:
        """The current logic state's key and the length of a shortest winning plan from it."""
        return logic_key(self._state), plan_length(self._state)

    def _step_label(self, valid: bool) -> tuple[int, str | None]:
        """This step's label and, when no plan was found, why (see the module docstring); keeps the
        current state's plan length for the next step."""
        if self.won:
            return 1, None
        if not valid or self.lost:
            return 0, None  # an invalid command the game acted on is planned before the next valid one
        assert self._remaining is not None  # planned before a valid command was sent
        key, before = self._remaining
        if key is not None and logic_key(self._state) == key:
            return 0, None  # nothing changed (look, examine, ...)
        self._remaining = self._measure()
        return progress_label(before, self._remaining[1])
