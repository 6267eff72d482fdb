"""Policy / value / regulariser losses as pure torch functions.

Shapes: log-probability tensors are ``[rows, tokens]``, right-padded, with a bool (or 0/1 float)
``action_mask`` true on the action (response) tokens of each row. What a *row* is depends on the
loss: one **step** (one LLM response) for :func:`steppo_policy_loss`, one **sequence** (all action
tokens of a trajectory, or one single-turn response) for :func:`gspo_loss`, anything for
:func:`ppo_token_loss`.

All losses are to be *minimised*. Each policy loss returns ``(loss, PolicyLossStats)``; the stats
are detached Python floats for logging. The formulas are collected in ``docs/algorithms.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Aggregation",
    "KLKind",
    "PolicyLossStats",
    "ValueLossStats",
    "entropy_bonus",
    "entropy_from_logits",
    "gspo_loss",
    "kl_penalty",
    "kl_per_token",
    "masked_mean",
    "ppo_token_loss",
    "sequence_ratio",
    "step_behaviour_weights",
    "step_ratio",
    "step_ratio_token_advantage_loss",
    "steppo_policy_loss",
    "token_behaviour_weights",
    "value_loss",
]

Aggregation = Literal["row_mean", "token_mean"]
"""``"row_mean"``: mean over the tokens of each row, then mean over rows (every row weighs the same).
``"token_mean"``: mean over all action tokens of the batch (a row weighs its token count)."""

KLKind = Literal["k1", "k2", "k3"]

_LOG_RATIO_CLAMP = 20.0


@dataclass(frozen=True)
class PolicyLossStats:
    """Diagnostics of a clipped policy loss (detached floats).

    Attributes:
        clip_fraction: fraction of rows (sequence-ratio losses) or action tokens (token loss) where
            the clipped term is strictly smaller, i.e. the gradient is zeroed by the clip.
        approx_kl: mean over action tokens of ``(rho - 1) - log rho`` with the token ratio
            ``rho = exp(logp_new - logp_old)``: the k3 estimate of ``KL(pi_old || pi_new)``.
        ratio_mean, ratio_min, ratio_max: over the ratios the loss used (rows or tokens).
    """

    clip_fraction: float
    approx_kl: float
    ratio_mean: float
    ratio_min: float
    ratio_max: float


@dataclass(frozen=True)
class ValueLossStats:
    """Diagnostics of :func:`value_loss` (detached floats).

    Attributes:
        clip_fraction: fraction of masked entries where the clipped error is the larger one.
        mse: masked mean of the unclipped squared error ``(V - R)^2``.
    """

    clip_fraction: float
    mse: float


def _bool_mask(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true (0 where there are none).

    With ``dim`` the mean is taken along that axis only.
    """
    mf = _bool_mask(mask).to(x.dtype)
    if dim is None:
        return (x * mf).sum() / mf.sum().clamp_min(1)
    return (x * mf).sum(dim) / mf.sum(dim).clamp_min(1)


def sequence_ratio(logp_new: Tensor, logp_old: Tensor, action_mask: Tensor) -> Tensor:
    """Per-row geometric mean of the token ratios: ``exp(mean_j (logp_new - logp_old))``.

    ``rho_i = exp((1 / n_i) * sum_j m_ij * (logp_new_ij - logp_old_ij)) = (prod_j pi_new / pi_old)^(1 / n_i)``.
    A row without action tokens gets ratio 1. Returns ``[rows]``.
    """
    m = _bool_mask(action_mask)
    log_ratio = torch.where(m, logp_new - logp_old, torch.zeros_like(logp_new))
    return torch.exp(log_ratio.sum(-1) / m.sum(-1).clamp_min(1).to(log_ratio.dtype))


def step_ratio(logp_new: Tensor, logp_old: Tensor, action_mask: Tensor) -> Tensor:
    """StepPO's per-step ratio: :func:`sequence_ratio` with one row per step (one LLM response)."""
    return sequence_ratio(logp_new, logp_old, action_mask)


