"""Advantage estimators: small pure torch functions over step-indexed tensors.

Conventions shared by every function here:

* Step tensors are ``[B, T]`` (``B`` trajectories, ``T`` steps), **left-aligned**: step ``t`` of
  trajectory ``b`` is at ``[b, t]`` and the real steps of a trajectory are ``0 .. n_b - 1``; the
  rest is padding. ``mask`` is a bool (or 0/1 float) tensor of the same shape, true on real steps.
* Token tensors for :func:`token_gae` are ``[B, L]`` over the concatenated *action* tokens of each
  trajectory (observation / prompt tokens are simply not in the tensor), also left-aligned.
* Outputs are zero outside the mask. Nothing is whitened unless the estimator's formula says so.
* ``group_ids`` (one per trajectory) may be an int tensor or any sequence of hashable values
  (e.g. the string :attr:`steppo_agent.records.Trajectory.group_id`).
* Standard deviations: :func:`whiten` uses the **biased** (population, divide-by-``n``) std;
  :func:`grpo_advantages` and the step groups of :func:`gigpo_advantages` use the **unbiased**
  (Bessel, divide-by-``n - 1``) std as in DeepSeekMath / TRL; a group of size 1 gets advantage 0.

The formulas are collected in ``docs/algorithms.md``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "TruncatedBootstrap",
    "broadcast_to_tokens",
    "discounted_returns",
    "gigpo_advantages",
    "group_index",
    "grpo_advantages",
    "place_step_rewards",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "step_gae",
    "token_gae",
    "whiten",
    "whiten_with_floor",
]

TruncatedBootstrap = Literal["last_value", "zero"]
"""How a truncated trajectory without an explicit bootstrap value is closed:
``"last_value"`` uses ``V`` of its last real step as the value of the unseen next state;
``"zero"`` treats it like a terminal state (``V = 0``)."""

GroupIds = Tensor | Sequence[Hashable]


def _bool_mask(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def group_index(group_ids: GroupIds, device: torch.device | None = None) -> Tensor:
    """Map arbitrary group ids to dense ``int64`` indices ``0 .. G-1`` (first-seen order).

    Accepts an int tensor or any sequence of hashable values (strings, ints, tuples).
    """
    if isinstance(group_ids, Tensor):
        _, inverse = torch.unique(group_ids.reshape(-1), return_inverse=True)
        return inverse.reshape(group_ids.shape).to(device or group_ids.device)
    seen: dict[Hashable, int] = {}
    dense = [seen.setdefault(g, len(seen)) for g in group_ids]
    return torch.tensor(dense, dtype=torch.int64, device=device)


def _group_stats(values: Tensor, index: Tensor, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element (group mean, group std, group size) for 1-D ``values`` grouped by dense ``index``.

    The std of a group of size 1 is 0 (the caller zeroes those advantages anyway).
    """
    n_groups = int(index.max().item()) + 1 if index.numel() else 0
    zeros = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    count = zeros.index_add(0, index, torch.ones_like(values))
    total = zeros.index_add(0, index, values)
    mean = total / count.clamp_min(1)
    sq_dev = zeros.index_add(0, index, (values - mean[index]) ** 2)
    denom = (count - 1).clamp_min(1) if unbiased else count.clamp_min(1)
    std = (sq_dev / denom).sqrt()
    return mean[index], std[index], count[index]


