"""The environment contract shared by every steppo environment (see docs/environments.md).

* ``gymnasium.Env[str, str]`` with :class:`TextSpace` observation and action spaces;
* the observation is the whole rendered state for the step (the user message);
* ``info`` is a :class:`StepInfo` (JSON-serialisable) built with :func:`make_info`;
* invalid actions are normal steps: they count against ``max_steps``, may cost ``invalid_penalty``,
  and the next observation says what was wrong and how to act;
* ``reset(options={"task_index": i})`` plays task ``i`` (:func:`pick_task_index`): an index out of
  range or an unknown reset option is a :class:`~steppo_envs.ConfigError` naming the valid ones;
* ``step()`` after the episode ended (``terminated`` or ``truncated``) without a new ``reset()``, or
  before the first ``reset()``, raises :class:`EpisodeOverError` (:func:`check_can_step`).
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, TypedDict

import numpy as np
from gymnasium import spaces

from steppo_envs.actions import ParsedAction
from steppo_envs.config import ConfigError, UserError, resolve_aliases
from steppo_envs.tools import ToolSpec

__all__ = [
    "RESET_OPTIONS",
    "EpisodeOverError",
    "MissingExtraError",
    "StepInfo",
    "TextSpace",
    "check_can_step",
    "check_render_mode",
    "make_info",
    "optional_import",
    "pick_task_index",
    "reject_reset_options",
    "text_space",
]

_SAMPLE_CHARSET = string.printable + "äöüéèñçßøåλπΩ→…“”‘’—中文日本語한국어"


class TextSpace(spaces.Text):
    """A ``spaces.Text`` that contains *any* Python ``str`` up to ``max_length`` characters.

    Gymnasium's ``Text`` only contains strings over a finite charset; model outputs can hold any
    Unicode character, so membership here only checks the type and the length. ``sample()`` draws
    short strings from a printable charset with some non-ASCII characters.
    """

    def __init__(self, max_length: int = 1_000_000, *, sample_max_length: int = 200, seed: int | None = None):
        super().__init__(max_length=max_length, min_length=0, charset=_SAMPLE_CHARSET, seed=seed)
        self.sample_max_length = sample_max_length

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        length = int(self.np_random.integers(0, self.sample_max_length + 1))
        chars = self.np_random.choice(np.array(list(self.character_set)), size=length)
        return "".join(chars.tolist())

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"


def text_space(max_length: int = 1_000_000) -> TextSpace:
    """The observation/action space every steppo env uses."""
    return TextSpace(max_length=max_length)


class StepInfo(TypedDict, total=False):
    """Keys every steppo env puts in ``info`` (reset and step). All values are JSON-serialisable.

    ``task_id``: stable id of the task (same seed → same id). ``system_prompt``: the system message.
    ``tools``: OpenAI-style tool schemas (pass to a chat template as ``tools=``). ``action``: the
    parsed action of this step (``ParsedAction.to_dict()``; ``None`` at reset). ``valid``: whether
    the action was valid. ``feedback``: the error shown to the agent for an invalid action.
    ``step``: steps taken so far. ``max_steps``: the step limit. ``metrics``: task metrics (floats).
    ``success``: whether the task is solved (final steps). ``extra``: env-specific details.
    """

    task_id: str
    system_prompt: str
    tools: list[dict[str, Any]]
    action: dict[str, Any] | None
    valid: bool
    feedback: str | None
    step: int
    max_steps: int
    metrics: dict[str, float]
    success: bool
    extra: dict[str, Any]


#: The reset options every steppo env with tasks accepts.
RESET_OPTIONS: tuple[str, ...] = ("task_index",)


class EpisodeOverError(RuntimeError):
    """``step()`` was called after the episode ended (or before the first ``reset()``): call ``reset()``.

    A bug in the caller's loop, not a user input error: every steppo env raises it the same way, like
    Gymnasium's own envs refuse to step a finished episode."""