def token_behaviour_weights(logp_prox: Tensor, logp_behaviour: Tensor, action_mask: Tensor, cap: float) -> Tensor:
    """Decoupled PPO's behaviour correction per token, truncated: ``w_ij = min(pi_prox_ij / mu_ij, cap)``.

    Stale rollouts are sampled by a behaviour policy ``mu`` (the rollout engine's weights some
    versions ago; its logprobs are in the records), while the clip is centred on the *proximal*
    policy ``pi_prox`` (the trainer's weights at the start of the update: the recomputed "old
    logprobs"). The decoupled objective (Hilton et al. 2021, "Batch size-invariance for policy
    optimization"; AReaL) is

    ``L = -E_mu[ w * min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) ]``, ``rho = pi_theta / pi_prox``,

    with ``w_ij = exp(logp_prox_ij - logp_behaviour_ij)`` truncated at ``cap`` (bounded variance; a
    constant, so no gradient flows through it). Where ``logp_behaviour == logp_prox`` (fresh data)
    ``w = 1`` exactly. Entries outside ``action_mask`` are 1. The log ratio is clamped to ``[-20, 20]``.
    Returns ``[rows, tokens]``.
    """
    m = _bool_mask(action_mask)
    log_w = (logp_prox - logp_behaviour).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    w = torch.exp(torch.where(m, log_w, torch.zeros_like(log_w))).clamp(max=cap)
    return w.detach()


def step_behaviour_weights(logp_prox: Tensor, logp_behaviour: Tensor, action_mask: Tensor, cap: float) -> Tensor:
    """The behaviour correction of a step (or sequence) ratio: the geometric mean of the token ratios,
    truncated, ``w_i = min(exp(mean_j (logp_prox_ij - logp_behaviour_ij)), cap)`` (see
    :func:`token_behaviour_weights` for the objective; this is the per-step form that matches
    :func:`step_ratio`). A row without action tokens gets 1. Returns ``[rows]``.
    """
    m = _bool_mask(action_mask)
    log_w = torch.where(m, logp_prox - logp_behaviour, torch.zeros_like(logp_prox)).sum(-1)
    log_w = (log_w / m.sum(-1).clamp_min(1).to(log_w.dtype)).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.exp(log_w).clamp(max=cap).detach()


def _weighted(loss: Tensor, weights: Tensor | None) -> Tensor:
    """``loss * weights`` (the behaviour correction), or ``loss`` itself when there is none."""
    return loss if weights is None else loss * weights.to(loss.dtype)


