"""Bootstrap intervals and episode summaries: exact on hand-built inputs, independent of episode order."""

from __future__ import annotations

import numpy as np

from steppo_agent.analysis import bootstrap_ci, summarize


def test_bootstrap_ci_constant_values_and_empty() -> None:
    assert bootstrap_ci([1.0] * 7) == (1.0, 1.0)
    assert bootstrap_ci([0.0, 0.0]) == (0.0, 0.0)
    lo, hi = bootstrap_ci([])
    assert np.isnan(lo) and np.isnan(hi)


def test_bootstrap_ci_is_deterministic_and_order_independent() -> None:
    values = [1.0] * 63 + [0.0] * 37
    shuffled = list(np.random.default_rng(5).permutation(values))
    ci = bootstrap_ci(values)
    assert ci == bootstrap_ci(shuffled) == bootstrap_ci(values, seed=0)
    lo, hi = ci
    assert 0.50 < lo < 0.63 < hi < 0.75  # binomial normal approximation: 0.63 +- 0.095
    assert bootstrap_ci(values, seed=1) != ci or bootstrap_ci(values, seed=2) != ci
    narrow = bootstrap_ci(values, level=0.5)
    assert lo < narrow[0] < narrow[1] < hi


def _traj(success: bool | None, rewards: list[float], valid: list[bool]):  # type: ignore[no-untyped-def]
    from steppo_agent.records import Step, Trajectory

    steps = [Step(index=i, observation="o", prompt_ids=[1, 2], response_ids=[3], response_logprobs=[-0.5],
                  response_text="a", reward=r, valid=v, terminated=i == len(rewards) - 1)
             for i, (r, v) in enumerate(zip(rewards, valid, strict=True))]
    return Trajectory.model_construct(id=f"{len(rewards)}-{success}", env_id="toy", task_id="t", group_id="g", steps=steps,
                                      success=success, terminated=True, return_=sum(rewards))


def test_one_summary_for_every_caller_hand_numbers() -> None:
    """The trainer's metrics, steppo eval and steppo inspect read the same Summary: success over the
    episodes that report it (unknown ones counted apart), return and steps over all, invalid rate over steps."""
    trajs = [_traj(True, [0.0, 1.0], [True, True]), _traj(False, [0.0], [False]), _traj(None, [0.5, 0.0, 0.0], [True, False, True])]
    s = summarize(trajs)
    assert s.episodes == 3 and s.unknown_success == 1 and s.success_rate == 0.5
    assert s.mean_return == (1.0 + 0.0 + 0.5) / 3 and s.mean_steps == 2.0 and s.invalid_rate == 2 / 6
    m = s.as_metrics("eval")
    assert m["eval/success_rate"] == 0.5 and m["eval/episodes"] == 3.0 and m["eval/invalid_rate"] == 2 / 6
    assert m["eval/success_ci_low"] <= 0.5 <= m["eval/success_ci_high"]
    assert s.success_ci == bootstrap_ci([1.0, 0.0])
    assert np.isnan(summarize([]).as_metrics("x")["x/success_rate"])
