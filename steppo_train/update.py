"""One optimisation pass: minibatches of training units, packed into micro-batches by token budget.

A *unit* is what a policy-loss row is: one step for every algorithm except GSPO, whose unit is a whole
trajectory (all its steps, so the sequence ratio sees all its action tokens at once). Gradients of
micro-batches are accumulated with weights that make the minibatch loss exactly the loss of the
whole minibatch (row-mean losses weigh by rows, token-mean losses by tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor, nn

from steppo_train import losses as L
from steppo_train.batch import StepBatch
from steppo_train.config import TrainConfig
from steppo_train.models import (
    Critic,
    padded_width,
    response_token_stats,
    values_at_action_tokens,
    values_at_last_prompt_token,
)
from steppo_train.targets import RowTargets

__all__ = ["IterationData", "actor_loss", "behaviour_logprobs", "critic_loss", "make_units", "pack_units", "pad_rows", "row_policy_loss"]

_T = TypeVar("_T")

@dataclass
class IterationData:
    """What stays fixed during the epochs of one iteration."""

    batch: StepBatch
    old_logprobs: list[Tensor]
    targets: RowTargets
    ref_logprobs: list[Tensor] | None = None
    units: list[list[int]] = field(default_factory=list)
    behaviour_logprobs: list[Tensor] | None = None
    """Per row, the logprobs of the policy that sampled it (the records'), for the decoupled-PPO
    correction of stale rows (:func:`behaviour_logprobs`); None when every row is fresh (no correction:
    exactly the on-policy loss)."""


def behaviour_logprobs(old_logprobs: Sequence[Tensor], rollout_logprobs: Sequence[Sequence[float]],
                       staleness: Sequence[int]) -> list[Tensor] | None:
    """The behaviour policy's logprobs of each row: the recorded (rollout) logprobs for a stale row
    (``staleness > 0``) whose record has one per response token, else the row's proximal
    (``old_logprobs``) ones, so that its correction ``w = pi_prox / mu`` is exactly 1. None when no row
    is stale."""
    if not any(s > 0 for s in staleness):
        return None
    out: list[Tensor] = []
    for old, recorded, stale in zip(old_logprobs, rollout_logprobs, staleness, strict=True):
        usable = stale > 0 and len(recorded) == old.numel()
        out.append(torch.tensor(recorded, dtype=old.dtype) if usable else old)
    return out


def make_units(config: TrainConfig, batch: StepBatch) -> list[list[int]]:
    """Rows grouped into loss units: one row each, or (GSPO) all rows of a trajectory in step order."""
    if config.algo != "gspo":
        return [[r] for r in range(batch.num_rows)]
    by_traj: dict[int, list[int]] = {}
    for r in range(batch.num_rows):
        by_traj.setdefault(int(batch.traj_index[r]), []).append(r)
    return [sorted(rows, key=lambda r: int(batch.step_index[r])) for _, rows in sorted(by_traj.items())]


def pack_units(
    units: Sequence[Sequence[int]], batch: StepBatch, token_budget: int, pad_multiple: int = 1
) -> list[list[int]]:
    """Greedy packing of unit indices so each micro-batch's padded size (rows x longest row, rounded
    up to a multiple of ``pad_multiple``) fits ``token_budget``; a unit larger than the budget on its
    own gets its own micro-batch."""
    def row_len(r: int) -> int:
        return len(batch.prompt_ids[r]) + len(batch.response_ids[r])

    order = sorted(range(len(units)), key=lambda u: -max(row_len(r) for r in units[u]))
    packs: list[list[int]] = []
    current: list[int] = []
    rows, longest = 0, 0
    for u in order:
        n, m = len(units[u]), max(row_len(r) for r in units[u])
        if current and (rows + n) * padded_width(max(longest, m), pad_multiple) > token_budget:
            packs.append(current)
            current, rows, longest = [], 0, 0
        current.append(u)
        rows, longest = rows + n, max(longest, m)
    if current:
        packs.append(current)
    return packs


def pad_rows(rows: Sequence[Tensor], width: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D tensors into ``[R, W]`` plus a bool mask."""
    W = max([width or 0] + [int(t.numel()) for t in rows] + [1])
    device = rows[0].device if rows else None
    out = torch.zeros(len(rows), W, dtype=rows[0].dtype if rows else torch.float32, device=device)
    mask = torch.zeros(len(rows), W, dtype=torch.bool, device=device)
    for i, t in enumerate(rows):
        out[i, : t.numel()] = t
        mask[i, : t.numel()] = True
    return out, mask