def _clipped_surrogate(
    ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, Tensor]:
    """``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)`` and the "clip active" mask."""
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def _token_k3(logp_new: Tensor, logp_old: Tensor, mask: Tensor) -> Tensor:
    log_ratio = (logp_new - logp_old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


def _stats(ratio: Tensor, clip_active: Tensor, valid: Tensor, approx_kl: Tensor) -> PolicyLossStats:
    with torch.no_grad():
        r = ratio.detach()[valid]
        if r.numel() == 0:
            return PolicyLossStats(0.0, float(approx_kl), 1.0, 1.0, 1.0)
        return PolicyLossStats(
            clip_fraction=float(clip_active[valid].float().mean()),
            approx_kl=float(approx_kl),
            ratio_mean=float(r.mean()),
            ratio_min=float(r.min()),
            ratio_max=float(r.max()),
        )


def _sequence_ratio_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    action_mask: Tensor,
    clip_low: float,
    clip_high: float,
    aggregation: Aggregation,
    weights: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    m = _bool_mask(action_mask)
    ratio = sequence_ratio(logp_new, logp_old, m)
    row_loss, clip_active = _clipped_surrogate(ratio, advantages.to(ratio.dtype), clip_low, clip_high)
    row_loss = _weighted(row_loss, weights)
    n_tokens = m.sum(-1)
    valid = n_tokens > 0
    if aggregation == "row_mean":
        loss = masked_mean(row_loss, valid)
    elif aggregation == "token_mean":
        weights = n_tokens.to(row_loss.dtype)
        loss = (row_loss * weights).sum() / weights.sum().clamp_min(1)
    else:
        raise ValueError(f"aggregation must be 'row_mean' or 'token_mean', not {aggregation!r}.")
    with torch.no_grad():
        kl = _token_k3(logp_new.detach(), logp_old.detach(), m)
    return loss, _stats(ratio, clip_active, valid, kl)


def steppo_policy_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    action_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: Aggregation = "row_mean",
    weights: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """StepPO's clipped surrogate with one step ratio and one advantage per step row.

    ``rho_i = step_ratio(...)_i``; ``l_i = -min(rho_i * A_i, clip(rho_i, 1 - eps_low, 1 + eps_high) * A_i)``.

    Aggregation ``"row_mean"`` (default) is "mean over tokens, then mean over steps": every token
    of step ``i`` carries the same loss ``l_i`` (the ratio and the advantage are per step), so the
    token mean of row ``i`` is ``l_i`` and the loss is ``mean_i l_i`` over the steps with at least
    one action token. Its gradient gives every step the same total weight whatever its length, and
    each token of step ``i`` the weight ``1 / n_i`` (because ``d rho_i = rho_i * mean_j d logp_ij``).
    ``"token_mean"`` weights step ``i`` by its token count ``n_i`` instead.

    Args:
        logp_new: ``[rows, tokens]`` log-probs under the current policy (with grad).
        logp_old: ``[rows, tokens]`` log-probs of the behaviour policy (sampled logprobs).
        advantages: ``[rows]``, one advantage per step.
        action_mask: ``[rows, tokens]`` true on response tokens.
        clip_low, clip_high: ``eps_low`` / ``eps_high`` of the (asymmetric) clip.
        aggregation: see above.
        weights: ``[rows]`` behaviour corrections ``w_i`` (:func:`step_behaviour_weights`) for stale
            rollouts: ``l_i`` becomes ``w_i * l_i``, with ``logp_old`` the proximal policy's logprobs.
            None = no correction (fresh data: exactly the loss above).
    """
    return _sequence_ratio_loss(logp_new, logp_old, advantages, action_mask, clip_low, clip_high, aggregation, weights)


def step_ratio_token_advantage_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    action_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    weights: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """The step ratio with one advantage per *token* (the paper's "StepPO w/o step-level GAE").

    ``rho_i = step_ratio(...)_i`` is broadcast to the tokens of step ``i``;
    ``l_ij = -min(rho_i * A_ij, clip(rho_i, 1 - eps_low, 1 + eps_high) * A_ij)``;
    ``loss = mean_i (mean_j l_ij)`` over the steps with at least one action token. When every token of
    a step has the same advantage (``A_ij = A_i``) this is exactly :func:`steppo_policy_loss`.
    ``clip_fraction`` counts action tokens whose clipped term is the smaller one.

    Args:
        logp_new, logp_old, action_mask: ``[rows, tokens]`` as in :func:`steppo_policy_loss`.
        advantages: ``[rows, tokens]``, one per action token (e.g. token GAE).
        weights: ``[rows]`` behaviour corrections (:func:`step_behaviour_weights`): ``l_ij`` becomes
            ``w_i * l_ij``; None = no correction.
    """
    m = _bool_mask(action_mask)
    ratio = sequence_ratio(logp_new, logp_old, m)
    token_loss, clip_active = _clipped_surrogate(ratio[:, None].expand_as(logp_new), advantages.to(ratio.dtype),
                                                 clip_low, clip_high)
    token_loss = _weighted(token_loss, None if weights is None else weights[:, None])
    valid = m.any(-1)
    loss = masked_mean(masked_mean(token_loss, m, dim=-1), valid)
    with torch.no_grad():
        kl = _token_k3(logp_new.detach(), logp_old.detach(), m)
        clip_fraction = float(clip_active[m].float().mean()) if bool(m.any()) else 0.0
    stats = _stats(ratio, clip_active.any(-1), valid, kl)
    return loss, dataclasses.replace(stats, clip_fraction=clip_fraction)


def gspo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    action_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: Aggregation = "row_mean",
    weights: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """GSPO: the clipped surrogate with the *sequence* ratio (geometric mean over the sequence's tokens).

    Same formula as :func:`steppo_policy_loss`, but a row is a whole sequence: all action tokens of
    a trajectory concatenated (or one single-turn response), with one advantage per sequence. For
    a trajectory of exactly one step the two losses coincide. The GSPO paper uses much smaller
    clip ranges than token PPO (``3e-4`` / ``4e-4``); pass them explicitly. ``weights``: ``[rows]``
    behaviour corrections per sequence (:func:`step_behaviour_weights` over the sequence), as in
    :func:`steppo_policy_loss`.
    """
    return _sequence_ratio_loss(logp_new, logp_old, advantages, action_mask, clip_low, clip_high, aggregation, weights)


def ppo_token_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    action_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: Aggregation = "token_mean",
    weights: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """Token-level PPO: ``l_ij = -min(rho_ij * A_ij, clip(rho_ij, 1 - eps_low, 1 + eps_high) * A_ij)``.

    ``rho_ij = exp(logp_new_ij - logp_old_ij)`` and ``advantages`` is ``[rows, tokens]`` (one per
    token, e.g. from :func:`steppo_train.advantages.token_gae`). ``"token_mean"`` (default)
    averages over all action tokens of the batch; ``"row_mean"`` averages within each row first.
    ``weights``: ``[rows, tokens]`` behaviour corrections (:func:`token_behaviour_weights`): ``l_ij``
    becomes ``w_ij * l_ij``; None = no correction.
    """
    m = _bool_mask(action_mask)
    log_ratio = torch.where(m, logp_new - logp_old, torch.zeros_like(logp_new))
    ratio = torch.exp(log_ratio)
    token_loss, clip_active = _clipped_surrogate(ratio, advantages.to(ratio.dtype), clip_low, clip_high)
    token_loss = _weighted(token_loss, weights)
    if aggregation == "token_mean":
        loss = masked_mean(token_loss, m)
    elif aggregation == "row_mean":
        loss = masked_mean(masked_mean(token_loss, m, dim=-1), m.any(-1))
    else:
        raise ValueError(f"aggregation must be 'row_mean' or 'token_mean', not {aggregation!r}.")
    with torch.no_grad():
        kl = _token_k3(logp_new.detach(), logp_old.detach(), m)
    return loss, _stats(ratio, clip_active, m, kl)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
) -> tuple[Tensor, ValueLossStats]:
    """Clipped value loss ``0.5 * mean_mask max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``.

    ``clip=None`` gives the plain ``0.5 * mean_mask (V - R)^2``. Any shape; ``mask`` selects the
    entries (steps for StepPO, action tokens for token PPO).
    """
    m = _bool_mask(mask)
    err = (values - returns) ** 2
    if clip is None:
        worst = err
        clip_active = torch.zeros_like(m)
    else:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clipped = (clipped - returns) ** 2
        worst = torch.maximum(err, err_clipped)
        clip_active = err_clipped > err
    loss = 0.5 * masked_mean(worst, m)
    with torch.no_grad():
        stats = ValueLossStats(
            clip_fraction=float(masked_mean(clip_active.to(values.dtype), m)),
            mse=float(masked_mean(err.detach(), m)),
        )
    return loss, stats


