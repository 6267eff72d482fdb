"""``steppo/PaperSearch-v0``: offline academic paper search over 154k ML papers (see docs/paper_search.md).

Importing this package is light: it re-exports the public names lazily, so nothing reads the corpus
or builds an index until an environment (or :func:`~steppo_envs.paper_search.data.load_resources`)
asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steppo_envs.paper_search.data import (
        Paper,
        PaperCorpus,
        PaperSearchResources,
        PaperTask,
        load_tasks,
        split_of,
    )
    from steppo_envs.paper_search.env import PaperSearchConfig, PaperSearchEnv
    from steppo_envs.paper_search.reward import GoldReward, JudgeReward, RewardFn, selection_metrics

__all__ = [
    "GoldReward",
    "JudgeReward",
    "Paper",
    "PaperCorpus",
    "PaperSearchConfig",
    "PaperSearchEnv",
    "PaperSearchResources",
    "PaperTask",
    "RewardFn",
    "load_tasks",
    "selection_metrics",
    "split_of",
]

_WHERE = {
    "Paper": "data",
    "PaperCorpus": "data",
    "PaperSearchResources": "data",
    "PaperTask": "data",
    "load_tasks": "data",
    "split_of": "data",
    "PaperSearchConfig": "env",
    "PaperSearchEnv": "env",
    "GoldReward": "reward",
    "JudgeReward": "reward",
    "RewardFn": "reward",
    "selection_metrics": "reward",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"steppo_envs.paper_search.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'steppo_envs.paper_search' has no attribute {name!r}")
