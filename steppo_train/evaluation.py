"""Episode-level summaries with 95% bootstrap intervals (used by training logs, eval and the results page)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from steppo_agent.records import Trajectory

__all__ = ["EpisodeSummary", "bootstrap_ci", "summarize"]


def bootstrap_ci(values: Sequence[float], *, samples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: deterministic for a given ``seed`` and independent of the
    order of ``values`` (episodes written in finishing order give the same interval as in task order)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class EpisodeSummary:
    """Means over episodes (success, return, steps) and over steps (invalid rate), with 95% CIs."""

    episodes: int
    success_rate: float
    success_ci: tuple[float, float]
    return_mean: float
    return_ci: tuple[float, float]
    steps_mean: float
    invalid_rate: float
    response_tokens: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/success_rate": self.success_rate,
            f"{prefix}/success_ci_low": self.success_ci[0],
            f"{prefix}/success_ci_high": self.success_ci[1],
            f"{prefix}/return_mean": self.return_mean,
            f"{prefix}/steps_mean": self.steps_mean,
            f"{prefix}/invalid_rate": self.invalid_rate,
            f"{prefix}/episodes": float(self.episodes),
        }


def summarize(trajectories: Sequence[Trajectory], *, seed: int = 0) -> EpisodeSummary:
    """Summarise finished episodes."""
    success = [1.0 if t.success else 0.0 for t in trajectories]
    returns = [float(t.return_) for t in trajectories]
    steps = [len(t.steps) for t in trajectories]
    all_steps = [s for t in trajectories for s in t.steps]
    invalid = sum(1 for s in all_steps if not s.valid)
    return EpisodeSummary(
        episodes=len(trajectories),
        success_rate=float(np.mean(success)) if success else float("nan"),
        success_ci=bootstrap_ci(success, seed=seed),
        return_mean=float(np.mean(returns)) if returns else float("nan"),
        return_ci=bootstrap_ci(returns, seed=seed),
        steps_mean=float(np.mean(steps)) if steps else float("nan"),
        invalid_rate=invalid / max(1, len(all_steps)),
        response_tokens=sum(len(s.response_ids) for s in all_steps),
    )
