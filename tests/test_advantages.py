"""Advantage estimators against hand-computed numbers (masks, groups, truncation)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steppo_train.advantages import (
    broadcast_to_tokens,
    discounted_returns,
    gigpo_advantages,
    grpo_advantages,
    place_step_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
    step_gae,
    token_gae,
    whiten,
)

T = torch.tensor
PAD = 99.0  # garbage in padded slots: must never leak into results


def close(a: torch.Tensor, b: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, T(b, dtype=a.dtype), atol=atol, rtol=0)


# Two trajectories: 3 steps, and 2 steps + padding. gamma 0.9, lam 0.8 (gamma*lam = 0.72).
REWARDS = T([[1.0, 0.0, 2.0], [0.0, 1.0, PAD]])
VALUES = T([[0.5, 1.0, 1.5], [0.2, 0.4, PAD]])
MASK = T([[True, True, True], [True, True, False]])


def test_step_gae_terminated_hand_numbers() -> None:
    adv, ret = step_gae(REWARDS, VALUES, MASK, 0.9, 0.8)
    # row 0: deltas 1 + .9*1 - .5 = 1.4, 0 + .9*1.5 - 1 = .35, 2 - 1.5 = .5 (V after the end = 0)
    #        A2 = .5, A1 = .35 + .72*.5 = .71, A0 = 1.4 + .72*.71 = 1.9112
    # row 1: deltas .9*.4 - .2 = .16, 1 - .4 = .6; A1 = .6, A0 = .16 + .72*.6 = .592
    close(adv, [[1.9112, 0.71, 0.5], [0.592, 0.6, 0.0]])
    close(ret, [[2.4112, 1.71, 2.0], [0.792, 1.0, 0.0]])
    # terminated=None is the same as all terminated
    adv2, _ = step_gae(REWARDS, VALUES, MASK, 0.9, 0.8, terminated=T([True, True]))
    torch.testing.assert_close(adv, adv2)


def test_step_gae_float_mask_same_as_bool() -> None:
    adv_b, ret_b = step_gae(REWARDS, VALUES, MASK, 0.9, 0.8)
    adv_f, ret_f = step_gae(REWARDS, VALUES, MASK.float(), 0.9, 0.8)
    torch.testing.assert_close(adv_b, adv_f)
    torch.testing.assert_close(ret_b, ret_f)


def test_step_gae_truncated_with_bootstrap_value() -> None:
    term = T([True, False])
    adv, ret = step_gae(REWARDS, VALUES, MASK, 0.9, 0.8, terminated=term, bootstrap_values=T([7.0, 0.5]))
    # row 0 terminated: its bootstrap 7 is ignored. row 1: d1 = 1 + .9*.5 - .4 = 1.05, A0 = .16 + .72*1.05
    close(adv, [[1.9112, 0.71, 0.5], [0.916, 1.05, 0.0]])
    close(ret, [[2.4112, 1.71, 2.0], [1.116, 1.45, 0.0]])


def test_step_gae_truncated_without_bootstrap_uses_last_value_or_zero() -> None:
    term = T([True, False])
    adv, _ = step_gae(REWARDS, VALUES, MASK, 0.9, 0.8, terminated=term)
    # default "last_value": V after the last step := V of the last step (.4): d1 = 1 + .36 - .4 = .96
    close(adv, [[1.9112, 0.71, 0.5], [0.16 + 0.72 * 0.96, 0.96, 0.0]])
    adv0, _ = step_gae(REWARDS, VALUES, MASK, 0.9, 0.8, terminated=term, truncated_bootstrap="zero")
    close(adv0, [[1.9112, 0.71, 0.5], [0.592, 0.6, 0.0]])


def test_step_gae_truncated_row_using_all_columns() -> None:
    # the last real step is in the last column: the bootstrap must still apply
    adv, _ = step_gae(T([[1.0, 1.0]]), T([[0.0, 2.0]]), T([[1, 1]]), 1.0, 1.0, terminated=T([False]))
    close(adv, [[1.0 + 1.0 + 2.0 - 0.0, 1.0 + 2.0 - 2.0]])


def test_step_gae_bootstrap_without_terminated_is_an_error() -> None:
    with pytest.raises(ValueError, match="terminated"):
        step_gae(REWARDS, VALUES, MASK, 0.9, 0.8, bootstrap_values=T([0.0, 0.0]))


def test_step_gae_empty_trajectory_is_zero() -> None:
    adv, ret = step_gae(
        T([[PAD, PAD]]), T([[PAD, PAD]]), T([[False, False]]), 0.9, 0.8, terminated=T([False])
    )
    close(adv, [[0.0, 0.0]])
    close(ret, [[0.0, 0.0]])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.floats(-5, 5), min_size=1, max_size=5), min_size=1, max_size=4),
    st.floats(0.0, 1.0),
)
def test_step_gae_lambda_one_is_monte_carlo(rows: list[list[float]], gamma: float) -> None:
    width = max(len(r) for r in rows)
    rewards = torch.zeros(len(rows), width, dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        rewards[i, : len(r)] = torch.tensor(r, dtype=torch.float64)
        mask[i, : len(r)] = True
    values = torch.linspace(-1, 1, rewards.numel(), dtype=torch.float64).reshape(rewards.shape)
    adv, ret = step_gae(rewards, values, mask, gamma, 1.0)
    g = discounted_returns(rewards, mask, gamma)
    torch.testing.assert_close(ret, g)
    torch.testing.assert_close(adv, (g - values) * mask)
    # lam = 0: one-step TD errors
    adv0, _ = step_gae(rewards, values, mask, gamma, 0.0)
    nxt = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(len(rows), 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(adv0, (rewards + gamma * nxt - values) * mask)


def test_whiten_biased_std_exact() -> None:
    x = T([[1.0, 2.0, 3.0], [4.0, PAD, PAD]])
    m = T([[1, 1, 1], [1, 0, 0]])
    # mean 2.5, biased var (2.25 + .25 + .25 + 2.25) / 4 = 1.25
    s = math.sqrt(1.25)
    close(whiten(x, m), [[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]])
    close(whiten(T([3.0, PAD]), T([True, False])), [0.0, 0.0])  # one entry: zeros
    close(whiten(T([2.0, 2.0]), T([True, True])), [0.0, 0.0])  # constant: zeros, not nan


# groups: a = [1, 0, 1, 0], b = [2, 4], c = [5] (interleaved)
GROUPS = ["a", "b", "a", "c", "a", "b", "a"]
RETURNS = T([1.0, 2.0, 0.0, 5.0, 1.0, 4.0, 0.0])


def test_grpo_unbiased_std_and_singletons() -> None:
    a = 0.5 / math.sqrt(1 / 3)  # a: mean .5, unbiased std sqrt(1/3)
    b = 1.0 / math.sqrt(2.0)  # b: mean 3, unbiased std sqrt(2)
    expected = [a, -b, -a, 0.0, a, b, -a]
    close(grpo_advantages(RETURNS, GROUPS), expected)
    close(grpo_advantages(RETURNS, T([0, 1, 0, 2, 0, 1, 0])), expected)  # int-tensor ids
    close(grpo_advantages(T([3.0, 3.0, 3.0]), [1, 1, 1]), [0.0, 0.0, 0.0])


def test_rloo_leave_one_out() -> None:
    close(rloo_advantages(RETURNS, GROUPS), [2 / 3, -2.0, -2 / 3, 0.0, 2 / 3, 2.0, -2 / 3])


def test_reinforce_pp_return_to_go_then_batch_whiten() -> None:
    rewards = T([[0.0, 0.0, 1.0], [0.0, 2.0, PAD]])
    m = T([[1, 1, 1], [1, 1, 0]])
    close(discounted_returns(rewards, m, 0.5), [[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]])
    # G = .25 .5 1 1 2: mean .95, biased std .6
    close(
        reinforce_pp_advantages(rewards, m, 0.5),
        [[-0.7 / 0.6, -0.45 / 0.6, 0.05 / 0.6], [0.05 / 0.6, 1.05 / 0.6, 0.0]],
    )


def test_gigpo_episode_plus_anchor_step_groups() -> None:
    rewards = T([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, PAD]])
    mask = T([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    anchors = torch.tensor([[10, 11, 12], [10, 11, 11], [10, 11, 11]], dtype=torch.int64)
    groups = ["g", "g", "h"]
    # episode: g returns [1, 0] -> +-1/sqrt(.5) * .5 = +-.707107; h is a singleton -> 0.
    # G (gamma .5): [.25 .5 1], [0 0 0], [.5 1]
    # (g,10): .25, 0 -> +-.707107; (g,11): .5, 0, 0 (a repeat within traj 1) -> mean 1/6,
    #   unbiased std sqrt(1/12): 1.154701, -.577350, -.577350; (g,12) singleton -> 0;
    # (h,10), (h,11) are not merged with g's anchors: singletons -> 0.
    e, s1, s2 = 1 / math.sqrt(2), (1 / 3) / math.sqrt(1 / 12), (1 / 6) / math.sqrt(1 / 12)
    out = gigpo_advantages(rewards, mask, groups, anchors, 0.5)
    close(out, [[e + e, e + s1, e], [-e - e, -e - s2, -e - s2], [0.0, 0.0, 0.0]])
    half = gigpo_advantages(rewards, mask, groups, anchors, 0.5, step_weight=0.5)
    close(half, [[e + e / 2, e + s1 / 2, e], [-e - e / 2, -e - s2 / 2, -e - s2 / 2], [0.0, 0.0, 0.0]])


def test_place_rewards_broadcast_and_token_gae() -> None:
    idx = torch.tensor([[0, 0, 1, -1]])  # step 0 has 2 action tokens, step 1 one, then padding
    tok_r = place_step_rewards(T([[1.0, 2.0]]), idx)
    close(tok_r, [[0.0, 1.0, 2.0, 0.0]])
    close(broadcast_to_tokens(T([[5.0, 6.0]]), idx), [[5.0, 5.0, 6.0, 0.0]])
    values = T([[0.1, 0.2, 0.3, PAD]])
    mask = idx >= 0
    adv, ret = token_gae(tok_r, values, mask, 1.0, 1.0)
    close(adv, [[2.9, 2.8, 1.7, 0.0]])  # return-to-go 3 3 2 minus V
    close(ret, [[3.0, 3.0, 2.0, 0.0]])
    # gamma .5, lam .5: deltas 0 + .1 - .1 = 0, 1 + .15 - .2 = .95, 2 - .3 = 1.7
    adv, _ = token_gae(tok_r, values, mask, 0.5, 0.5)
    close(adv, [[0.25 * 1.375, 0.95 + 0.25 * 1.7, 1.7, 0.0]])
    # truncated, bootstrapped at the last action token
    adv, _ = token_gae(tok_r, values, mask, 1.0, 1.0, terminated=T([False]), bootstrap_values=T([1.0]))
    close(adv, [[3.9, 3.8, 2.7, 0.0]])
