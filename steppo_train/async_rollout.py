"""Rollout overlapped with training: a background collector at most ``max_staleness`` batches ahead.

With ``async_rollout`` the trainer takes iteration ``i``'s batch from a :class:`RolloutWorker`, which
then already samples the batches of iterations ``i + 1 ... i + max_staleness`` on one background
thread (one collection at a time, in iteration order) with the weights the rollout policy has when
each collection starts, while the trainer updates on batch ``i``. Before weights are pushed (and
before an evaluation) the trainer calls :meth:`RolloutWorker.drain`: it waits for the collection in
flight, so the engine never receives weights while it generates. The order of one iteration:

1. ``take(i)``: queue the collection of iteration ``i + max_staleness`` (with the weights of version
   ``v_i``, pushed at the end of iteration ``i - 1``), then wait for batch ``i``;
2. score / values / advantages / update on batch ``i`` (the engine samples meanwhile);
3. ``drain()``: wait for the queued collection(s) to finish;
4. push version ``v_i + 1``; evaluate; log; checkpoint.

Batch ``i`` is therefore sampled by version ``max(v_start, v_start + i - max_staleness)`` (relative to
the iteration the run (re)started at): it lags the weights it updates by at most ``max_staleness``
versions, deterministically (not by timing). ``max_staleness=0`` collects batch ``i`` in the
worker thread and waits for it at once: the synchronous loop.

Every iteration keeps its reset and sampling seeds (:func:`~steppo_train.rollout_side.collect`), so
which episodes are played never depends on the overlap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steppo_agent.policies.base import prefix_cache_stats
from steppo_agent.policies.vllm_metrics import hit_rate
from steppo_agent.records import Trajectory
from steppo_train.config import TrainConfig
from steppo_train.rollout_side import collect

if TYPE_CHECKING:
    import torch

    from steppo_agent.policies.base import Policy

__all__ = ["CollectedBatch", "RolloutWorker", "collect_batch", "row_staleness", "staleness_metrics"]


@dataclass
class CollectedBatch:
    """One iteration's episodes and what the collection measured.

    Attributes:
        trajectories: the episodes (as :func:`~steppo_train.rollout_side.collect` returns them).
        seconds: the collection's own wall time (in the background with ``async_rollout``).
        prefix_cache_hit_rate: delta hits / delta queries of the engine's prefix cache over this
            collection; None when the backend cannot say (:func:`~steppo_agent.policies.base.prefix_cache_stats`).
    """

    trajectories: list[Trajectory]
    seconds: float
    prefix_cache_hit_rate: float | None = None


def collect_batch(config: TrainConfig, policy: Policy, iteration: int, out_dir: Path) -> CollectedBatch:
    """Collect iteration ``iteration``'s episodes, reading the prefix-cache counters before and after."""
    before = prefix_cache_stats(policy)
    started = time.perf_counter()
    trajectories = collect(config, policy, iteration, out_dir)
    seconds = time.perf_counter() - started
    return CollectedBatch(trajectories, seconds, hit_rate(before, prefix_cache_stats(policy)))


class RolloutWorker:
    """Collects batches on one background thread, up to ``ahead`` iterations ahead of the trainer.

    Args:
        collect_fn: iteration -> its batch (e.g. :func:`collect_batch` bound to a config and policy).
        ahead: how many iterations beyond the one being trained may be collected (``max_staleness``).
        end: the first iteration not to collect (``config.iterations``).
    """

    def __init__(self, collect_fn: Callable[[int], CollectedBatch], ahead: int, end: int) -> None:
        self._collect = collect_fn
        self.ahead, self.end = ahead, end
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steppo-rollout")
        self._futures: dict[int, Future[CollectedBatch]] = {}

    def take(self, iteration: int) -> CollectedBatch:
        """Queue the collections of iterations ``iteration ... iteration + ahead`` not queued yet (with
        the weights the policy has now), then wait for ``iteration``'s batch (re-raising its error)."""
        for j in range(iteration, min(iteration + self.ahead + 1, self.end)):
            if j not in self._futures:
                self._futures[j] = self._executor.submit(self._collect, j)
        if iteration not in self._futures:  # beyond ``end``: collect it anyway, in order
            self._futures[iteration] = self._executor.submit(self._collect, iteration)
        return self._futures.pop(iteration).result()

    def drain(self) -> float:
        """Wait until no collection is queued or running (call before pushing weights or evaluating);
        return the seconds waited. Errors surface in :meth:`take`."""
        started = time.perf_counter()
        wait(list(self._futures.values()))
        return time.perf_counter() - started

    def close(self) -> None:
        """Cancel queued collections, wait for the running one, stop the thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()

    def __enter__(self) -> RolloutWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def row_staleness(trajectories: Sequence[Trajectory], traj_index: torch.Tensor, step_index: torch.Tensor,
                  version: int | None) -> list[int]:
    """Per batch row (``traj_index`` / ``step_index`` of a :class:`~steppo_train.batch.StepBatch`): how many
    versions the weights being updated (``version``) are ahead of the ones that sampled the step,
    ``version - step.policy_version`` (0 for records without a version, and for every row when
    ``version`` is None: offline training)."""
    if version is None:
        return [0] * len(traj_index)
    out = []
    for t, s in zip(traj_index.tolist(), step_index.tolist(), strict=True):
        sampled = trajectories[int(t)].steps[int(s)].policy_version
        out.append(max(0, version - sampled) if sampled is not None else 0)
    return out


def staleness_metrics(staleness: Sequence[int]) -> dict[str, float]:
    """``rollout/staleness_max`` and ``rollout/staleness_mean`` over the batch's step rows (empty: none)."""
    if not staleness:
        return {}
    return {"rollout/staleness_max": float(max(staleness)), "rollout/staleness_mean": sum(staleness) / len(staleness)}
