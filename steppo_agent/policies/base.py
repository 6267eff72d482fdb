"""The policy interface every backend implements (vLLM in-process, OpenAI-compatible HTTP, transformers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from steppo_agent.records import SamplingConfig

__all__ = ["Generation", "Policy"]


@dataclass(frozen=True)
class Generation:
    """One sampled response: token ids, their sampled logprobs, the text and why it stopped."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" | "length" | "error"


@runtime_checkable
class Policy(Protocol):
    """Prompt token ids in, sampled response token ids + logprobs out, for a batch."""

    backend: str
    model: str
    version: int

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig) -> list[Generation]:
        """Sample one response per prompt. With ``sampling.seed = s``, prompt i uses seed ``s + i``."""
        ...

    def close(self) -> None:
        """Release engines, servers, clients."""
        ...