def check_render_mode(render_mode: str | None) -> str | None:
    """``render_mode`` when it is ``None`` or ``"ansi"`` (the one mode steppo envs render: the
    observation text), else a :class:`~steppo_envs.ConfigError` naming those two."""
    if render_mode is not None and render_mode != "ansi":
        raise ConfigError(f"render_mode {render_mode!r} is not supported: use None or 'ansi'.")
    return render_mode


def check_can_step(owner: str, *, started: bool, done: bool) -> None:
    """Raise :class:`EpisodeOverError` unless an episode of ``owner`` (an env's name) is running."""
    if not started:
        raise EpisodeOverError(f"{owner}: step() was called before reset(): call reset() first.")
    if done:
        raise EpisodeOverError(f"{owner}: the episode has ended (terminated or truncated): call reset() to start a new one.")


def reject_reset_options(options: Mapping[str, Any] | None, owner: str, *, accepted: Sequence[str] = ()) -> None:
    """Raise :class:`~steppo_envs.ConfigError` naming the accepted options when ``options`` holds any other
    (an env without tasks accepts none: ``reject_reset_options(options, "myproj/Env-v0")``)."""
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        allowed = f"the accepted options are {', '.join(map(repr, accepted))}" if accepted else "it accepts no options"
        raise ConfigError(f"unknown reset option(s) {', '.join(map(repr, unknown))} for {owner}: {allowed}.")


def pick_task_index(
    options: Mapping[str, Any] | None,
    n_tasks: int,
    np_random: np.random.Generator,
    *,
    owner: str,
    aliases: Mapping[str, str] | None = None,
) -> int:
    """The task of a ``reset``: ``options["task_index"]`` when given (checked), else uniform from ``np_random``.

    Every env reads its reset options through here: an unknown option, or an index that is not an
    integer in ``0..n_tasks-1``, is a :class:`~steppo_envs.ConfigError` naming the accepted options /
    the valid range. ``aliases`` (old -> new) are deprecated option names (``game_index`` of the
    TextWorld-engine envs), accepted with a ``DeprecationWarning``."""
    values = resolve_aliases(f"{owner} reset", aliases or {}, options or {})
    reject_reset_options(values, owner, accepted=RESET_OPTIONS)
    if "task_index" not in values:
        return int(np_random.integers(n_tasks))
    raw = values["task_index"]
    if isinstance(raw, bool) or not isinstance(raw, int | np.integer):
        raise ConfigError(f"task_index must be an integer in 0..{n_tasks - 1} for {owner}, got {raw!r}.")
    index = int(raw)
    if not 0 <= index < n_tasks:
        raise ConfigError(f"task_index {index} is out of range for {owner}: use 0..{n_tasks - 1}.")
    return index


def make_info(
    *,
    task_id: str,
    system_prompt: str,
    tools: Sequence[ToolSpec],
    step: int,
    max_steps: int,
    action: ParsedAction | None = None,
    valid: bool = True,
    feedback: str | None = None,
    metrics: dict[str, float] | None = None,
    success: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the standard ``info`` dict: the keys of :class:`StepInfo`, as the plain ``dict[str, Any]``
    Gymnasium's ``reset`` / ``step`` signatures declare."""
    return {
        "task_id": task_id,
        "system_prompt": system_prompt,
        "tools": [t.to_openai() for t in tools],
        "action": action.to_dict() if action is not None else None,
        "valid": valid,
        "feedback": feedback,
        "step": step,
        "max_steps": max_steps,
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "success": bool(success),
        "extra": dict(extra or {}),
    }


class MissingExtraError(UserError, ImportError):
    """An optional dependency is missing; the message names the pip extra that installs it."""


def optional_import(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'steppo[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module!r} is not installed ({exc}): install it with pip install 'steppo[{extra}]'."
        ) from exc


def _no_shared_memory(space: TextSpace, n: int = 1, ctx: Any = None) -> Any:
    raise ValueError(
        "steppo text observations cannot live in shared memory (Gymnasium would silently garble them): "
        "create the vector env with gymnasium.vector.AsyncVectorEnv(..., shared_memory=False)."
    )


def _register_vector_guards() -> None:
    from gymnasium.vector.utils import create_shared_memory

    create_shared_memory.register(TextSpace)(_no_shared_memory)


_register_vector_guards()
