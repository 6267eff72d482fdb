"""Per-row training targets for each algorithm: advantages (and critic returns) from a :class:`StepBatch`.

This is the only place where the algorithms differ in *credit assignment*; the maths lives in
:mod:`steppo_train.advantages`.

| algo          | advantage                                                  | granularity          |
|---------------|------------------------------------------------------------|----------------------|
| steppo        | step GAE over the step timeline, whitened with a floor      | one per step         |
| ppo           | token GAE over concatenated action tokens, whitened (floor) | one per action token |
| grpo, gspo    | trajectory return normalised in its group                  | one per trajectory   |
| rloo          | return minus the leave-one-out group mean                  | one per trajectory   |
| reinforce_pp  | discounted return-to-go, batch-normalised                  | one per step         |
| gigpo         | group advantage + anchor-state step advantage              | one per step         |
| sft           | none (maximum likelihood on the action tokens)             | -                    |

For steppo and ppo, ``advantage_level`` picks the row (step GAE or token GAE) whatever the algorithm,
so the paper's ablations are configurations: see :class:`~steppo_train.config.TrainConfig`. Critic
advantages are whitened with a floor (:func:`~steppo_train.advantages.whiten_with_floor`, ``whiten_floor``):
a batch whose returns barely vary gets small advantages, not unit-scale critic noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from steppo_train import advantages as adv
from steppo_train.batch import StepBatch
from steppo_train.config import TrainConfig

__all__ = ["RowTargets", "compute_targets", "token_layout"]


@dataclass
class RowTargets:
    """Advantages per row (one tensor of ``len(response)`` entries each) and critic targets.

    ``step_advantages`` is ``[rows]`` when the algorithm has one advantage per step (steppo,
    reinforce_pp, gigpo, grpo, rloo, gspo); ``returns`` / ``old_values`` are ``[rows]`` for steppo and
    per-token lists for ppo; ``None`` for critic-free algorithms.
    """

    token_advantages: list[Tensor]
    step_advantages: Tensor | None
    returns: Tensor | list[Tensor] | None
    old_values: Tensor | list[Tensor] | None


def token_layout(batch: StepBatch) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """``step_index_of_token`` ``[B, L]`` over each trajectory's concatenated action tokens, and for
    each row ``(b, start, length)`` locating its tokens in that layout."""
    lengths = [len(r) for r in batch.response_ids]
    per_traj: list[int] = [0] * batch.num_trajectories
    where: list[tuple[int, int, int]] = []
    order = sorted(range(batch.num_rows), key=lambda r: (int(batch.traj_index[r]), int(batch.step_index[r])))
    spans: dict[int, tuple[int, int, int]] = {}
    for r in order:
        b = int(batch.traj_index[r])
        spans[r] = (b, per_traj[b], lengths[r])
        per_traj[b] += lengths[r]
    where = [spans[r] for r in range(batch.num_rows)]
    L = max(1, max(per_traj))
    idx = torch.full((batch.num_trajectories, L), -1, dtype=torch.int64)
    for r, (b, start, n) in enumerate(where):
        idx[b, start : start + n] = int(batch.step_index[r])
    return idx, where


def _per_row(batch: StepBatch, step_values: Tensor) -> list[Tensor]:
    lengths = [len(r) for r in batch.response_ids]
    rows = batch.steps_to_rows(step_values)
    return [rows[i].expand(n).clone() for i, n in enumerate(lengths)]


def compute_targets(
    config: TrainConfig,
    batch: StepBatch,
    *,
    step_values: Tensor | None = None,
    token_values: list[Tensor] | None = None,
) -> RowTargets:
    """Advantages for ``config.algo`` (critic algorithms: ``step_values`` ``[rows]`` when
    ``config.step_advantages``, else ``token_values``, one tensor per row)."""
    algo = config.algo
    mask = batch.step_mask
    if config.uses_critic and config.step_advantages:
        if step_values is None:
            raise ValueError(f"{algo} with advantage_level='step' needs the critic's step values.")
        V = batch.rows_to_steps(step_values.detach().float())
        A, R = adv.step_gae(
            batch.rewards, V, mask, config.gamma, config.lam,
            terminated=batch.terminated, truncated_bootstrap=config.truncated_bootstrap,
        )
        if config.whiten_advantages:
            A = adv.whiten_with_floor(A, mask, adv.discounted_returns(batch.rewards, mask, config.gamma), config.whiten_floor)
        return RowTargets(_per_row(batch, A), batch.steps_to_rows(A), batch.steps_to_rows(R), step_values.detach())
    if config.uses_critic:
        if token_values is None:
            raise ValueError(f"{algo} with advantage_level='token' needs the critic's token values.")
        idx, where = token_layout(batch)
        Vt = torch.zeros(idx.shape)
        for r, (b, start, n) in enumerate(where):
            Vt[b, start : start + n] = token_values[r].detach().float()
        tmask = idx >= 0
        rewards_t = adv.place_step_rewards(batch.rewards, idx)
        A, R = adv.token_gae(
            rewards_t, Vt, tmask, config.gamma, config.lam,
            terminated=batch.terminated, truncated_bootstrap=config.truncated_bootstrap,
        )
        if config.whiten_advantages:
            A = adv.whiten_with_floor(A, tmask, adv.discounted_returns(rewards_t, tmask, config.gamma), config.whiten_floor)
        toks = [A[b, s : s + n].clone() for b, s, n in where]
        rets = [R[b, s : s + n].clone() for b, s, n in where]
        return RowTargets(toks, None, rets, [v.detach() for v in token_values])
    if algo in ("grpo", "gspo", "rloo"):
        fn = adv.rloo_advantages if algo == "rloo" else adv.grpo_advantages
        per_traj = fn(batch.returns, batch.group_ids)
        A = per_traj[:, None].expand_as(batch.rewards) * mask
    elif algo == "reinforce_pp":
        A = adv.reinforce_pp_advantages(batch.rewards, mask, config.gamma)
    elif algo == "gigpo":
        A = adv.gigpo_advantages(batch.rewards, mask, batch.group_ids, batch.anchor_ids, config.gamma)
    elif algo == "sft":
        A = torch.zeros_like(batch.rewards)
    else:  # pragma: no cover - validated by TrainConfig
        raise ValueError(f"unknown algo {algo!r}")
    return RowTargets(_per_row(batch, A), batch.steps_to_rows(A), None, None)
