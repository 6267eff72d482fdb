"""``steppo/MultiHopQA-v0``: multi-hop QA (HotpotQA, MuSiQue, 2WikiMultihopQA) with BM25 search.

Importing this package is light (no data is read until an environment is built).
"""

from __future__ import annotations

from steppo_envs.multihop.data import DATASETS, SPLITS, Paragraph, QAExample, load_dataset, pooled_corpus
from steppo_envs.multihop.env import SEARCH_TOOL, MultiHopQAConfig, MultiHopQAEnv, load_task_data

__all__ = [
    "DATASETS",
    "SEARCH_TOOL",
    "SPLITS",
    "MultiHopQAConfig",
    "MultiHopQAEnv",
    "Paragraph",
    "QAExample",
    "load_dataset",
    "load_task_data",
    "pooled_corpus",
]