def row_policy_loss(
    config: TrainConfig, targets: RowTargets, rows: Sequence[int], lp_new: Tensor, lp_old: Tensor, mask: Tensor,
    lp_behaviour: Tensor | None = None,
) -> tuple[Tensor, L.PolicyLossStats, bool]:
    """The clipped policy loss of step rows ``rows`` (every algorithm but gspo and sft), and whether it
    is a per-step mean (True: weigh micro-batches by rows) or a per-token mean (False: by tokens).

    | ratio | advantage | loss | used by |
    |---|---|---|---|
    | step  | one per step  | :func:`~steppo_train.losses.steppo_policy_loss` | steppo |
    | step  | one per token | :func:`~steppo_train.losses.step_ratio_token_advantage_loss` | steppo w/o step-GAE |
    | token | per token (a step's advantage broadcast, or token GAE) | :func:`~steppo_train.losses.ppo_token_loss` | ppo, steppo w/o step-IS, group baselines |

    ``lp_behaviour`` (stale rollouts): the decoupled-PPO correction, per step
    (:func:`~steppo_train.losses.step_behaviour_weights`) for step ratios, per token
    (:func:`~steppo_train.losses.token_behaviour_weights`) for token ratios, truncated at
    ``config.behaviour_weight_cap``; ``lp_old`` is then the proximal policy's logprobs.
    """
    cap = config.behaviour_weight_cap
    if config.uses_critic and config.step_ratio:
        w = None if lp_behaviour is None else L.step_behaviour_weights(lp_old, lp_behaviour, mask, cap)
        if targets.step_advantages is not None:
            adv = targets.step_advantages[torch.tensor(list(rows))].to(lp_new.device)
            pg, st = L.steppo_policy_loss(lp_new, lp_old, adv, mask, config.clip_low, config.clip_high, weights=w)
            return pg, st, True
        adv_tok = pad_rows([targets.token_advantages[r] for r in rows], lp_new.shape[1])[0].to(lp_new.device)
        pg, st = L.step_ratio_token_advantage_loss(lp_new, lp_old, adv_tok, mask, config.clip_low, config.clip_high,
                                                   weights=w)
        return pg, st, True
    adv_tok = pad_rows([targets.token_advantages[r] for r in rows], lp_new.shape[1])[0].to(lp_new.device)
    w = None if lp_behaviour is None else L.token_behaviour_weights(lp_old, lp_behaviour, mask, cap)
    pg, st = L.ppo_token_loss(lp_new, lp_old, adv_tok, mask, config.clip_low, config.clip_high, weights=w)
    return pg, st, False


