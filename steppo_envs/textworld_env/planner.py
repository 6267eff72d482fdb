"""A planner over a TextWorld game's own logic, for games whose ``.json`` carries no walkthrough.

TextWorld's expert (``policy_commands``) replays the actions recorded with each quest; a game whose
quests give only a win *condition* (``Event(conditions=...)``, as a hand-made ``GameMaker`` game
often does) and no walkthrough in its metadata leaves it empty. :func:`plan_commands` then searches
the game's logic (the same rules TextWorld derives the admissible commands from): greedy best-first
over logic states, ordered by the number of quests still to complete, then by depth, skipping states
where a quest fails, until every non-optional quest's win condition has held. The commands are
generated the way the admissible commands are, so the engine accepts them. The search is
deterministic (actions are tried in sorted order) and stops after ``max_states`` distinct states.

Nothing here imports textworld at module level; the objects come from the engine's game state
(``state["_game_progression"]``), which TextWorld fills when commands or quests are tracked.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_STATES", "Plan", "plan_commands", "plan_from_game_state"]

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


def _pending(done: tuple[bool, ...]) -> int:
    return sum(not d for d in done)


def plan_commands(game: Any, state: Any, completed: Sequence[bool] | None = None, *, max_states: int = MAX_STATES) -> Plan:
    """Commands that win ``game`` from the logic ``state`` (a ``textworld.logic.State``).

    Args:
        game: the ``textworld.Game`` (its quests, knowledge base and names).
        state: the logic state to start from (not modified).
        completed: per required quest (non-optional, with a win event, in ``game.quests`` order),
            whether it has been completed already; ``None`` = none.
        max_states: give up after this many distinct states.
    """
    quests = [q for q in game.quests if q.win_events and not q.optional]
    if not quests:
        return Plan(None, "the game has no quest with a win condition")
    fails = [e for q in game.quests if not q.optional for e in q.fail_events]
    rules = list(game.kb.rules.values())
    constants = game.kb.types.constants_mapping
    done, failed = _status(state, tuple(completed or (False,) * len(quests)), quests, fails)
    if failed:
        return Plan(None, "a quest of the game has already failed")
    if all(done):
        return Plan(())
    seen = {(frozenset(state.facts), done)}
    tie = itertools.count()
    heap: list[tuple[int, int, int, Any, tuple[bool, ...], tuple[Any, ...]]] = [(_pending(done), 0, next(tie), state, done, ())]
    while heap:
        _, depth, _, current, current_done, path = heapq.heappop(heap)
        for action in sorted(current.all_applicable_actions(rules, constants), key=str):
            child = current.copy()
            child.apply(action)
            child_done, child_failed = _status(child, current_done, quests, fails)
            if child_failed:
                continue
            if all(child_done):
                return Plan(tuple(_commands(game, (*path, action))))
            key = (frozenset(child.facts), child_done)
            if key in seen:
                continue
            if len(seen) >= max_states:
                return Plan(None, f"no winning command sequence was found within {max_states} game states")
            seen.add(key)
            heapq.heappush(heap, (_pending(child_done), depth + 1, next(tie), child, child_done, (*path, action)))
    return Plan(None, "no command sequence reaches the win condition")


def _commands(game: Any, actions: Sequence[Any]) -> list[str]:
    from textworld.generator.inform7 import Inform7Game

    return [str(c) for c in Inform7Game(game).gen_commands_from_actions(list(actions))]


def plan_from_game_state(game_state: Any, *, max_states: int = MAX_STATES) -> Plan:
    """:func:`plan_commands` from the engine's current ``GameState`` (its ``_game_progression``)."""
    progression = game_state.get("_game_progression") if game_state is not None else None
    if progression is None:
        return Plan(None, "the engine does not track the game's logic state")
    game = progression.game
    by_quest = {id(qp.quest): qp.completed for qp in progression.quest_progressions}
    completed = [bool(by_quest.get(id(q), False)) for q in game.quests if q.win_events and not q.optional]
    return plan_commands(game, progression.state, completed, max_states=max_states)
