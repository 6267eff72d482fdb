"""Build a step environment from tasks, Python functions as tools, and a reward function.

>>> LabelEnv = tool_env("myproj/Label-v0", tasks=claims, tools=[search, answer],
...                     prompt="Claim: {claim}", reward=lambda claim, label: float(label == claim["label"]))
>>> env = LabelEnv()                          # or gymnasium.make("myproj/Label-v0", max_steps=3)

The environment follows the steppo contract (see docs/environments.md): each step parses the whole
response with :func:`~steppo_envs.parse_action` (Hermes tool calls, compact ``Verb[...]``,
``<answer>``), runs the tool(s), and re-renders the state (the task, a compressed history of the
earlier actions and results, the latest result, the steps left) within ``budget_chars``. A malformed
action, a call with a missing, unknown or wrongly typed argument, is a normal invalid step with
feedback; a tool that raises gives an observation with the error. ``info`` comes from
:func:`~steppo_envs.make_info`.

**The answer rule.** The final answer ends the episode and is scored by ``reward(task, answer)``.
Without an answer tool, the built-in answer (``<answer>X</answer>`` or ``Answer[X]``) gives the
text ``X``. A tool named ``answer`` (any case, or whose compact verb is ``Answer``) *replaces* the
built-in answer: ``<answer>X</answer>``, ``Answer[X]`` and the tool call all call it (``X`` fills its
first argument and is checked against its type hint, e.g. a ``Literal`` of labels), and ``reward``
receives the tool's return value. A tool that raises does not end the episode.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import gymnasium as gym
from pydantic import ConfigDict, Field

from steppo_envs.actions import ParsedAction, ToolCall, clean_action_text, format_hint, parse_action
from steppo_envs.config import ConfigError, build_config, renamed_options, with_max_steps
from steppo_envs.config_model import ConfigModel
from steppo_envs.contract import check_can_step, check_render_mode, make_info, pick_task_index, text_space
from steppo_envs.function_tools import FunctionTool, function_tool, tool_result_text
from steppo_envs.plugins import check_env_id, check_reregistration
from steppo_envs.render import Section, render_sections, truncate_text
from steppo_envs.tools import ToolSpec

__all__ = ["Renderer", "ToolCallRecord", "ToolEnv", "ToolEnvConfig", "ToolEnvDefinition", "ToolEnvState", "ToolTurn",
           "default_sections", "route_answer", "tool_env"]

T = TypeVar("T")


@renamed_options(history_chars="history_result_chars")
class ToolEnvConfig(ConfigModel):
    """Settings of a :class:`ToolEnv` (pass to :func:`tool_env`, or as overrides to ``gymnasium.make``)."""

    model_config = ConfigDict(frozen=True)

    max_steps: int = Field(8, ge=1, description=(
        "Steps per episode (tool calls, answers and invalid actions all count); the last one truncates the "
        "episode when it is not an answer."))
    budget_chars: int = Field(6000, ge=200, description="Character budget of one observation (about 4 characters per token).")
    result_chars: int = Field(1500, ge=40, description="The latest tool result is cut to this many characters.")
    history_result_chars: int = Field(200, ge=0, description=(
        "Each earlier tool result is cut to this many characters (0 = the action only; deprecated old name: "
        "``history_chars``)."))
    max_tool_calls: int = Field(1, ge=1, description="Tool calls allowed in one step (an answer-tool call must be the only one).")
    invalid_penalty: float = Field(0.0, ge=0, description=(
        "Subtracted from the reward of an invalid step (non-negative; 0.1 gives -0.1)."))
    success_reward: float = Field(1.0, description="An answer whose reward is at least this sets ``info[\"success\"]``.")


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call of a step: its name, checked arguments, the result text and whether it raised."""

    name: str
    arguments: dict[str, Any]
    result: str
    error: bool = False

    @property
    def summary(self) -> str:
        """``search(query="...")``, at most 200 characters."""
        args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in self.arguments.items())
        return truncate_text(f"{self.name}({args})", 200)


