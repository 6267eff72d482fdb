"""The per-iteration metrics that describe the batch itself: episode outcomes, its size, how it was
collected (time, prefix-cache hits, staleness). What the update did is in :mod:`steppo_train.diagnostics`."""

from __future__ import annotations

from steppo_agent.analysis import summarize
from steppo_agent.records import Trajectory
from steppo_train.async_rollout import CollectedBatch, staleness_metrics
from steppo_train.batch import StepBatch

__all__ = ["batch_metrics", "rollout_metrics"]


def rollout_metrics(collected: CollectedBatch, staleness: list[int] | None) -> dict[str, float]:
    """The collection's own time, the prefix-cache hit rate when the backend gives one, and the
    staleness of the batch's steps (``rollout/staleness_max`` / ``_mean``) when versions are known."""
    metrics = {"time/rollout_collect_s": collected.seconds}
    if collected.prefix_cache_hit_rate is not None:
        metrics["rollout/prefix_cache_hit_rate"] = collected.prefix_cache_hit_rate
    return {**metrics, **staleness_metrics(staleness or [])}


def batch_metrics(trajectories: list[Trajectory], batch: StepBatch) -> dict[str, float]:
    """Episode outcomes (``charts/``) and the batch's size (``rollout/``)."""
    metrics = summarize(trajectories).as_metrics("charts")
    metrics["rollout/steps"] = float(batch.num_rows)
    metrics["rollout/response_tokens"] = float(sum(len(r) for r in batch.response_ids))
    metrics["rollout/invalid_rate"] = metrics["charts/invalid_rate"]
    metrics["rollout/truncated_rate"] = float(batch.truncated.float().mean())
    return metrics
