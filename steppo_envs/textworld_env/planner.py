"""A planner over a TextWorld game's own logic, for games whose ``.json`` carries no walkthrough.

TextWorld's expert (``policy_commands``) replays the actions recorded with each quest; a game whose
quests give only a win *condition* (``Event(conditions=...)``, as a hand-made ``GameMaker`` game
often does) and no walkthrough in its metadata leaves it empty. :func:`plan_commands` then searches
the game's logic (the same rules TextWorld derives the admissible commands from): greedy best-first
over logic states, ordered by the number of quests still to complete, then by depth, skipping states
where a quest fails, until every non-optional quest's win condition has held. The commands are
generated the way the admissible commands are, so the engine accepts them. The search is
deterministic (actions are tried in sorted order) and stops after ``max_states`` distinct states.

:func:`plan_length` (the step labels of ``step_labels=True``) runs the same search breadth-first
(ordered by depth only), so the length it returns is that of a *shortest* winning command sequence
(every game action counts 1); it generates no commands.

Nothing here imports textworld at module level; the objects come from the engine's game state
(``state["_game_progression"]``), which TextWorld fills when commands or quests are tracked.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_STATES",
    "Plan",
    "PlanLength",
    "logic_key",
    "plan_commands",
    "plan_from_game_state",
    "plan_length",
    "progress_label",
    "shortest_plan_length",
]

MAX_STATES = 20_000
"""States the search may visit before it gives up (about 1 ms each on a CPU core)."""


@dataclass(frozen=True)
class Plan:
    """The result of a search: ``commands`` (empty when the game is already won) or ``None`` and the
    ``reason`` there is none."""

    commands: tuple[str, ...] | None
    reason: str = ""


def _status(state: Any, done: tuple[bool, ...], quests: Sequence[Any], fails: Sequence[Any]) -> tuple[tuple[bool, ...], bool]:
    """Which required quests have been completed (once completed, always), and whether a quest failed."""
    new = tuple(d or any(e.is_triggering(state) for e in q.win_events) for d, q in zip(done, quests, strict=True))
    return new, any(e.is_triggering(state) for e in fails)


@dataclass(frozen=True)
class PlanLength:
    """The length of a shortest winning command sequence (``0`` when the game is already won), or
    ``None`` and the ``reason`` there is none (no plan, or the search gave up)."""

    steps: int | None
    reason: str = ""


def _pending(done: tuple[bool, ...]) -> int:
    return sum(not d for d in done)


def _search(
    game: Any, state: Any, completed: Sequence[bool] | None, *, max_states: int, shortest: bool
) -> tuple[tuple[Any, ...] | None, str]:
    """The logic actions that win ``game`` from ``state`` (``()`` when won already), or ``None`` and why
    not. ``shortest`` orders the search by depth only (breadth-first: the first plan found is a
    shortest one); otherwise by the number of quests still to complete, then depth (greedy)."""
    quests = [q for q in game.quests if q.win_events and not q.optional]
    if not quests:
        return None, "the game has no quest with a win condition"
    fails = [e for q in game.quests if not q.optional for e in q.fail_events]
    rules = list(game.kb.rules.values())
    constants = game.kb.types.constants_mapping
    done, failed = _status(state, tuple(completed or (False,) * len(quests)), quests, fails)
    if failed:
        return None, "a quest of the game has already failed"
    if all(done):
        return (), ""
    seen = {(frozenset(state.facts), done)}
    tie = itertools.count()
    heap: list[tuple[int, int, int, Any, tuple[bool, ...], tuple[Any, ...]]] = [
        (0 if shortest else _pending(done), 0, next(tie), state, done, ())
    ]
    while heap:
        _, depth, _, current, current_done, path = heapq.heappop(heap)
        for action in sorted(current.all_applicable_actions(rules, constants), key=str):
            child = current.copy()
            child.apply(action)
            child_done, child_failed = _status(child, current_done, quests, fails)
            if child_failed:
                continue
            if all(child_done):
                return (*path, action), ""
            key = (frozenset(child.facts), child_done)
            if key in seen:
                continue
            if len(seen) >= max_states:
                return None, f"no winning command sequence was found within {max_states} game states"
            seen.add(key)
            order = 0 if shortest else _pending(child_done)
            heapq.heappush(heap, (order, depth + 1, next(tie), child, child_done, (*path, action)))
    return None, "no command sequence reaches the win condition"


def plan_commands(game: Any, state: Any, completed: Sequence[bool] | None = None, *, max_states: int = MAX_STATES) -> Plan:
    """Commands that win ``game`` from the logic ``state`` (a ``textworld.logic.State``).

    Args:
        game: the ``textworld.Game`` (its quests, knowledge base and names).
        state: the logic state to start from (not modified).
        completed: per required quest (non-optional, with a win event, in ``game.quests`` order),
            whether it has been completed already; ``None`` = none.
        max_states: give up after this many distinct states.
    """
    actions, reason = _search(game, state, completed, max_states=max_states, shortest=False)
    if actions is None:
        return Plan(None, reason)
    return Plan(tuple(_commands(game, actions)) if actions else ())


def shortest_plan_length(
    game: Any, state: Any, completed: Sequence[bool] | None = None, *, max_states: int = MAX_STATES
) -> PlanLength:
    """The number of commands of a shortest winning sequence from the logic ``state`` (breadth-first;
    arguments as :func:`plan_commands`)."""
    actions, reason = _search(game, state, completed, max_states=max_states, shortest=True)
    return PlanLength(None, reason) if actions is None else PlanLength(len(actions))


def _commands(game: Any, actions: Sequence[Any]) -> list[str]:
    from textworld.generator.inform7 import Inform7Game

    return [str(c) for c in Inform7Game(game).gen_commands_from_actions(list(actions))]


def _progression(game_state: Any) -> tuple[Any, list[bool]] | None:
    """The engine's ``GameProgression`` and, per required quest, whether it is completed (all ``False``
    when the engine does not track quests); ``None`` when it tracks no logic state."""
    progression = game_state.get("_game_progression") if game_state is not None else None
    if progression is None:
        return None
    by_quest = {id(qp.quest): qp.completed for qp in progression.quest_progressions}
    quests = progression.game.quests
    return progression, [bool(by_quest.get(id(q), False)) for q in quests if q.win_events and not q.optional]


def plan_from_game_state(game_state: Any, *, max_states: int = MAX_STATES) -> Plan:
    """:func:`plan_commands` from the engine's current ``GameState`` (its ``_game_progression``)."""
    found = _progression(game_state)
    if found is None:
        return Plan(None, "the engine does not track the game's logic state")
    progression, completed = found
    return plan_commands(progression.game, progression.state, completed, max_states=max_states)