def kl_per_token(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k3") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from samples of ``pi``, with ``r = ref_logp - logp``.

    ``k1 = -r`` (unbiased, high variance), ``k2 = r^2 / 2``, ``k3 = exp(r) - r - 1`` (unbiased,
    low variance, always >= 0). ``r`` is clamped to ``[-20, 20]`` before ``exp`` for stability.
    """
    r = (ref_logp - logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    if kind == "k1":
        return -r
    if kind == "k2":
        return 0.5 * r**2
    if kind == "k3":
        return torch.expm1(r) - r
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3', not {kind!r}.")


def kl_penalty(logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: KLKind = "k3") -> Tensor:
    """Masked mean over action tokens of :func:`kl_per_token` (add ``beta * kl_penalty`` to the loss)."""
    return masked_mean(kl_per_token(logp, ref_logp, kind), mask)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``-sum_v p_v log p_v`` of ``softmax(logits)`` over the last axis (computed in fp32).

    Entries with ``p_v = 0`` (e.g. ``-inf`` logits of a masked vocabulary) contribute 0.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    return -torch.where(probs > 0, probs * logp, torch.zeros_like(logp)).sum(-1)


def entropy_bonus(mask: Tensor, *, logits: Tensor | None = None, entropy: Tensor | None = None) -> Tensor:
    """Masked mean token entropy, from ``logits`` (``[..., vocab]``) or a precomputed ``entropy``.

    It is a *bonus*: subtract ``coef * entropy_bonus(...)`` from the loss. Exactly one of
    ``logits`` / ``entropy`` must be given.
    """
    if (logits is None) == (entropy is None):
        raise ValueError("entropy_bonus needs exactly one of logits= or entropy=.")
    ent = entropy_from_logits(logits) if logits is not None else entropy
    assert ent is not None
    return masked_mean(ent, mask)
