"""Issue 37, part 1: what an update did (explained variance, post-update KL and clip fraction), whitening that
does not amplify noise, and a value head whose start does not depend on the backbone's hidden-state norm."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from steppo_train.advantages import whiten, whiten_with_floor
from steppo_train.batch import StepBatch
from steppo_train.config import load_config
from steppo_train.diagnostics import explained_variance, flat_values, policy_movement
from steppo_train.models import Critic, init_value_head
from steppo_train.targets import compute_targets

T = torch.tensor


def k3(x: float) -> float:
    return math.exp(x) - 1 - x


# -- explained variance -----------------------------------------------------------------------------
def test_explained_variance_hand_numbers() -> None:
    returns = T([0.0, 1.0, 0.0, 1.0])
    # R - V = [-.25, .25, 0, 0]: Var = .03125; Var(R) = .25 -> 1 - .125
    assert explained_variance(returns, T([0.25, 0.75, 0.0, 1.0])) == pytest.approx(0.875, abs=1e-12)
    assert explained_variance(returns, returns) == pytest.approx(1.0)
    assert explained_variance(returns, torch.full((4,), 0.5)) == pytest.approx(0.0)  # the mean explains nothing
    assert explained_variance(returns, torch.full((4,), 7.0)) == pytest.approx(0.0)  # a constant offset neither
    # V = 1 - R: R - V = 2R - 1, Var = 1 -> 1 - 1 / .25 = -3 (worse than the mean)
    assert explained_variance(returns, 1 - returns) == pytest.approx(-3.0)
    assert math.isnan(explained_variance(torch.zeros(4), T([0.1, -0.2, 0.3, 0.0])))  # nothing to explain
    assert math.isnan(explained_variance(T([1.0]), T([0.0])))


def test_flat_values_joins_step_and_token_values() -> None:
    torch.testing.assert_close(flat_values(T([1.0, 2.0])), T([1.0, 2.0]))
    torch.testing.assert_close(flat_values(None, [T([1.0, 2.0]), T([3.0])]), T([1.0, 2.0, 3.0]))
    assert flat_values(None) is None


# -- policy movement after the update -----------------------------------------------------------------
NEW = [T([-0.9, -1.2]), T([-0.7])]  # against OLD: token log ratios .1, -.2 | .3
OLD = [T([-1.0, -1.0]), T([-1.0])]


def test_policy_movement_hand_numbers_at_each_level() -> None:
    kl_want = (k3(0.1) + k3(-0.2) + k3(0.3)) / 3
    kl, clipped = policy_movement(NEW, OLD, 0.2, 0.2, "token")
    # token ratios e^.1 = 1.105, e^-.2 = .819 (inside [.8, 1.2]), e^.3 = 1.35 (outside)
    assert kl == pytest.approx(kl_want, abs=1e-6) and clipped == pytest.approx(1 / 3)
    kl, clipped = policy_movement(NEW, OLD, 0.2, 0.2, "step")
    # step ratios e^-.05 (inside), e^.3 (outside); the KL is per token whatever the level
    assert kl == pytest.approx(kl_want, abs=1e-6) and clipped == pytest.approx(1 / 2)
    _, clipped = policy_movement(NEW, OLD, 0.2, 0.2, "sequence", [[0, 1]])
    assert clipped == 0.0  # one sequence: e^(.2 / 3) = 1.069, inside
    _, clipped = policy_movement(NEW, OLD, 0.25, 0.0, "sequence", [[0, 1]])
    assert clipped == 1.0  # an upper clip of 0: any ratio above 1 is outside
    assert policy_movement(OLD, OLD, 0.2, 0.2, "token") == (0.0, 0.0)  # nothing moved
    assert policy_movement([], [], 0.2, 0.2, "step") == (0.0, 0.0)


# -- whitening with a floor -----------------------------------------------------------------------------
def test_whiten_with_floor_hand_numbers() -> None:
    x, m = T([1.0, 3.0, 99.0]), T([True, True, False])
    torch.testing.assert_close(whiten(x, m), T([-1.0, 1.0, 0.0]))
    # signal std over the mask: values 0, .05 -> .025; floor .1 -> factor .25
    torch.testing.assert_close(whiten_with_floor(x, m, T([0.0, 0.05, 5.0]), 0.1), T([-0.25, 0.25, 0.0]))
    # a signal spread at or above the floor: plain whitening; floor 0: plain whitening
    torch.testing.assert_close(whiten_with_floor(x, m, T([0.0, 1.0, 0.0]), 0.1), T([-1.0, 1.0, 0.0]))
    torch.testing.assert_close(whiten_with_floor(x, m, T([0.0, 0.0, 0.0]), 0.0), T([-1.0, 1.0, 0.0]))
    # constant returns: exactly zero
    torch.testing.assert_close(whiten_with_floor(x, m, T([0.3, 0.3, 0.0]), 0.1), T([0.0, 0.0, 0.0]))


def _batch(rewards: list[list[float]]) -> StepBatch:
    """Four terminated trajectories of three steps (one group), 2 response tokens per step."""
    n, s = len(rewards), len(rewards[0])
    rows = [(b, t) for b in range(n) for t in range(s)]
    return StepBatch(
        prompt_ids=[[1, 2, 3]] * len(rows), response_ids=[[5, 6]] * len(rows), rollout_logprobs=[[0.0, 0.0]] * len(rows),
        traj_index=T([b for b, _ in rows]), step_index=T([t for _, t in rows]), rewards=T(rewards),
        step_mask=torch.ones(n, s, dtype=torch.bool), terminated=torch.ones(n, dtype=torch.bool),
        truncated=torch.zeros(n, dtype=torch.bool), group_ids=T([0] * n),
        anchor_ids=T([[t for t in range(s)]] * n), returns=T(rewards).sum(1),
    )


def _mean_abs_advantage(algo: str, rewards: list[list[float]], **overrides: object) -> float:
    config = load_config(algo, overrides={"group_size": 4, **overrides})
    batch = _batch(rewards)
    g = torch.Generator().manual_seed(0)
    step_values = (torch.rand(batch.num_rows, generator=g) - 0.5)  # critic noise, |V| up to .5
    token_values = [torch.rand(2, generator=g) - 0.5 for _ in range(batch.num_rows)]
    targets = compute_targets(config, batch, step_values=step_values, token_values=token_values)
    return float(torch.cat(targets.token_advantages).abs().mean())


ZERO = [[0.0, 0.0, 0.0]] * 4
ONE_WIN = [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("algo", ["steppo", "ppo", "grpo", "rloo", "reinforce_pp", "gigpo", "gspo"])
def test_an_all_zero_reward_batch_gets_small_advantages(algo: str) -> None:
    assert _mean_abs_advantage(algo, ZERO) < 0.05


@pytest.mark.parametrize("algo", ["steppo", "ppo"])
def test_plain_whitening_turned_critic_noise_into_unit_advantages(algo: str) -> None:
    # what the floor fixes: without it the same reward-free batch gets full-size advantages
    assert _mean_abs_advantage(algo, ZERO, whiten_floor=0.0) > 0.5
    # and a batch with a reward keeps whitened, unit-scale advantages (returns std .43 > floor .1)
    assert _mean_abs_advantage(algo, ONE_WIN) == pytest.approx(_mean_abs_advantage(algo, ONE_WIN, whiten_floor=0.0))
    assert _mean_abs_advantage(algo, ONE_WIN) > 0.5


# -- the value head's start -----------------------------------------------------------------------------
class _Backbone(nn.Module):
    """Hidden states = a fixed random projection of the token ids, times ``scale``."""

    def __init__(self, scale: float, hidden: int = 16) -> None:
        super().__init__()
        self.scale = scale
        self.table = torch.randn(100, hidden, generator=torch.Generator().manual_seed(3))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.table[input_ids] * self.scale)


def test_the_value_head_start_does_not_depend_on_the_hidden_state_norm() -> None:
    ids = torch.arange(40).reshape(2, 20)
    values = []
    for scale in (1.0, 58.0):
        critic = Critic(_Backbone(scale), 16)
        init_value_head(critic, seed=0, std=1e-3)
        values.append(critic(ids).detach())
    torch.testing.assert_close(values[0], values[1], atol=1e-6, rtol=1e-4)  # same values at any hidden scale
    assert float(values[0].abs().max()) < 5e-3  # V starts near 0: N(0, 1e-3^2)
    assert float(values[0].std()) > 1e-4  # but not exactly 0: the backbone gets a gradient at the first step
    critic = Critic(_Backbone(58.0), 16)
    init_value_head(critic, seed=0, std=0.0)
    assert float(critic(ids).detach().abs().max()) == 0.0