@dataclass(frozen=True)
class ToolTurn:
    """One step as the history shows it: tool calls, an answer, or the error of an invalid action."""

    step: int
    calls: tuple[ToolCallRecord, ...] = ()
    answer: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ToolEnvState:
    """What a renderer sees: the task, the prompt text, the turns so far and where the episode stands.

    Attributes:
        task: the task record (as given to :func:`tool_env`).
        prompt: the task's prompt text.
        turns: every step so far, oldest first (the last one is the latest observation).
        step: steps taken; ``max_steps``: the limit; ``done``: whether the episode has ended.
        hint: how to write a valid action (:func:`~steppo_envs.format_hint`).
        config: the environment's settings (budgets).
    """

    task: Any
    prompt: str
    turns: tuple[ToolTurn, ...]
    step: int
    max_steps: int
    done: bool
    hint: str
    config: ToolEnvConfig


Renderer = Callable[[ToolEnvState], "str | Sequence[Section]"]
"""A custom state renderer: sections (joined within ``budget_chars``) or a string (cut to it)."""


def _turn_section(turn: ToolTurn, latest: bool, state: ToolEnvState) -> Section:
    if turn.error is not None:
        text = f"Your action was invalid: {turn.error}." + (f" {state.hint}" if latest else "")
        return Section(text, title=f"Step {turn.step}: invalid action", priority=3 if latest else 0)
    if turn.answer is not None:
        return Section(f"You answered: {turn.answer}", title=f"Step {turn.step}: answer", priority=1)
    action = "; ".join(c.summary for c in turn.calls)
    chars = state.config.result_chars if latest else state.config.history_result_chars
    if chars == 0:
        return Section(f"Step {turn.step}: {action}", priority=0)
    body = "\n\n".join(("Error: " if c.error else "") + truncate_text(c.result, chars) for c in turn.calls)
    heading = "latest result" if latest else "earlier result"
    return Section(body, title=f"Step {turn.step}, {heading}: {action}", priority=2 if latest else 0)


def default_sections(state: ToolEnvState) -> list[Section]:
    """The default observation: ``## Task`` (never cut), ``## How to act``, one section per earlier
    step (results cut to ``history_result_chars``; shrunk first, oldest first), the latest result (cut to
    ``result_chars``) or invalid-action feedback, and ``Steps left: N.`` (never cut)."""
    sections = [Section(state.prompt, title="Task", keep=True), Section(state.hint, title="How to act", priority=1)]
    for i, turn in enumerate(state.turns):
        sections.append(_turn_section(turn, i == len(state.turns) - 1, state))
    left = state.max_steps - state.step
    if state.done:
        status = "The episode has ended."
    else:
        status = f"Steps left: {left}." + (" This is your last step: answer now." if left == 1 else "")
    sections.append(Section(status, keep=True))
    return sections


def route_answer(parsed: ParsedAction, answer_tool: ToolSpec | None) -> ParsedAction:
    """The answer rule: with an answer tool, an answer (``<answer>X</answer>`` / ``Answer[X]``, parsed
    with ``allow_answer=True``) becomes a call of that tool with ``X`` as its first argument
    (``answer_tool.compact_arg``); otherwise ``parsed`` is unchanged."""
    if answer_tool is None or parsed.kind != "answer":
        return parsed
    argument = answer_tool.compact_arg
    arguments = {argument: parsed.answer} if argument else {}
    return ParsedAction(kind="tool_call", tool_calls=(ToolCall(answer_tool.name, arguments),),
                        reasoning=parsed.reasoning, format=parsed.format)


_DEFINITIONS: dict[str, ToolEnvDefinition[Any]] = {}


def _definition_for(env_id: str, module: str) -> ToolEnvDefinition[Any]:
    """The definition registered as ``env_id`` (importing ``module`` first in a fresh worker process)."""
    if env_id not in _DEFINITIONS and module not in ("", "__main__", "__mp_main__"):
        importlib.import_module(module)
    try:
        return _DEFINITIONS[env_id]
    except KeyError:
        raise ConfigError(f"the tool env {env_id!r} is not defined in this process: call tool_env(...) at the top "
                          f"level of an importable module (it was defined in {module or 'an unnamed module'!r}), "
                          "or step envs in one process (--workers 0).") from None