def logic_key(game_state: Any) -> Hashable:
    """What the plan length depends on: the engine's logic facts and which required quests are
    completed (``None`` when the engine tracks no logic state). Equal keys, equal plans."""
    found = _progression(game_state)
    if found is None:
        return None
    progression, completed = found
    return frozenset(progression.state.facts), tuple(completed)


def plan_length(game_state: Any, *, max_states: int = MAX_STATES) -> PlanLength:
    """:func:`shortest_plan_length` from the engine's current ``GameState`` (its ``_game_progression``)."""
    found = _progression(game_state)
    if found is None:
        return PlanLength(None, "the engine does not track the game's logic state")
    progression, completed = found
    return shortest_plan_length(progression.game, progression.state, completed, max_states=max_states)


def progress_label(before: PlanLength, after: PlanLength) -> tuple[int, str | None]:
    """A step's progress label from the plan lengths before and after it: 1 iff the step won
    (``after.steps == 0``) or shortened the plan (``after.steps < before.steps``), else 0; the second
    value says why when a length is unknown (the label is then 0)."""
    if after.steps == 0:
        return 1, None
    if before.steps is None:
        return 0, f"no plan from the state before the step: {before.reason}"
    if after.steps is None:
        return 0, f"no plan from the state after the step: {after.reason}"
    return int(after.steps < before.steps), None
