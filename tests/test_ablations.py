"""The paper's two ablations as configuration: advantage timeline x clipped ratio, on hand-built numbers.

StepPO = step advantage + step ratio, PPO = token + token, "StepPO w/o step-GAE" = token advantage +
step ratio, "StepPO w/o step-IS" = step advantage + token ratio.
"""

from __future__ import annotations

import math

import pytest
import torch

from steppo_envs.config import ConfigError
from steppo_train.batch import StepBatch
from steppo_train.config import load_config
from steppo_train.losses import ppo_token_loss, step_ratio_token_advantage_loss, steppo_policy_loss
from steppo_train.targets import compute_targets
from steppo_train.update import row_policy_loss

T = torch.tensor


def close(a: torch.Tensor | float, b: float | list, atol: float = 1e-6) -> None:
    a_t = a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=torch.float64)
    torch.testing.assert_close(a_t, torch.tensor(b, dtype=a_t.dtype), atol=atol, rtol=0)


# Rows = steps. Log-ratios: row0 [.1 .3] (rho e^.2 > 1.2), row1 [-.5 .1 -.2] (rho e^-.2, inside the
# clip), row2 [-.3] (rho e^-.3 < .8), row3 has no action tokens.
OLD = torch.full((4, 3), -1.0)
NEW = OLD + T([[0.1, 0.3, 0.0], [-0.5, 0.1, -0.2], [-0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
MASK = T([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)


def test_step_ratio_with_token_advantages_hand_numbers() -> None:
    adv = T([[1.0, -1.0, 0.0], [2.0, -2.0, 0.5], [-1.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    loss, stats = step_ratio_token_advantage_loss(NEW, OLD, adv, MASK, 0.2, 0.2)
    # row0: A=+1 -> clipped 1.2 (loss -1.2); A=-1 -> unclipped (loss +e^.2); row1: -e^-.2 * mean(2,-2,.5);
    # row2: A=-1 -> clipped .8 (loss +.8); row3 ignored.
    row0 = (-1.2 + math.exp(0.2)) / 2
    row1 = -math.exp(-0.2) * 0.5 / 3
    close(loss, (row0 + row1 + 0.8) / 3)
    close(stats.clip_fraction, 2 / 6)  # row0 token 0 and row2's token, of 6 action tokens
    close(stats.ratio_mean, (math.exp(0.2) + math.exp(-0.2) + math.exp(-0.3)) / 3)


def test_step_ratio_with_constant_token_advantages_is_steppo() -> None:
    step_adv = T([1.0, 2.0, -1.0, 5.0])
    new = NEW.clone().requires_grad_(True)
    a, _ = step_ratio_token_advantage_loss(new, OLD, step_adv[:, None].expand(4, 3), MASK, 0.2, 0.28)
    (grad_a,) = torch.autograd.grad(a, new)
    b, _ = steppo_policy_loss(new, OLD, step_adv, MASK, 0.2, 0.28)
    (grad_b,) = torch.autograd.grad(b, new)
    close(a.detach(), float(b.detach()))
    torch.testing.assert_close(grad_a, grad_b, atol=1e-7, rtol=0)


def _batch() -> StepBatch:
    """One terminated trajectory of two steps: rewards [0, 1]; responses of 2 and 1 tokens."""
    return StepBatch(
        prompt_ids=[[1, 2], [1, 2, 3]], response_ids=[[5, 6], [7]], rollout_logprobs=[[0.0, 0.0], [0.0]],
        traj_index=T([0, 0]), step_index=T([0, 1]), rewards=T([[0.0, 1.0]]), step_mask=T([[True, True]]),
        terminated=T([True]), truncated=T([False]), group_ids=T([0]), anchor_ids=T([[0, 1]]), returns=T([1.0]),
    )


def _config(algo: str, **levels: str):  # type: ignore[no-untyped-def]
    return load_config(algo, overrides={"gamma": 1.0, "lam": 1.0, "whiten_advantages": False, **levels})


@pytest.mark.parametrize(
    ("algo", "levels", "advantages"),
    [
        # step GAE, values at the last prompt token V = [.5, .2]: A1 = 1 - .2, A0 = 0 + .2 - .5 + A1
        ("steppo", {}, [[0.5, 0.5], [0.8]]),
        ("steppo", {"ratio_level": "token"}, [[0.5, 0.5], [0.8]]),
        # token GAE over the action tokens, values [.5, .4 | .2], the reward on the last token: A = 1 - V
        ("ppo", {}, [[0.5, 0.6], [0.8]]),
        ("steppo", {"advantage_level": "token"}, [[0.5, 0.6], [0.8]]),
    ],
)
def test_advantage_level_picks_the_timeline(algo: str, levels: dict[str, str], advantages: list[list[float]]) -> None:
    config = _config(algo, **levels)
    step_values, token_values = T([0.5, 0.2]), [T([0.5, 0.4]), T([0.2])]
    if config.step_advantages:
        targets = compute_targets(config, _batch(), step_values=step_values)
        close(targets.returns, [1.0, 1.0])  # type: ignore[arg-type]  # returns is a [rows] tensor here
    else:
        targets = compute_targets(config, _batch(), token_values=token_values)
    for got, want in zip(targets.token_advantages, advantages, strict=True):
        close(got, want)


R1 = 0.8 * math.exp(-0.4)  # step 2 in every combination: one token, ratio e^-.4, advantage .8
LP_OLD = T([[-1.0, -1.0], [-1.0, 0.0]])
LP_NEW = LP_OLD + T([[0.3, -0.1], [-0.4, 0.0]])  # step ratios e^.1 and e^-.4; token ratios e^.3, e^-.1, e^-.4
ROW_MASK = T([[True, True], [True, False]])


@pytest.mark.parametrize(
    ("algo", "levels", "expected", "per_step"),
    [
        # StepPO: one ratio and one advantage per step: e^.1 * .5, then R1 (below the clip, the unclipped term is the smaller)
        ("steppo", {}, -(0.5 * math.exp(0.1) + R1) / 2, True),
        # w/o step-IS: token ratios, the step advantage on each token: (1.2 * .5 [clipped], e^-.1 * .5, .64) / 3 tokens
        ("steppo", {"ratio_level": "token"}, -(0.6 + 0.5 * math.exp(-0.1) + R1) / 3, False),
        # w/o step-GAE: the step ratio e^.1 on token advantages .5 and .6, then step 2: (.64)
        ("steppo", {"advantage_level": "token"}, -((0.5 + 0.6) * math.exp(0.1) / 2 + R1) / 2, True),
        # PPO: token ratios on token advantages: (1.2 * .5, e^-.1 * .6, .64) / 3
        ("ppo", {}, -(0.6 + 0.6 * math.exp(-0.1) + R1) / 3, False),
    ],
)
def test_row_policy_loss_for_each_combination(algo: str, levels: dict[str, str], expected: float, per_step: bool) -> None:
    config = _config(algo, **levels)
    if config.step_advantages:
        targets = compute_targets(config, _batch(), step_values=T([0.5, 0.2]))
    else:
        targets = compute_targets(config, _batch(), token_values=[T([0.5, 0.4]), T([0.2])])
    loss, _, got_per_step = row_policy_loss(config, targets, [0, 1], LP_NEW, LP_OLD, ROW_MASK)
    close(loss, expected)
    assert got_per_step is per_step


@pytest.mark.parametrize(
    ("lengths", "steppo_grad", "token_grad"),
    [
        # equal lengths (2, 2): both give every token -A_i / 4 (StepPO: 1/2 steps x 1/2 tokens; token mean: 1/4 tokens)
        ((2, 2), [[-0.25, -0.25], [0.5, 0.5]], [[-0.25, -0.25], [0.5, 0.5]]),
        # lengths (2, 1): StepPO gives step i's tokens -A_i / (2 n_i), the token mean -A_i / 3
        ((2, 1), [[-0.25, -0.25], [1.0, 0.0]], [[-1 / 3, -1 / 3], [2 / 3, 0.0]]),
    ],
)
def test_step_and_token_ratio_differ_at_ratio_one_only_by_step_length(
    lengths: tuple[int, int], steppo_grad: list[list[float]], token_grad: list[list[float]]
) -> None:
    """At ratio 1 (the first minibatch of an update) and without clipping, StepPO and "w/o step-IS"
    differ only in how they weigh a step's tokens: 1 / (steps x n_i) against 1 / (all tokens)."""
    step_adv = T([1.0, -2.0])
    mask = T([[True, True], [True, lengths[1] == 2]])
    lp = torch.full((2, 2), -1.0, requires_grad=True)
    a, _ = steppo_policy_loss(lp, lp.detach(), step_adv, mask)
    (grad_step,) = torch.autograd.grad(a, lp)
    b, _ = ppo_token_loss(lp, lp.detach(), step_adv[:, None].expand(2, 2), mask)
    (grad_token,) = torch.autograd.grad(b, lp)
    close(grad_step, steppo_grad)
    close(grad_token, token_grad)


def test_levels_are_only_for_critic_algorithms() -> None:
    with pytest.raises(ConfigError, match="steppo and ppo only"):
        load_config("grpo", overrides={"advantage_level": "token"}).validate()
    with pytest.raises(ConfigError, match="ratio_level"):
        load_config("steppo", overrides={"ratio_level": "sequence"})
    assert (load_config("steppo").step_advantages, load_config("steppo").step_ratio) == (True, True)
    assert (load_config("ppo").step_advantages, load_config("ppo").step_ratio) == (False, False)