@dataclass(frozen=True, eq=False)
class ToolEnvDefinition(Generic[T]):
    """What :func:`tool_env` returns: call it to build a :class:`ToolEnv` (``LabelEnv(max_steps=3)``).

    It is also the Gymnasium entry point of ``id``; it pickles as a reference (worker processes
    import ``module`` to find it), so define it at the top level of a module.
    """

    id: str
    tasks: tuple[T, ...]
    tools: tuple[FunctionTool, ...]
    reward: Callable[[T, Any], float]
    prompt: Callable[[T], str]
    config: ToolEnvConfig = field(default_factory=ToolEnvConfig)
    instructions: str = ""
    renderer: Renderer | None = None
    task_id: Callable[[T], str] | None = None
    description: str = ""
    answer_name: str | None = None
    module: str = ""

    def __call__(self, config: ToolEnvConfig | None = None, *, render_mode: str | None = None, **overrides: Any) -> ToolEnv:
        """A new environment; ``overrides`` are :class:`ToolEnvConfig` fields (a typo is an error)."""
        return ToolEnv(self, config, render_mode=render_mode, **overrides)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_definition_for, (self.id, self.module))

    def __deepcopy__(self, memo: dict[int, Any]) -> ToolEnvDefinition[T]:
        return self

    @property
    def entry_point_name(self) -> str:
        """How registrations name it: the same id defined by the same module is the same entry point."""
        return f"tool_env {self.id!r} defined in {self.module or 'an unnamed module'}"

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self.tools)

    @property
    def answer_tool(self) -> FunctionTool | None:
        """The user's answer tool (named ``answer`` or with compact verb ``Answer``), if any."""
        return next((t for t in self.tools if t.name == self.answer_name), None)


def _is_answer_tool(tool: FunctionTool) -> bool:
    return tool.name.lower() == "answer" or (tool.spec.compact or "").lower() == "answer"


def _choices(tools: Sequence[FunctionTool]) -> str:
    """``label: one of a, b, c`` for every argument with a fixed set of values (a ``Literal``)."""
    return "; ".join(f"{name}: one of {', '.join(map(str, p['enum']))}" for t in tools
                     for name, p in t.spec.parameters["properties"].items() if "enum" in p)


def _usage(tool: FunctionTool) -> str:
    args = {a: "..." for a in tool.spec.parameters.get("required", [])}
    text = f'<tool_call>{json.dumps({"name": tool.name, "arguments": args})}</tool_call>'
    if tool.spec.compact:
        text += f" or {tool.spec.compact}[{tool.spec.compact_arg or ''}]"
    choices = _choices([tool])
    return text + (f" ({choices})" if choices else "")


def system_prompt(definition: ToolEnvDefinition[Any], config: ToolEnvConfig) -> str:
    """The default system message: the instructions, every action form, the step limit."""
    lines = [definition.instructions.strip()] if definition.instructions.strip() else []
    lines += ["Each turn shows the task, your earlier actions with their results, and the steps you have left.",
              "Reply each turn with exactly one action, after any reasoning you want to write:"]
    answer = definition.answer_tool
    for tool in definition.tools:
        if tool is not answer:
            lines.append(f"- {tool.name}: {tool.spec.description} {_usage(tool)}")
    if answer is not None:
        arg = answer.spec.compact_arg or "answer"
        lines.append(f"- answer: {answer.spec.description} <answer>{arg}</answer>, Answer[{arg}] or {_usage(answer)}")
    else:
        lines.append("- answer: <answer>your answer</answer> or Answer[your answer]")
    lines.append(f"Answering ends the episode. You have {config.max_steps} steps in total.")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError):
        return tool_result_text(value)