def _gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
    terminated: Tensor | None,
    bootstrap_values: Tensor | None,
    truncated_bootstrap: TruncatedBootstrap,
) -> tuple[Tensor, Tensor]:
    """GAE along the last axis of left-aligned ``[B, T]`` tensors (shared by step and token GAE)."""
    m = _bool_mask(mask)
    mf = m.to(values.dtype)
    batch, length = rewards.shape
    values = values * mf
    rewards = rewards * mf
    lengths = m.sum(dim=1)
    last = (lengths - 1).clamp_min(0)
    rows = torch.arange(batch, device=values.device)
    if terminated is None:
        if bootstrap_values is not None:
            raise ValueError("bootstrap_values is only used for truncated rows: pass terminated= as well.")
        terminated = torch.ones(batch, dtype=torch.bool, device=values.device)
    else:
        terminated = _bool_mask(terminated.to(values.device))
    if bootstrap_values is not None:
        tail = bootstrap_values.to(values)
    elif truncated_bootstrap == "last_value":
        tail = values[rows, last]
    elif truncated_bootstrap == "zero":
        tail = torch.zeros(batch, dtype=values.dtype, device=values.device)
    else:
        raise ValueError(f"truncated_bootstrap must be 'last_value' or 'zero', not {truncated_bootstrap!r}.")
    tail = torch.where(terminated, torch.zeros_like(tail), tail)
    next_values = torch.cat([values[:, 1:], values.new_zeros(batch, 1)], dim=1)
    next_mask = torch.cat([m[:, 1:], m.new_zeros(batch, 1)], dim=1)
    is_last = m & ~next_mask
    next_values = torch.where(is_last, tail[:, None].expand(batch, length), next_values)
    deltas = (rewards + gamma * next_values - values) * mf
    advantages = torch.zeros_like(deltas)
    running = values.new_zeros(batch)
    for t in range(length - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * running * next_mask[:, t].to(values.dtype)
        advantages[:, t] = running
    advantages = advantages * mf
    returns = (advantages + values) * mf
    return advantages, returns


def step_gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
    *,
    terminated: Tensor | None = None,
    bootstrap_values: Tensor | None = None,
    truncated_bootstrap: TruncatedBootstrap = "last_value",
) -> tuple[Tensor, Tensor]:
    """StepPO's GAE over the step timeline (one value per step: the critic at the last prompt token).

    ``delta_t = r_t + gamma * V_{t+1} - V_t``;  ``A_t = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}``
    (the sum stops at the trajectory's last real step); ``returns_t = A_t + V_t``. No whitening.

    ``V_{n}`` (the state after the last real step ``n - 1``) is:

    * ``0`` when ``terminated[b]`` is true (``terminated=None`` means every trajectory terminated);
    * ``bootstrap_values[b]`` for a truncated trajectory when ``bootstrap_values`` is given
      (the critic's value of the state after the last step; ignored for terminated rows);
    * otherwise ``V_{n-1}`` (``truncated_bootstrap="last_value"``, the default: a truncated
      episode is cut off by a limit outside the task, so the unseen next state is assumed to be
      worth about what the last seen state is worth) or ``0`` (``truncated_bootstrap="zero"``,
      treat truncation like termination).

    Args:
        rewards, values, mask: ``[B, T]`` left-aligned step tensors.
        gamma, lam: discount and GAE lambda.
        terminated: ``[B]`` bool, whether each trajectory ended in a terminal state.
        bootstrap_values: ``[B]`` values of the state after the last step (truncated rows only;
            requires ``terminated``).
        truncated_bootstrap: the fallback for truncated rows without ``bootstrap_values``.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` and zero outside the mask.
    """
    return _gae(rewards, values, mask, gamma, lam, terminated, bootstrap_values, truncated_bootstrap)


def token_gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
    *,
    terminated: Tensor | None = None,
    bootstrap_values: Tensor | None = None,
    truncated_bootstrap: TruncatedBootstrap = "last_value",
) -> tuple[Tensor, Tensor]:
    """Token-level GAE for PPO over the concatenated action tokens of each trajectory.

    The tensors are ``[B, L]`` over action tokens only (observation tokens are not in them): the
    "next state" of the last action token of step ``k`` is the first action token of step ``k + 1``.
    Rewards sit on the last action token of each step (see :func:`place_step_rewards`), values are
    the critic's value of the state in which each action token is chosen. The formula is
    :func:`step_gae`'s with ``t`` running over tokens (``gamma`` and ``lam`` are per token), and the
    same termination / bootstrap rules at the trajectory's last action token.
    """
    return _gae(rewards, values, mask, gamma, lam, terminated, bootstrap_values, truncated_bootstrap)


