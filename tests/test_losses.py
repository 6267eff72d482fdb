"""Losses against hand-computed numbers; the step ratio is exactly the geometric mean."""

from __future__ import annotations

import math

import pytest
import torch

from steppo_train.losses import (
    entropy_bonus,
    entropy_from_logits,
    gspo_loss,
    kl_penalty,
    kl_per_token,
    masked_mean,
    ppo_token_loss,
    step_behaviour_weights,
    step_ratio,
    step_ratio_token_advantage_loss,
    steppo_policy_loss,
    token_behaviour_weights,
    value_loss,
)

T = torch.tensor


def close(a: torch.Tensor | float, b: float | list, atol: float = 1e-6) -> None:
    a_t = a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=torch.float64)
    torch.testing.assert_close(a_t, torch.tensor(b, dtype=a_t.dtype), atol=atol, rtol=0)


def k3(x: float) -> float:
    return math.exp(x) - 1 - x


def test_step_ratio_is_geometric_mean_of_token_ratios() -> None:
    gen = torch.Generator().manual_seed(0)
    new = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    old = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    lengths = [6, 3, 1, 0]
    mask = torch.zeros(4, 6, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    new[~mask] = -math.inf  # padding garbage must not leak
    ratio = step_ratio(new, old, mask)
    for i, n in enumerate(lengths):
        token_ratios = torch.exp(new[i, :n] - old[i, :n])
        geo = torch.prod(token_ratios) ** (1.0 / n) if n else torch.tensor(1.0, dtype=torch.float64)
        torch.testing.assert_close(ratio[i], geo, rtol=1e-12, atol=0)
    close(step_ratio(T([[math.log(2.0), math.log(8.0)]]), T([[0.0, 0.0]]), T([[1, 1]])), [4.0])


# Rows = steps. log-ratios: row0 [.1 .3] (rho e^.2, A +1 -> clipped at 1.2); row1 [-.5 .1 -.2]
# (rho e^-.2 = .818731, A +2, inside the clip); row2 [-.3] (rho e^-.3 = .740818, A -1 -> clipped at .8);
# row3 has no action tokens and is excluded.
LOG_RATIOS = [[0.1, 0.3, 0.0], [-0.5, 0.1, -0.2], [-0.3, 0.0, 0.0], [0.0, 0.0, 0.0]]
MASK = T([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
ADV = T([1.0, 2.0, -1.0, 5.0])
OLD = torch.full((4, 3), -1.0)


def _new(requires_grad: bool = False) -> torch.Tensor:
    return (OLD + T(LOG_RATIOS)).requires_grad_(requires_grad)


def test_steppo_policy_loss_hand_numbers_and_stats() -> None:
    rho1 = math.exp(-0.2)
    loss, stats = steppo_policy_loss(_new(), OLD, ADV, MASK, 0.2, 0.2)
    close(loss, (-1.2 - 2 * rho1 + 0.8) / 3)
    close(stats.clip_fraction, 2 / 3)
    close(stats.ratio_mean, (math.exp(0.2) + rho1 + math.exp(-0.3)) / 3)
    close(stats.ratio_min, math.exp(-0.3))
    close(stats.ratio_max, math.exp(0.2))
    close(stats.approx_kl, sum(k3(x) for x in [0.1, 0.3, -0.5, 0.1, -0.2, -0.3]) / 6)
    token_loss, _ = steppo_policy_loss(_new(), OLD, ADV, MASK, 0.2, 0.2, aggregation="token_mean")
    close(token_loss, (2 * -1.2 + 3 * -2 * rho1 + 1 * 0.8) / 6)
    # asymmetric clip: eps_high .28 leaves row 0 unclipped
    loss_hi, stats_hi = steppo_policy_loss(_new(), OLD, ADV, MASK, 0.2, 0.28)
    close(loss_hi, (-math.exp(0.2) - 2 * rho1 + 0.8) / 3)
    close(stats_hi.clip_fraction, 1 / 3)


def test_steppo_gradient_weights_each_token_by_one_over_step_length() -> None:
    new = _new(requires_grad=True)
    loss, _ = steppo_policy_loss(new, OLD, ADV, MASK, 0.2, 0.2)
    loss.backward()
    assert new.grad is not None
    expected = torch.zeros(4, 3)
    expected[1] = -(1 / 3) * (1 / 3) * math.exp(-0.2) * 2.0  # only the unclipped row gets gradient
    torch.testing.assert_close(new.grad, expected, atol=1e-7, rtol=0)


def test_gspo_equals_steppo_for_one_step_trajectories() -> None:
    gen = torch.Generator().manual_seed(1)
    # two trajectories of one step each: steppo rows (steps) == gspo rows (whole trajectories)
    steps_new = [-torch.rand(n, generator=gen) for n in (3, 2)]
    steps_old = [-torch.rand(n, generator=gen) for n in (3, 2)]
    adv = T([0.7, -1.3])

    def rows(parts: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [torch.cat(p) for p in parts]
        width = max(len(s) for s in seqs)
        out = torch.zeros(len(seqs), width)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
            mask[i, : len(s)] = True
        return out, mask

    new_steps, mask_steps = rows([[s] for s in steps_new])
    old_steps, _ = rows([[s] for s in steps_old])
    new_traj, mask_traj = rows([[steps_new[0]], [steps_new[1]]])  # concatenation of each trajectory's steps
    old_traj, _ = rows([[steps_old[0]], [steps_old[1]]])
    a, sa = steppo_policy_loss(new_steps, old_steps, adv, mask_steps, 0.1, 0.1)
    b, sb = gspo_loss(new_traj, old_traj, adv, mask_traj, 0.1, 0.1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sa == sb
    # a two-step trajectory: the sequence ratio mixes both steps, so the losses differ
    new2, m2 = rows([steps_new])
    old2, _ = rows([steps_old])
    g, _ = gspo_loss(new2, old2, T([1.0]), m2, 10.0, 10.0)
    s, _ = steppo_policy_loss(new_steps, old_steps, T([1.0, 1.0]), mask_steps, 10.0, 10.0)
    ratio_all = torch.exp((torch.cat(steps_new) - torch.cat(steps_old)).mean())
    torch.testing.assert_close(g, -ratio_all)
    assert not torch.allclose(g, s)


def test_ppo_token_loss_hand_numbers() -> None:
    lr = T([[0.3, -0.3, 0.0], [0.1, 0.0, 0.0]])
    adv = T([[1.0, -1.0, 2.0], [0.5, 9.0, 9.0]])
    mask = T([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    old = torch.full((2, 3), -2.0)
    # token losses: -1.2 (clipped), +.8 (clipped), -2, -.5*e^.1
    t3 = -0.5 * math.exp(0.1)
    loss, stats = ppo_token_loss(old + lr, old, adv, mask, 0.2, 0.2)
    close(loss, (-1.2 + 0.8 - 2.0 + t3) / 4)
    close(stats.clip_fraction, 0.5)
    close(stats.ratio_mean, (math.exp(0.3) + math.exp(-0.3) + 1 + math.exp(0.1)) / 4)
    row_loss, _ = ppo_token_loss(old + lr, old, adv, mask, 0.2, 0.2, aggregation="row_mean")
    close(row_loss, ((-1.2 + 0.8 - 2.0) / 3 + t3) / 2)
    hi_loss, _ = ppo_token_loss(old + lr, old, adv, mask, 0.2, 0.4)
    close(hi_loss, (-math.exp(0.3) + 0.8 - 2.0 + t3) / 4)
    with pytest.raises(ValueError, match="aggregation"):
        ppo_token_loss(old + lr, old, adv, mask, aggregation="sum")  # type: ignore[arg-type]


def test_value_loss_clipped_and_unclipped() -> None:
    values = T([1.0, 2.0, 0.0])
    old = T([0.5, 2.1, 0.0])
    returns = T([2.0, 0.0, 50.0])
    mask = T([1, 1, 0])
    # e0: (1-2)^2 = 1 vs (0.7-2)^2 = 1.69 -> 1.69 (clip active); e1: 4 vs (2.0-0)^2 = 4 -> 4
    loss, stats = value_loss(values, old, returns, mask, 0.2)
    close(loss, 0.5 * (1.69 + 4.0) / 2)
    close(stats.clip_fraction, 0.5)
    close(stats.mse, 2.5)
    plain, plain_stats = value_loss(values, old, returns, mask, None)
    close(plain, 0.5 * 2.5)
    close(plain_stats.clip_fraction, 0.0)


def test_kl_estimators() -> None:
    logp = T([-1.0, -2.0, -3.0])
    ref = T([-1.5, -1.0, 7.0])
    mask = T([1, 1, 0])  # r = ref - logp = [-.5, 1]
    close(kl_per_token(logp, ref, "k3")[:2], [k3(-0.5), k3(1.0)])
    close(kl_penalty(logp, ref, mask), (k3(-0.5) + k3(1.0)) / 2)
    close(kl_penalty(logp, ref, mask, kind="k1"), (0.5 - 1.0) / 2)
    close(kl_penalty(logp, ref, mask, kind="k2"), (0.125 + 0.5) / 2)
    close(kl_penalty(logp, logp, mask), 0.0)
    with pytest.raises(ValueError, match="kind"):
        kl_per_token(logp, ref, "k4")  # type: ignore[arg-type]


def test_entropy_bonus_from_logits_or_precomputed() -> None:
    logits = T([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf, -math.inf], [5.0, 0.0, 0.0, 0.0]])
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    ent = entropy_from_logits(logits[:2])
    close(ent, [math.log(4.0), h1])
    mask = T([1, 1, 0])
    close(
        entropy_bonus(mask, logits=torch.cat([logits[:2], T([[1.0, 2.0, 3.0, 4.0]])])),
        (math.log(4.0) + h1) / 2,
    )
    close(entropy_bonus(mask, entropy=T([1.0, 3.0, 100.0])), 2.0)
    with pytest.raises(ValueError, match="exactly one"):
        entropy_bonus(mask)


def test_masked_mean_and_empty_mask() -> None:
    x = T([[1.0, 2.0], [3.0, 4.0]])
    close(masked_mean(x, T([[1, 0], [1, 1]])), 8 / 3)
    close(masked_mean(x, T([[1, 0], [1, 1]]), dim=-1), [1.0, 3.5])
    loss, stats = steppo_policy_loss(x, x, T([1.0, 1.0]), torch.zeros(2, 2, dtype=torch.bool))
    close(loss, 0.0)
    assert stats.ratio_mean == 1.0


# -- decoupled PPO: the behaviour correction w = min(pi_prox / mu, cap) for stale rollouts ------------
LOG = math.log


def test_token_behaviour_weights_are_truncated_ratios_and_one_off_the_mask() -> None:
    prox = T([[LOG(0.5), LOG(0.2), 0.0]])
    mu = T([[LOG(0.25), LOG(0.4), -3.0]])
    mask = T([[True, True, False]])
    # 0.5 / 0.25 = 2 -> capped at 1.5; 0.2 / 0.4 = 0.5; padding -> 1
    close(token_behaviour_weights(prox, mu, mask, cap=1.5), [[1.5, 0.5, 1.0]])


def test_step_behaviour_weights_are_truncated_geometric_means() -> None:
    prox = T([[LOG(0.5), LOG(0.2)], [LOG(0.9), LOG(0.9)], [LOG(0.3), 0.0], [0.0, 0.0]])
    mu = T([[LOG(0.25), LOG(0.4)], [LOG(0.3), LOG(0.3)], [LOG(0.6), 0.0], [-1.0, -1.0]])
    mask = T([[True, True], [True, True], [True, False], [False, False]])
    # sqrt(2 * 0.5) = 1; sqrt(3 * 3) = 3 -> cap 2; 0.3 / 0.6 = 0.5; no action tokens -> 1
    close(step_behaviour_weights(prox, mu, mask, cap=2.0), [1.0, 2.0, 0.5, 1.0])


def test_fresh_rows_get_weight_exactly_one_and_the_loss_is_unchanged() -> None:
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    mask = T([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    adv = T([0.5, -1.0, 2.0])
    w_step = step_behaviour_weights(old, old, mask, cap=2.0)  # mu == pi_prox: on-policy
    w_tok = token_behaviour_weights(old, old, mask, cap=2.0)
    assert torch.equal(w_step, torch.ones(3)) and torch.equal(w_tok, torch.ones(3, 4))
    assert torch.equal(steppo_policy_loss(new, old, adv, mask, weights=w_step)[0], steppo_policy_loss(new, old, adv, mask)[0])
    adv_tok = adv[:, None].expand(3, 4)
    assert torch.equal(ppo_token_loss(new, old, adv_tok, mask, weights=w_tok)[0], ppo_token_loss(new, old, adv_tok, mask)[0])


def test_decoupled_step_loss_weighs_each_step_by_its_correction() -> None:
    # pi_theta == pi_prox (ratio 1, no clip): l_i = -A_i; weighted by w = (1.5, 0.5): (-1.5 + 1.0) / 2
    lp = T([[LOG(0.5), LOG(0.5)], [LOG(0.2), 0.0]])
    mask = T([[True, True], [True, False]])
    adv = T([1.0, -2.0])
    loss, _ = steppo_policy_loss(lp, lp, adv, mask, weights=T([1.5, 0.5]))
    close(loss, -0.25)
    close(steppo_policy_loss(lp, lp, adv, mask)[0], 0.5)  # unweighted: (-1 + 2) / 2
    # token advantages with a step ratio: the step's weight multiplies each of its tokens' losses
    adv_tok = T([[1.0, 3.0], [-2.0, 0.0]])
    loss_t, _ = step_ratio_token_advantage_loss(lp, lp, adv_tok, mask, weights=T([1.5, 0.5]))
    close(loss_t, (1.5 * -2.0 + 0.5 * 2.0) / 2)  # row means -2 and 2, weighted


def test_decoupled_token_loss_and_clip_around_the_proximal_policy() -> None:
    # ratio pi_theta / pi_prox = (1.5, 1, 1); clip 0.2 caps the first at 1.2 for A > 0
    prox = T([[LOG(0.4), LOG(0.5)], [LOG(0.1), 0.0]])
    new = T([[LOG(0.6), LOG(0.5)], [LOG(0.1), 0.0]])
    mask = T([[True, True], [True, False]])
    adv = T([[1.0, 1.0], [2.0, 0.0]])
    w = T([[2.0, 0.5], [1.0, 1.0]])
    loss, st = ppo_token_loss(new, prox, adv, mask, weights=w)
    close(loss, (-(1.2 * 1.0) * 2.0 - 1.0 * 0.5 - 2.0 * 1.0) / 3)
    close(st.clip_fraction, 1 / 3)
    # the gradient of a clipped token is zero whatever its weight; the others get -w * A * ratio
    new_req = new.clone().requires_grad_(True)
    ppo_token_loss(new_req, prox, adv, mask, weights=w)[0].backward()
    assert new_req.grad is not None
    close(new_req.grad, [[0.0, -0.5 / 3], [-2.0 / 3, 0.0]])
