"""Rewards and metrics of ``steppo/PaperSearch-v0`` (pure functions and small callables).

The step reward is the sum, over the step's tool calls, of

* the :class:`RewardFn` score of the papers a ``select`` call newly adds to the answer list;
* ``-repeat_penalty`` (0.5) for a search that repeats an earlier query or a ``related`` on a paper
  already expanded; ``-unknown_id_penalty`` (0.5) for a ``related`` on an id the agent has not
  seen and for a ``select`` call naming ids it has not seen (once per call);
* ``-invalid_penalty`` (0 by default) for a malformed action.

``finish`` itself earns 0: there is no terminal bonus, so an episode's return is the RewardFn total
minus the penalties (with :class:`GoldReward`, recall minus ``0.1`` per wrong paper minus penalties).

Two :class:`RewardFn` s are provided: :class:`GoldReward` (from gold labels) and
:class:`JudgeReward` (from a user-supplied relevance judge, e.g. an LLM selector prompt, as PaSa
rewards its crawler with its selector).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from steppo_envs.paper_search.data import Paper, PaperTask

__all__ = ["GoldReward", "JudgeReward", "RelevanceJudge", "RewardFn", "f1", "selection_metrics"]

RelevanceJudge = Callable[[str, Paper], float]
"""``judge(question, paper) -> relevance`` in [0, 1] (values outside are clipped, non-finite count as 0)."""


@runtime_checkable
class RewardFn(Protocol):
    """Scores the papers that one ``select`` call newly adds to the answer list (never empty)."""

    def __call__(self, task: PaperTask, papers: Sequence[Paper]) -> float:
        """The reward for adding ``papers`` to the answer of ``task``."""
        ...


@dataclass(frozen=True)
class GoldReward:
    """``+1/|gold|`` per newly selected gold paper, ``-wrong_penalty`` per newly selected other paper.

    Selecting every gold paper thus sums to 1 (= Recall@all). The flat ``0.1`` default makes a wrong
    pick cost about as much as one gold paper of the largest answer sets (|gold| up to 11) is worth,
    and a tenth of a single-paper answer: precision matters, but a model is not scared off
    exploratory selections the way ``-1/|gold|`` (a full point on the 65% single-gold questions) would.
    """

    wrong_penalty: float = 0.1

    def __call__(self, task: PaperTask, papers: Sequence[Paper]) -> float:
        gold = set(task.gold_ids)
        hits = sum(1 for p in papers if p.id in gold)
        return hits / len(gold) - self.wrong_penalty * (len(papers) - hits)


@dataclass(frozen=True)
class JudgeReward:
    """Scores new papers with a relevance judge instead of gold labels (PaSa's selector-as-reward).

    Each newly selected paper earns ``gain * s - wrong_penalty * (1 - s)`` with
    ``s = clip(judge(task.question, paper), 0, 1)``: a paper judged fully relevant earns ``gain``, one
    judged irrelevant costs ``wrong_penalty``, as in :class:`GoldReward`.
    """

    judge: RelevanceJudge
    gain: float = 1.0
    wrong_penalty: float = 0.1

    def __call__(self, task: PaperTask, papers: Sequence[Paper]) -> float:
        total = 0.0
        for p in papers:
            s = float(self.judge(task.question, p))
            s = min(1.0, max(0.0, s)) if math.isfinite(s) else 0.0
            total += self.gain * s - self.wrong_penalty * (1.0 - s)
        return total


def f1(precision: float, recall: float) -> float:
    """Harmonic mean (0 when both are 0)."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def selection_metrics(
    selected: Sequence[str], gold: Collection[str], surfaced: Collection[str] = ()
) -> dict[str, float]:
    """Metrics of an answer list against the gold papers.

    ``recall_all`` (Recall@all: the share of gold papers selected), ``precision`` (the share of
    selected papers that are gold; 0 for an empty list), ``f1_all`` (their F1), ``surfaced_recall``
    (the share of gold papers any tool showed), ``n_selected``.
    """
    gold_set = set(gold)
    chosen = set(selected)
    hits = len(chosen & gold_set)
    recall = hits / len(gold_set) if gold_set else 0.0
    precision = hits / len(chosen) if chosen else 0.0
    surfaced_hits = len(set(surfaced) & gold_set)
    return {
        "recall_all": recall,
        "precision": precision,
        "f1_all": f1(precision, recall),
        "surfaced_recall": surfaced_hits / len(gold_set) if gold_set else 0.0,
        "n_selected": float(len(chosen)),
    }
