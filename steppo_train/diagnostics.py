"""What an update did, as small pure functions: how well the critic explains the returns, and how far
the policy moved.

* :func:`explained_variance` — ``1 - Var(R - V) / Var(R)`` over the rows (or tokens) the critic is
  trained on; logged as ``critic/explained_variance_before`` (the values the advantages used) and
  ``critic/explained_variance_after`` (the critic after the update, same rows).
* :func:`policy_movement` — the k3 estimate of ``KL(pi_old || pi_new)`` and the fraction of the clipped
  ratios outside the clip range, measured with the weights *after* the update. The per-minibatch
  ``losses/approx_kl`` / ``losses/clip_fraction`` are taken before each optimizer step, so an iteration
  with one minibatch logs 0 there by construction; ``update/approx_kl`` / ``update/clip_fraction`` show
  the movement of the whole update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["RatioLevel", "explained_variance", "flat_values", "policy_movement"]

RatioLevel = Literal["token", "step", "sequence"]
"""Which ratio the loss clips: one per action token, one per step (geometric mean of its token ratios),
or one per sequence of steps (GSPO: the geometric mean over a whole trajectory's action tokens)."""

_LOG_RATIO_CLAMP = 20.0


def explained_variance(returns: Tensor, values: Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over the entries of two same-shape tensors (biased variances).

    1 = the values predict the returns exactly; 0 = no better than the returns' mean; negative = worse
    than the mean. ``nan`` when the returns do not vary (``Var(R) = 0``: nothing to explain) or there
    are fewer than 2 entries.
    """
    r, v = returns.detach().double().reshape(-1), values.detach().double().reshape(-1)
    if r.numel() < 2:
        return float("nan")
    var_r = r.var(unbiased=False)
    if float(var_r) == 0.0:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=False) / var_r)


def policy_movement(
    new_logprobs: Sequence[Tensor],
    old_logprobs: Sequence[Tensor],
    clip_low: float,
    clip_high: float,
    level: RatioLevel,
    sequences: Sequence[Sequence[int]] | None = None,
) -> tuple[float, float]:
    """``(approx_kl, clip_fraction)`` of new against old logprobs (one 1-D tensor per step row).

    ``approx_kl = mean_tokens((rho - 1) - log rho)`` with ``rho = exp(logp_new - logp_old)`` per action
    token: the k3 estimate of ``KL(pi_old || pi_new)`` on the old policy's samples (>= 0, 0 only when
    nothing moved). ``clip_fraction`` = the fraction of the loss's ratios outside
    ``[1 - clip_low, 1 + clip_high]``: per token (``level="token"``), per step row
    (``"step"``: ``exp(mean_j log rho_j)``) or per sequence (``"sequence"``: the rows of each entry of
    ``sequences`` concatenated, GSPO). Rows without tokens are skipped; no rows gives ``(0.0, 0.0)``.
    """
    logs = [(n.detach().double() - o.detach().double().to(n.device)).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
            for n, o in zip(new_logprobs, old_logprobs, strict=True)]
    flat = torch.cat([x.reshape(-1) for x in logs]) if logs else torch.zeros(0, dtype=torch.float64)
    if flat.numel() == 0:
        return 0.0, 0.0
    kl = float((torch.expm1(flat) - flat).mean())
    if level == "token":
        log_ratios = flat
    elif level == "step":
        log_ratios = torch.stack([x.mean() for x in logs if x.numel()])
    elif level == "sequence":
        groups = sequences if sequences is not None else [[i] for i in range(len(logs))]
        joined = [torch.cat([logs[i].reshape(-1) for i in g]) for g in groups]
        log_ratios = torch.stack([x.mean() for x in joined if x.numel()])
    else:
        raise ValueError(f"level must be 'token', 'step' or 'sequence', not {level!r}.")
    ratio = log_ratios.exp()
    outside = (ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)
    return kl, float(outside.double().mean())


def flat_values(step_values: Tensor | list[Tensor] | None, token_values: list[Tensor] | None = None) -> Tensor | None:
    """One flat tensor of per-row values or targets (a ``[rows]`` tensor, or per-row token tensors concatenated)."""
    values = step_values if step_values is not None else token_values
    if values is None or isinstance(values, Tensor):
        return values
    return torch.cat([v.reshape(-1) for v in values]) if values else torch.zeros(0)