class ToolEnv(gym.Env[str, str]):
    """The step environment of a :class:`ToolEnvDefinition` (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}

    def __init__(self, definition: ToolEnvDefinition[Any], config: ToolEnvConfig | None = None, *,
                 render_mode: str | None = None, **overrides: Any) -> None:
        self.definition = definition
        self.config = build_config(ToolEnvConfig, config if config is not None else definition.config, overrides)
        self.render_mode = check_render_mode(render_mode)
        self.tools: tuple[ToolSpec, ...] = definition.specs
        self.system_prompt = system_prompt(definition, self.config)
        self.observation_space, self.action_space = text_space(), text_space()
        self._by_name = {t.name: t for t in definition.tools}
        choices = _choices(definition.tools)
        self._hint = format_hint(self.tools, allow_answer=True) + (f" Allowed values: {choices}." if choices else "")
        self._task_index = -1
        self._turns: list[ToolTurn] = []
        self._step = 0
        self._done = False
        self._obs = ""

    # -- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on a random task (``options={"task_index": i}`` picks task ``i``)."""
        super().reset(seed=seed)
        index = pick_task_index(options, len(self.definition.tasks), self.np_random, owner=self.definition.id)
        self._task_index, self._turns, self._step, self._done = index, [], 0, False
        self._obs = self._render()
        return self._obs, self._info(None, extra={"task_index": index})

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Run the tool call(s), score an answer, or report an invalid action."""
        check_can_step(self.definition.id, started=self._task_index >= 0, done=self._done)
        self._step += 1
        parsed, checked = self._parse(clean_action_text(action))
        reward, terminated, success = 0.0, False, False
        extra: dict[str, Any] = {"task_index": self._task_index}
        if parsed.kind == "invalid":
            turn = ToolTurn(self._step, error=parsed.error or "invalid action")
            reward = 0.0 - float(self.config.invalid_penalty)
        elif parsed.kind == "answer":
            turn, reward, terminated = self._answer(parsed.answer or "", parsed.answer or "", extra)
        else:
            turn, reward, terminated = self._run_calls(checked, extra)
        success = terminated and reward >= self.config.success_reward
        self._turns.append(turn)
        truncated = not terminated and self._step >= self.config.max_steps
        self._done = terminated or truncated
        self._obs = self._render()
        feedback = None if parsed.valid else f"{parsed.error}. {self._hint}"
        return self._obs, float(reward), terminated, truncated, self._info(parsed, feedback, success, extra)

    def render(self) -> str | None:
        """The current observation (``render_mode="ansi"``); ``None`` otherwise."""
        return self._obs if self.render_mode == "ansi" else None

    def set_max_steps(self, max_steps: int) -> None:
        """Change the step limit (``gymnasium.make(id, max_episode_steps=N)`` calls it before the first reset)."""
        self.config = with_max_steps(self.config, max_steps)
        self.system_prompt = system_prompt(self.definition, self.config)

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def task(self) -> Any:
        """The current task record."""
        return self.definition.tasks[self._task_index]

    def _parse(self, text: str) -> tuple[ParsedAction, list[tuple[FunctionTool, dict[str, Any]]]]:
        """The parsed action (answers routed by the answer rule) and its checked tool calls."""
        parsed = parse_action(text, self.tools, allow_answer=True, max_tool_calls=self.config.max_tool_calls)
        answer = self.definition.answer_tool
        parsed = route_answer(parsed, answer.spec if answer is not None else None)
        if parsed.kind != "tool_call":
            return parsed, []
        checked = []
        for call in parsed.tool_calls:
            tool = self._by_name[call.name]
            arguments, problem = tool.check(call.arguments)
            if problem is None and tool.name == self.definition.answer_name and len(parsed.tool_calls) > 1:
                problem = f"call {tool.name!r} alone, in a step of its own"
            if problem is not None:
                return ParsedAction(kind="invalid", reasoning=parsed.reasoning, format=parsed.format, error=problem), []
            checked.append((tool, arguments))
        return parsed, checked

    def _score(self, answer: Any) -> float:
        value = self.definition.reward(self.task, answer)
        try:
            reward = float(value)
        except (TypeError, ValueError):
            reward = math.nan
        if not math.isfinite(reward):
            raise ValueError(f"the reward function of {self.definition.id} returned {value!r}: return a finite float.")
        return reward

    def _answer(self, value: Any, shown: str, extra: dict[str, Any]) -> tuple[ToolTurn, float, bool]:
        extra["answer"] = _jsonable(value)
        return ToolTurn(self._step, answer=truncate_text(shown, 500)), self._score(value), True

    def _run_calls(self, checked: list[tuple[FunctionTool, dict[str, Any]]], extra: dict[str, Any]) -> tuple[ToolTurn, float, bool]:
        records = []
        for tool, arguments in checked:
            value, error = tool.call(arguments, self.task)
            if error is None and tool.name == self.definition.answer_name:
                return self._answer(value, tool_result_text(value), extra)
            records.append(ToolCallRecord(tool.name, arguments, error if error is not None else tool_result_text(value), error is not None))
        extra["tool_calls"] = [r.name for r in records]
        errors = [f"{r.name}: {r.result}" for r in records if r.error]
        if errors:
            extra["tool_errors"] = errors
        return ToolTurn(self._step, calls=tuple(records)), 0.0, False

    def _state(self) -> ToolEnvState:
        return ToolEnvState(task=self.task, prompt=self.definition.prompt(self.task), turns=tuple(self._turns),
                            step=self._step, max_steps=self.config.max_steps, done=self._done, hint=self._hint,
                            config=self.config)

    def _render(self) -> str:
        state = self._state()
        out = (self.definition.renderer or default_sections)(state)
        if isinstance(out, str):
            return truncate_text(clean_action_text(out), self.config.budget_chars)
        return render_sections(list(out), self.config.budget_chars)

    def _task_id(self) -> str:
        task, custom = self.task, self.definition.task_id
        if custom is not None:
            return str(custom(task))
        if isinstance(task, Mapping) and "id" in task:
            return str(task["id"])
        return str(getattr(task, "id", f"{self.definition.id}#{self._task_index}"))

    def _info(self, action: ParsedAction | None, feedback: str | None = None, success: bool = False,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        calls = sum(len(t.calls) for t in self._turns)
        invalid = sum(t.error is not None for t in self._turns)
        return make_info(task_id=self._task_id(), system_prompt=self.system_prompt, tools=self.tools, step=self._step,
                         max_steps=self.config.max_steps, action=action, valid=action.valid if action is not None else True,
                         feedback=feedback, metrics={"tool_calls": float(calls), "invalid_actions": float(invalid)},
                         success=success, extra=extra)


def _prompt_fn(prompt: str | Callable[[T], str]) -> Callable[[T], str]:
    if callable(prompt):
        return prompt

    def fill(task: T) -> str:
        fields = dict(task) if isinstance(task, Mapping) else {}
        return prompt.format_map({**fields, "task": task})

    return fill


def _check_tools(tools: Sequence[FunctionTool]) -> None:
    for kind, names in (("name", [t.name for t in tools]), ("compact verb", [(t.spec.compact or "").lower() for t in tools if t.spec.compact])):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"two tools share the {kind} {repeated[0]!r}: give each tool its own name (function_tool(fn, name=...)).")
    if sum(_is_answer_tool(t) for t in tools) > 1:
        raise ConfigError("more than one tool is an answer tool (named 'answer' or with compact verb 'Answer'): keep one.")


def _as_tools(tools: Sequence[Callable[..., Any] | FunctionTool]) -> tuple[tuple[FunctionTool, ...], str | None]:
    """The tools (the answer tool without its compact verb) and the answer tool's name, if any."""
    if isinstance(tools, FunctionTool) or callable(tools) or not tools:
        raise ConfigError("tools must be a non-empty list of functions, e.g. tools=[search, answer].")
    made = []
    for tool in tools:
        if not isinstance(tool, FunctionTool) and not callable(tool):
            raise ConfigError(f"tools must be functions or FunctionTool objects, got {type(tool).__name__}: pass the function itself.")
        made.append(tool if isinstance(tool, FunctionTool) else function_tool(tool))
    _check_tools(made)
    answer = next((t.name for t in made if _is_answer_tool(t)), None)
    return tuple(_without_compact(t) if t.name == answer else t for t in made), answer


