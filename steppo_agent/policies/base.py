"""The policy interface every backend implements (vLLM in-process, OpenAI-compatible HTTP, transformers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from steppo_agent.records import SamplingConfig

__all__ = ["Generation", "Policy", "generate_abortable", "prefix_cache_stats"]


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
    tokenizer: Any  # a transformers PreTrainedTokenizerBase: renders prompts, decodes responses
    max_model_len: int  # prompt + response tokens the engine accepts
    wants_infos: bool
    """True when :meth:`generate` needs each episode's latest env ``info`` (the rollout then passes
    ``infos=``; e.g. the expert policy replays ``info["extra"]``); False for model backends."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int | None] | None = None,
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt.

        ``seeds[i]`` seeds prompt i's sampling (the rollout engine derives it from the episode and
        step, so results do not depend on batch composition). When ``seeds`` is None and
        ``sampling.seed = s``, prompt i uses ``s + i``; never one seed for every prompt (vLLM would
        return identical samples). ``infos[i]`` is prompt i's episode info, passed only to a policy
        whose ``wants_infos`` is true (model backends ignore it).
        """
        ...

    def close(self) -> None:
        """Release engines, servers, clients."""
        ...


def prefix_cache_stats(policy: object) -> tuple[int, int] | None:
    """``(queries, hits)``: the rollout engine's cumulative prefix-cache counters (in tokens), or None.

    An *optional* capability, outside the :class:`Policy` protocol so that third-party policies need
    not implement it: a policy that can say defines ``cache_stats() -> tuple[int, int] | None``
    (:class:`~steppo_agent.policies.vllm_policy.VLLMPolicy` reads ``vllm:prefix_cache_queries`` /
    ``vllm:prefix_cache_hits`` from the engine, :class:`~steppo_agent.policies.openai_policy.OpenAIPolicy`
    scrapes the servers' ``/metrics``). A policy without the method, or one whose backend cannot say,
    gives None. The counters may restart from 0 (an engine rebuilt after a failed weight reload).
    """
    method = getattr(policy, "cache_stats", None)
    if method is None:
        return None
    stats = method()
    return (int(stats[0]), int(stats[1])) if stats is not None else None


def generate_abortable(
    policy: Policy,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    seeds: Sequence[int | None] | None,
    abandoned: Callable[[int], bool],
) -> list[Generation]:
    """``policy.generate``, stopping early the prompts nobody waits for any more.

    ``abandoned(i)`` turns true (from any thread) once prompt i's answer is no longer wanted (its
    client left, the server is stopping). A policy that can stop a prompt midway sets
    ``can_abort = True`` and takes ``generate(..., abandoned=...)``
    (:class:`~steppo_agent.policies.vllm_policy.VLLMPolicy` aborts it in the engine between two decoding
    steps; its result is then an ``"error"`` generation). Like :func:`prefix_cache_stats`, an *optional*
    capability outside the :class:`Policy` protocol: any other policy generates every prompt to the end.
    """
    if getattr(policy, "can_abort", False):
        method: Callable[..., list[Generation]] = policy.generate
        return method(prompts, sampling, seeds, abandoned=abandoned)
    return policy.generate(prompts, sampling, seeds)
