"""What ``steppo/TextWorld-v0`` and ``steppo/ALFWorld-v0`` share: the ``act`` tool, reading a command
out of a response, cleaning it before the game sees it, and rendering the state.

Nothing here imports textworld; the envs hand in the engine's ``GameState`` values as plain data.

Reading a response (:func:`read_command`):

* a tool call ``<tool_call>{"name": "act", "arguments": {"command": "go east"}}</tool_call>`` or the
  compact form ``Act[go east]`` (parsed by :func:`steppo_envs.actions.parse_action`);
* otherwise, when the response has no tool-call / compact syntax at all, the *bare* response (text
  after any ``</think>``, stripped) if it is one non-empty line of at most ``max_command_chars``
  characters: small models often answer just ``go east``;
* anything else (empty text, broken JSON, several lines of prose) is an invalid step that is
  **not** passed to the game.

Before the game sees a command it is cleaned (:func:`clean_command`): only printable ASCII except the backslash is kept
(a NUL byte, or a backslash that starts a dumb-frotz escape, hangs the Z-machine interpreter), whitespace is collapsed, it is lower-cased and cut to
``max_command_chars``. Interpreter meta-commands (``quit``, ``restart``, ``save``, ``undo``...) are
not passed to the game either: they open yes/no prompts or touch files and would desynchronise the
episode (:data:`META_COMMANDS`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from steppo_envs.actions import ParsedAction, ToolCall, clean_action_text, format_hint, parse_action
from steppo_envs.render import Section, render_sections, truncate_text
from steppo_envs.tools import ToolSpec

__all__ = [
    "ACT_TOOL",
    "META_COMMANDS",
    "CommandChoice",
    "HistoryEntry",
    "StateView",
    "clean_command",
    "clean_feedback",
    "is_meta_command",
    "normalize",
    "read_command",
    "render_compact_state",
    "render_state",
]

ACT_TOOL = ToolSpec(
    name="act",
    description="Send one command to the text game, e.g. 'go east' or 'open wooden door'. Prefer one of the admissible commands.",
    parameters={
        "type": "object",
        "properties": {"command": {"type": "string", "description": "one game command, e.g. 'take key from table'"}},
        "required": ["command"],
    },
    compact="Act",
)

META_COMMANDS: frozenset[str] = frozenset(
    {
        "quit", "q", "restart", "save", "restore", "undo", "script", "unscript", "transcript",
        "noscript", "verbose", "brief", "superbrief", "again", "g", "oops", "o", "notify", "version",
    }
)  # fmt: skip

_NON_PRINTABLE_RE = re.compile(r"[^\x20-\x5b\x5d-\x7e]+")  # printable ASCII minus backslash
_SPACES_RE = re.compile(r"\s+")
_BANNER_LINE_RE = re.compile(r"^[\s_|\\$/<>()=~-]*$")


@dataclass(frozen=True)
class CommandChoice:
    """The command read from one response.

    Attributes:
        command: the cleaned command to send to the game, or ``None`` when none could be read.
        parsed: the parsed action (a bare command is recorded as an ``act`` call with ``format="none"``).
        error: why no command could be read, or why it is not sent (meta-command).
    """

    command: str | None
    parsed: ParsedAction
    error: str | None = None


def normalize(command: str) -> str:
    """Lower-case, whitespace-collapsed form used to compare a command with the admissible ones."""
    return _SPACES_RE.sub(" ", command).strip().lower()


def clean_command(command: str, max_chars: int) -> str:
    """Printable ASCII only, whitespace collapsed, lower-cased and at most ``max_chars`` characters."""
    return normalize(_NON_PRINTABLE_RE.sub(" ", command))[:max_chars].strip()


def is_meta_command(command: str) -> bool:
    """Whether ``command`` (cleaned) starts with an interpreter meta-verb such as ``quit`` or ``save``."""
    words = command.split()
    return bool(words) and words[0] in META_COMMANDS


def _invalid(parsed: ParsedAction, error: str) -> CommandChoice:
    bad = ParsedAction(kind="invalid", reasoning=parsed.reasoning, format=parsed.format, error=error)
    return CommandChoice(None, bad, error)


def read_command(text: str, tools: Sequence[ToolSpec], max_command_chars: int) -> CommandChoice:
    """Read one game command from a whole response (see the module docstring). Never raises."""
    text = clean_action_text(text)
    parsed = parse_action(text, tools, allow_answer=False)
    if parsed.kind == "tool_call":
        raw = parsed.tool_calls[0].arguments.get("command", "")
    elif parsed.format == "none" and isinstance(text, str):
        bare = text.rsplit("</think>", 1)[-1].strip()
        if not bare:
            return _invalid(parsed, "the response is empty: give one command")
        if "\n" in bare or len(bare) > max_command_chars:
            return _invalid(parsed, "no command found: give one short command, alone on its line, or Act[command]")
        raw = bare
        parsed = ParsedAction(kind="tool_call", tool_calls=(ToolCall(ACT_TOOL.name, {"command": bare}),), format="none")
    else:
        return CommandChoice(None, parsed, parsed.error or "no command found")
    command = clean_command(str(raw), max_command_chars)
    if not command:
        return _invalid(parsed, "the command is empty (only printable ASCII characters are kept)")
    if is_meta_command(command):
        return _invalid(parsed, f"{command.split()[0]!r} is an interpreter meta-command and is not available: give a game command")
    return CommandChoice(command, parsed)


def clean_feedback(text: str, *, objective: str | None = None) -> str:
    """Game text without TextWorld's ASCII-art banner, the objective, prompts and the status line."""
    if objective and objective in text:
        text = text.split(objective, 1)[1]
    lines = text.replace("\r", "").split("\n")
    while lines and (lines[-1].strip() == "" or lines[-1].lstrip().startswith(">")):
        lines.pop()
    kept = [ln.rstrip() for ln in lines if not (ln.strip() and _BANNER_LINE_RE.match(ln))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


@dataclass(frozen=True)
class HistoryEntry:
    """One earlier step: the command sent (or the invalid response) and what came back."""

    command: str
    result: str


@dataclass(frozen=True)
class StateView:
    """Everything :func:`render_state` shows; built fresh by the env each step."""

    objective: str
    observation: str
    history: tuple[HistoryEntry, ...]
    admissible: tuple[str, ...] | None
    inventory: str | None
    step: int
    max_steps: int
    feedback: str | None = None


def render_state(
    view: StateView,
    *,
    budget_chars: int,
    history_result_chars: int,
    tools: Sequence[ToolSpec],
    compact: bool = False,
) -> str:
    """The observation string: objective (never cut), step counter, feedback on an invalid step,
    the latest game text, recent actions (oldest shrunk first), inventory and admissible commands.

    ``compact`` renders the short state (:func:`render_compact_state`) instead."""
    if compact:
        return render_compact_state(view, budget_chars=budget_chars)
    sections = [Section(view.objective or "(no objective is given: explore and find what earns points)", "Objective", keep=True)]
    left = view.max_steps - view.step
    sections.append(Section(f"Step {view.step} of {view.max_steps} ({left} left).", keep=True))
    if view.feedback:
        fb = truncate_text(view.feedback, 400) + "\n" + format_hint(tools, allow_answer=False)
        sections.append(Section(fb, "Feedback", keep=True))
    if view.history:
        sections.append(Section("Oldest first:", "Recent actions", priority=2, min_chars=10))
        for h in view.history:
            text = f"> {h.command}\n{truncate_text(h.result, history_result_chars)}"
            sections.append(Section(text, priority=1))
    sections.append(Section(view.observation or "(nothing happens)", "Observation", priority=5, min_chars=200))
    if view.inventory is not None:
        sections.append(Section(view.inventory, "Inventory", priority=3))
    if view.admissible is not None:
        sections.append(Section("\n".join(view.admissible), "Admissible commands", priority=4, min_chars=100))
    return render_sections(sections, budget_chars)


def render_compact_state(view: StateView, *, budget_chars: int) -> str:
    """The short state for small models and CPU budgets (``prompt_style="compact"``): objective,
    step counter, a one-line feedback on an invalid step, every command sent so far on one line
    (the compressed history: oldest dropped first when over budget), the latest game text,
    inventory and the admissible commands on one line."""
    sections = [Section(view.objective or "(no objective is given: explore and find what earns points)", "Objective", keep=True)]
    sections.append(Section(f"Step {view.step} of {view.max_steps}.", keep=True))
    if view.feedback:
        sections.append(Section(truncate_text(view.feedback, 200) + " Reply as Act[command].", "Feedback", keep=True))
    if view.history:
        done = ", ".join(h.command for h in view.history)
        sections.append(Section(done, "Commands so far", priority=2, min_chars=40))
    sections.append(Section(view.observation or "(nothing happens)", "Observation", priority=5, min_chars=200))
    if view.inventory is not None:
        sections.append(Section(view.inventory, "Inventory", priority=3))
    if view.admissible is not None:
        sections.append(Section(", ".join(view.admissible), "Admissible commands", priority=4, min_chars=100))
    return render_sections(sections, budget_chars)