def _without_compact(tool: FunctionTool) -> FunctionTool:
    """The answer tool is reached through the built-in ``Answer[...]`` (routed), so it needs no verb."""
    spec = ToolSpec(tool.spec.name, tool.spec.description, tool.spec.parameters)
    return FunctionTool(fn=tool.fn, spec=spec, takes_task=tool.takes_task, adapters=tool.adapters)


def _check_first_task(prompt: Callable[[Any], str], tasks: tuple[Any, ...], template: Any) -> None:
    try:
        text = prompt(tasks[0])
    except (KeyError, AttributeError, IndexError, ValueError) as exc:
        if callable(template):
            raise
        raise ConfigError(f"prompt {template!r} cannot be filled from task 0 ({type(exc).__name__}: {exc}): name fields "
                          "the tasks have, e.g. '{question}', double literal braces, or pass a function.") from None
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"prompt gave {text!r} for task 0: it must give the task's text as a non-empty string.")


def tool_env(
    id: str,
    *,
    tasks: Iterable[T],
    tools: Sequence[Callable[..., Any] | FunctionTool],
    reward: Callable[[T, Any], float],
    prompt: str | Callable[[T], str],
    max_steps: int | None = None,
    config: ToolEnvConfig | None = None,
    instructions: str = "",
    render: Renderer | None = None,
    task_id: Callable[[T], str] | None = None,
    description: str | None = None,
) -> ToolEnvDefinition[T]:
    """Build and register (as ``id``) a step environment whose agent calls ``tools`` to solve ``tasks``.

    Args:
        id: the Gymnasium id, ``namespace/Name-vN`` (``myproj/Label-v0``); defining it again in the same
            module replaces it; an id registered by anything else is a :class:`ConfigError`.
        tasks: the task records (dicts, dataclasses, anything); read once into a tuple.
        tools: plain functions (schema from signature, hints and docstring; see
            :mod:`steppo_envs.function_tools`) or :func:`~steppo_envs.function_tool` results.
        reward: ``reward(task, answer) -> float`` for the final answer (the answer text, or the
            return value of your ``answer`` tool: see the answer rule in the module docstring).
        prompt: the task's text: a format string filled with the task's fields (``"Claim: {claim}"``;
            ``{task}`` is the record itself) or a function of the task.
        max_steps: the step limit (overrides ``config.max_steps``).
        config: budgets and limits (:class:`ToolEnvConfig`); ``gymnasium.make`` overrides apply on top.
        instructions: the first lines of the system prompt (what the task is about).
        render: a custom renderer ``(ToolEnvState) -> sections or str`` (default :func:`default_sections`).
        task_id: ``task_id(task) -> str`` (default: the record's ``id`` field, else ``"<id>#<index>"``).
        description: the line ``steppo envs`` shows (default: the first line of ``instructions``).
    """
    check_env_id(id)
    records = tuple(tasks)
    if not records:
        raise ConfigError(f"{id} has no tasks: pass tasks=[...] with at least one record.")
    built, answer_name = _as_tools(tools)
    base = config if config is not None else ToolEnvConfig()
    base = build_config(ToolEnvConfig, base, {} if max_steps is None else {"max_steps": max_steps})
    prompt_fn = _prompt_fn(prompt)
    _check_first_task(prompt_fn, records, prompt)
    module = sys._getframe(1).f_globals.get("__name__", "")
    line = description or (instructions.strip().splitlines() or [f"Tool environment ({', '.join(t.name for t in built)})."])[0]
    definition = ToolEnvDefinition(id=id, tasks=records, tools=built, reward=reward, prompt=prompt_fn, config=base,
                                   instructions=instructions, renderer=render, task_id=task_id, description=line,
                                   answer_name=answer_name, module=module)
    check_reregistration(id, definition)  # the same id from the same module replaces its definition
    import steppo_envs  # the registry (imported here: steppo_envs imports this module)

    gym.registry.pop(id, None)
    _DEFINITIONS[id] = definition
    steppo_envs.register(id, definition, line)
    return definition
