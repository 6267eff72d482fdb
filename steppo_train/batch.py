"""Turn trajectory records into the tensors the trainer consumes — token ids exactly as sampled.

Rows are *steps*: row ``r`` is step ``step_index[r]`` of trajectory ``traj_index[r]``, with its exact
``prompt_ids`` / ``response_ids`` and the logprobs the rollout policy sampled them with. Step-indexed
tensors are ``[trajectories, max_steps]``, left-aligned, with ``step_mask`` marking real steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steppo_agent.records import Trajectory

__all__ = ["StepBatch", "build_step_batch"]


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


@dataclass
class StepBatch:
    """A batch of step rows plus step-indexed views.

    Attributes:
        prompt_ids, response_ids: per row, exactly as recorded.
        rollout_logprobs: per row, the sampled-token logprobs recorded by the rollout policy.
        traj_index, step_index: per row, where the row sits in the ``[B, T]`` tensors.
        rewards, step_mask: ``[B, T]`` float rewards and bool mask of real steps.
        terminated, truncated: ``[B]`` bool, how each trajectory ended.
        group_ids: ``[B]`` int64, trajectories sharing a task (for group baselines).
        anchor_ids: ``[B, T]`` int64 hash of each step's observation (GiGPO's step groups).
        returns: ``[B]`` sum of rewards.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: list[list[float]]
    traj_index: torch.Tensor
    step_index: torch.Tensor
    rewards: torch.Tensor
    step_mask: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    group_ids: torch.Tensor
    anchor_ids: torch.Tensor
    returns: torch.Tensor

    @property
    def num_rows(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_trajectories(self) -> int:
        return int(self.rewards.shape[0])

    @classmethod
    def from_rows(cls, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> StepBatch:
        """A batch of one-step trajectories from raw id lists (benchmarks, offline experiments):
        zero rewards and rollout logprobs, each row its own terminated trajectory and group."""
        n = len(prompt_ids)
        return cls(
            prompt_ids=prompt_ids, response_ids=response_ids, rollout_logprobs=[[0.0] * len(r) for r in response_ids],
            traj_index=torch.arange(n), step_index=torch.zeros(n, dtype=torch.int64), rewards=torch.zeros(n, 1),
            step_mask=torch.ones(n, 1, dtype=torch.bool), terminated=torch.ones(n, dtype=torch.bool),
            truncated=torch.zeros(n, dtype=torch.bool), group_ids=torch.arange(n),
            anchor_ids=torch.zeros(n, 1, dtype=torch.int64), returns=torch.zeros(n),
        )

    def rows_to_steps(self, per_row: torch.Tensor) -> torch.Tensor:
        """Scatter a ``[rows]`` tensor into ``[B, T]`` (zeros where there is no step)."""
        out = torch.zeros(self.rewards.shape, dtype=per_row.dtype)
        out[self.traj_index, self.step_index] = per_row
        return out

    def steps_to_rows(self, per_step: torch.Tensor) -> torch.Tensor:
        """Gather a ``[B, T]`` tensor into ``[rows]``."""
        return per_step[self.traj_index, self.step_index]


def build_step_batch(trajectories: Sequence[Trajectory]) -> StepBatch:
    """Build a :class:`StepBatch` with one row per recorded step (a step with an empty response,
    e.g. a failed server call, keeps its row: it has a value and a reward, and no action tokens)."""
    if not trajectories:
        raise ValueError("no trajectories to train on: check the rollout output or the --from-trajectories files.")
    B = len(trajectories)
    T = max(1, max(len(t.steps) for t in trajectories))
    rewards = torch.zeros(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    anchors = torch.zeros(B, T, dtype=torch.int64)
    group_names: dict[str, int] = {}
    groups = torch.zeros(B, dtype=torch.int64)
    prompt_ids: list[list[int]] = []
    response_ids: list[list[int]] = []
    logprobs: list[list[float]] = []
    traj_index: list[int] = []
    step_index: list[int] = []
    for b, traj in enumerate(trajectories):
        groups[b] = group_names.setdefault(traj.group_id, len(group_names))
        for t, step in enumerate(traj.steps):
            rewards[b, t] = float(step.reward)
            mask[b, t] = True
            anchors[b, t] = _hash64(step.observation)
            prompt_ids.append(list(step.prompt_ids))
            response_ids.append(list(step.response_ids))
            logprobs.append(list(step.response_logprobs))
            traj_index.append(b)
            step_index.append(t)
    if not prompt_ids:
        raise ValueError("the trajectories hold no steps to train on.")
    return StepBatch(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        rollout_logprobs=logprobs,
        traj_index=torch.tensor(traj_index, dtype=torch.int64),
        step_index=torch.tensor(step_index, dtype=torch.int64),
        rewards=rewards,
        step_mask=mask,
        terminated=torch.tensor([t.terminated for t in trajectories], dtype=torch.bool),
        truncated=torch.tensor([t.truncated for t in trajectories], dtype=torch.bool),
        group_ids=groups,
        anchor_ids=anchors,
        returns=(rewards * mask).sum(dim=1),
    )