def place_step_rewards(rewards: Tensor, step_index_of_token: Tensor) -> Tensor:
    """Put each step's reward on the last action token of that step.

    Args:
        rewards: ``[B, T]`` step rewards.
        step_index_of_token: ``[B, L]`` int64, the step index of each action token, ``-1`` on
            padding. Tokens of one step are contiguous.

    Returns:
        ``[B, L]``: ``rewards[b, s]`` at the last token of step ``s``, zero elsewhere.
    """
    idx = step_index_of_token
    next_idx = torch.cat([idx[:, 1:], idx.new_full((idx.shape[0], 1), -1)], dim=1)
    is_last = (idx >= 0) & (next_idx != idx)
    gathered = torch.gather(rewards, 1, idx.clamp_min(0))
    return torch.where(is_last, gathered, torch.zeros_like(gathered))


def broadcast_to_tokens(step_values: Tensor, step_index_of_token: Tensor) -> Tensor:
    """Put one value per step (e.g. its advantage) on every action token of that step.

    Args:
        step_values: ``[B, T]``.
        step_index_of_token: ``[B, L]`` int64, the step of each token, ``-1`` for tokens that
            belong to no step (padding, observation tokens if present).

    Returns:
        ``[B, L]`` with ``out[b, j] = step_values[b, step_index_of_token[b, j]]``, zero where the
        index is ``-1``.
    """
    idx = step_index_of_token
    gathered = torch.gather(step_values, 1, idx.clamp_min(0))
    return torch.where(idx >= 0, gathered, torch.zeros_like(gathered))


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / (std + eps)`` over the masked entries; zeros outside the mask.

    ``mean`` and ``std`` are taken over all masked entries of the whole tensor; ``std`` is the
    **biased** (population) standard deviation ``sqrt(sum (x - mean)^2 / n)``. With ``n <= 1``
    masked entries the result is all zeros.
    """
    m = _bool_mask(mask)
    mf = m.to(x.dtype)
    n = mf.sum()
    if n <= 1:
        return torch.zeros_like(x)
    mean = (x * mf).sum() / n
    var = (((x - mean) * mf) ** 2).sum() / n
    return (x - mean) / (var.sqrt() + eps) * mf


def whiten_with_floor(x: Tensor, mask: Tensor, signal: Tensor, floor: float, eps: float = 1e-8) -> Tensor:
    """Whitening that does not amplify noise: ``whiten(x) * min(1, std_m(signal) / floor)``.

    ``signal`` is a critic-free measure of what the batch can teach, of ``x``'s shape: the Monte-Carlo
    returns-to-go of its steps (or tokens), :func:`discounted_returns`. Plain :func:`whiten` rescales
    any batch to unit scale; in a batch whose returns are all equal (no reward anywhere, or the same
    outcome everywhere) the GAE advantages are pure critic error (``A_t = V_{t+1} - V_t`` ...), and
    whitening turns that noise into a full-size update. Here the whitened advantages shrink in
    proportion when the biased std of ``signal`` over the masked entries is below ``floor``, down to
    exactly 0 for a batch with constant returns. ``floor = 0`` is exactly :func:`whiten`.
    """
    white = whiten(x, mask, eps)
    if floor <= 0:
        return white
    m = _bool_mask(mask)
    mf = m.to(signal.dtype)
    n = mf.sum().clamp_min(1)
    mean = (signal * mf).sum() / n
    std = ((((signal - mean) * mf) ** 2).sum() / n).sqrt()
    return white * torch.clamp(std / floor, max=1.0).to(white.dtype)


def grpo_advantages(returns: Tensor, group_ids: GroupIds, eps: float = 1e-6) -> Tensor:
    """GRPO: ``A_i = (R_i - mean_g(R)) / (std_g(R) + eps)`` within each group ``g`` of trajectories.

    ``std_g`` is the **unbiased** (``n - 1``) std (DeepSeekMath / TRL's ``torch.std``); a group of
    size 1 gets ``A = 0``. ``returns`` is ``[N]`` (one return per trajectory); output ``[N]``.
    """
    index = group_index(group_ids, returns.device)
    mean, std, count = _group_stats(returns, index, unbiased=True)
    adv = (returns - mean) / (std + eps)
    return torch.where(count > 1, adv, torch.zeros_like(adv))


def rloo_advantages(returns: Tensor, group_ids: GroupIds) -> Tensor:
    """RLOO: ``A_i = R_i - (sum_{j in g, j != i} R_j) / (n_g - 1)``; groups of size 1 get 0.

    Equivalently ``n_g / (n_g - 1) * (R_i - mean_g(R))``. ``returns`` is ``[N]``; output ``[N]``.
    """
    index = group_index(group_ids, returns.device)
    mean, _, count = _group_stats(returns, index, unbiased=False)
    total = mean * count
    loo = (total - returns) / (count - 1).clamp_min(1)
    adv = returns - loo
    return torch.where(count > 1, adv, torch.zeros_like(adv))


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go ``G_t = sum_{k >= t} gamma^(k - t) * r_k`` over each trajectory's real steps.

    ``[B, T]`` in and out; zeros outside the mask.
    """
    m = _bool_mask(mask)
    r = rewards * m.to(rewards.dtype)
    out = torch.zeros_like(r)
    running = r.new_zeros(r.shape[0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * m.to(r.dtype)


def reinforce_pp_advantages(rewards: Tensor, mask: Tensor, gamma: float, eps: float = 1e-8) -> Tensor:
    """REINFORCE++: ``A = whiten(G)`` with ``G_t = sum_{k >= t} gamma^(k - t) r_k``.

    The return-to-go (every step sees the rewards of all its later steps) is normalised over all
    masked steps of the batch with :func:`whiten` (biased std). ``[B, T]`` in and out.
    """
    return whiten(discounted_returns(rewards, mask, gamma), mask, eps)


def gigpo_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_ids: GroupIds,
    anchor_ids: Tensor,
    gamma: float,
    step_weight: float = 1.0,
    eps: float = 1e-6,
) -> Tensor:
    """GiGPO: episode-level group advantage plus step-level anchor-state group advantage.

    ``A[b, t] = A^E[b] + step_weight * A^S[b, t]`` where

    * ``A^E = grpo_advantages(R, group_ids, eps)`` on the undiscounted episode returns
      ``R_b = sum_t r[b, t]``;
    * ``A^S[b, t] = (G[b, t] - mean_S(G)) / (std_S(G) + eps)`` with ``G`` the discounted
      return-to-go (:func:`discounted_returns`) and ``S`` the *step group* of ``(b, t)``: all real
      steps whose trajectory has the same ``group_id`` and whose current observation is the same
      (same ``anchor_ids`` value), including repeated visits within one trajectory. ``std_S`` is
      unbiased; a step group of size 1 gets ``A^S = 0``.

    Args:
        rewards, mask: ``[B, T]`` left-aligned step tensors.
        group_ids: ``[B]`` episode groups (trajectories of the same task).
        anchor_ids: ``[B, T]`` int64 hashes of each step's observation.
        gamma: discount of the step-level return-to-go.
        step_weight: weight of the step-level term.

    Returns:
        ``[B, T]`` advantages, zero outside the mask.
    """
    m = _bool_mask(mask)
    mf = m.to(rewards.dtype)
    episode_returns = (rewards * mf).sum(dim=1)
    episode_index = group_index(group_ids, rewards.device)
    episode_adv = grpo_advantages(episode_returns, episode_index, eps)
    returns_to_go = discounted_returns(rewards, m, gamma)
    # Step groups: dense index of (episode group, anchor) pairs over the real steps.
    pairs = torch.stack(
        [episode_index[:, None].expand_as(anchor_ids)[m], anchor_ids.to(rewards.device, torch.int64)[m]], dim=1
    )
    step_adv = torch.zeros_like(rewards)
    if pairs.shape[0]:
        _, step_index = torch.unique(pairs, dim=0, return_inverse=True)
        g = returns_to_go[m]
        mean, std, count = _group_stats(g, step_index, unbiased=True)
        adv = (g - mean) / (std + eps)
        step_adv[m] = torch.where(count > 1, adv, torch.zeros_like(adv))
    return (episode_adv[:, None] + step_weight * step_adv) * mf