def actor_loss(
    config: TrainConfig,
    actor: nn.Module,
    data: IterationData,
    unit_ids: Sequence[int],
    minibatch_units: int,
    minibatch_tokens: int,
) -> tuple[Tensor, dict[str, float]]:
    """The actor's weighted loss on one micro-batch (call ``.backward()`` on it)."""
    b = data.batch
    rows = [r for u in unit_ids for r in data.units[u]]
    want_entropy = config.entropy_coef > 0
    stats = response_token_stats(
        actor, [b.prompt_ids[r] for r in rows], [b.response_ids[r] for r in rows], with_entropy=want_entropy,
        pad_multiple=config.pad_multiple,
    )
    pos = {r: i for i, r in enumerate(rows)}
    new = stats.logprobs
    n_tokens = sum(int(t.numel()) for t in new)
    token_weight = n_tokens / max(1, minibatch_tokens)
    unit_weight = len(unit_ids) / max(1, minibatch_units)
    logged: dict[str, float] = {}

    if config.algo == "gspo":  # one row per trajectory: concatenate its steps' tokens
        lp_new, mask = pad_rows([torch.cat([new[pos[r]] for r in data.units[u]]) for u in unit_ids])
        lp_old = pad_rows([torch.cat([data.old_logprobs[r] for r in data.units[u]]) for u in unit_ids])[0].to(lp_new.device)
        step_adv = _needed(data.targets.step_advantages, "step advantages")
        adv = torch.stack([step_adv[data.units[u][0]] for u in unit_ids]).to(lp_new.device)
        w = None
        if data.behaviour_logprobs is not None:
            mu = pad_rows([torch.cat([data.behaviour_logprobs[r] for r in data.units[u]]) for u in unit_ids])[0]
            w = L.step_behaviour_weights(lp_old, mu.to(lp_new.device), mask, config.behaviour_weight_cap)
        pg, st = L.gspo_loss(lp_new, lp_old, adv, mask, config.clip_low, config.clip_high, weights=w)
        weight = unit_weight
    else:
        lp_new, mask = pad_rows(new)
        lp_old = pad_rows([data.old_logprobs[r] for r in rows], lp_new.shape[1])[0].to(lp_new.device)
        if config.algo == "sft":
            pg, st, weight = -L.masked_mean(lp_new, mask), None, token_weight
        else:
            mu = None
            if data.behaviour_logprobs is not None:
                mu = pad_rows([data.behaviour_logprobs[r] for r in rows], lp_new.shape[1])[0].to(lp_new.device)
            pg, st, per_step = row_policy_loss(config, data.targets, rows, lp_new, lp_old, mask, mu)
            weight = unit_weight if per_step else token_weight
    loss = pg * weight
    logged["losses/policy"] = float(pg.detach()) * weight
    if st is not None:
        logged["losses/clip_fraction"] = st.clip_fraction * token_weight
        logged["losses/approx_kl"] = st.approx_kl * token_weight
    if config.kl_coef > 0 and data.ref_logprobs is not None:
        lp_flat, m_flat = pad_rows(new)
        ref = pad_rows([data.ref_logprobs[r] for r in rows], lp_flat.shape[1])[0].to(lp_flat.device)
        kl = L.kl_penalty(lp_flat, ref, m_flat)
        loss = loss + config.kl_coef * kl * token_weight
        logged["losses/kl_ref"] = float(kl.detach()) * token_weight
    if want_entropy and stats.entropies is not None:
        ent, m = pad_rows(stats.entropies)
        entropy = L.masked_mean(ent, m)
        loss = loss - config.entropy_coef * entropy * token_weight
        logged["losses/entropy"] = float(entropy.detach()) * token_weight
    return loss, logged


def _needed(value: _T | None, what: str) -> _T:
    """``value``, which :func:`~steppo_train.targets.compute_targets` sets for this algorithm."""
    if value is None:
        raise RuntimeError(f"{what} missing from the targets: compute_targets sets them for this algorithm (a bug).")
    return value


def critic_loss(
    config: TrainConfig,
    critic: Critic,
    data: IterationData,
    rows: Sequence[int],
    minibatch_rows: int,
    minibatch_tokens: int,
) -> tuple[Tensor, dict[str, float]]:
    """The critic's weighted clipped value loss on one micro-batch of rows."""
    b = data.batch
    old_values, returns = data.targets.old_values, data.targets.returns
    if old_values is None or returns is None:
        raise RuntimeError("old values / returns missing from the targets: compute_targets sets them for critic algorithms (a bug).")
    if config.step_advantages:
        v = values_at_last_prompt_token(critic, [b.prompt_ids[r] for r in rows], pad_multiple=config.pad_multiple)
        idx = torch.tensor(list(rows))
        assert isinstance(old_values, Tensor) and isinstance(returns, Tensor)  # step targets: one value per row
        old, ret = old_values[idx].to(v.device), returns[idx].to(v.device)
        loss, st = L.value_loss(v, old, ret, torch.ones_like(v, dtype=torch.bool), config.value_clip)
        weight = len(rows) / max(1, minibatch_rows)
    else:
        vs = values_at_action_tokens(critic, [b.prompt_ids[r] for r in rows], [b.response_ids[r] for r in rows],
                                     pad_multiple=config.pad_multiple)
        v, mask = pad_rows(vs)
        old = pad_rows([old_values[r] for r in rows], v.shape[1])[0].to(v.device)
        ret = pad_rows([returns[r] for r in rows], v.shape[1])[0].to(v.device)
        loss, st = L.value_loss(v, old, ret, mask, config.value_clip)
        weight = int(mask.sum()) / max(1, minibatch_tokens)
    return loss * weight, {"losses/value": float(loss.detach()) * weight, "losses/value_clip_fraction": st.clip_fraction * weight}
