"""The one episode-summary module: ``steppo inspect``, ``steppo eval``, the trainer's metrics and the
experiments all summarise trajectories here.

:func:`summarize` reduces trajectories to a :class:`Summary` (episodes, success rate with a 95%
bootstrap interval, steps, return, invalid rate, reward by step index, action kinds, validity,
finish reasons, token counts); :meth:`Summary.as_metrics` gives the trainer's metric names;
:func:`format_summary` prints it; :func:`split_table` is the per-split table of ``steppo eval``; :func:`plot_summary` writes
PNG charts with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steppo_agent.records import Trajectory

__all__ = ["SPLIT_KEYS", "SplitRow", "Summary", "bootstrap_ci", "format_split_table", "format_summary", "plot_summary",
           "split_of", "split_table", "summarize"]

#: ``info["extra"]`` keys that name a task's split / family, in order of preference.
SPLIT_KEYS: tuple[str, ...] = ("split", "dataset", "task_type", "preset", "source")


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


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


@dataclass
class Summary:
    """Aggregate numbers of a set of trajectories. An episode whose env reported no success
    (``success is None``) is left out of ``success_rate`` and its interval and counted in
    ``unknown_success``; every other figure counts every episode."""

    episodes: int = 0
    groups: int = 0
    success_rate: float | None = None
    success_ci: tuple[float, float] = (float("nan"), float("nan"))
    unknown_success: int = 0
    invalid_rate: float = 0.0
    mean_steps: float = 0.0
    mean_return: float = 0.0
    min_return: float = 0.0
    max_return: float = 0.0
    total_steps: int = 0
    reward_by_step: list[float] = field(default_factory=list)
    episodes_by_step: list[int] = field(default_factory=list)
    valid_by_step: list[float] = field(default_factory=list)
    action_kinds: dict[str, int] = field(default_factory=dict)
    validity: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    endings: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    response_tokens: int = 0
    mean_prompt_tokens: float = 0.0
    mean_response_tokens: float = 0.0
    max_prompt_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """The trainer's metric names (``<prefix>/success_rate`` ...); NaN where nothing was measured."""
        nan = float("nan")
        return {
            f"{prefix}/success_rate": nan if self.success_rate is None else self.success_rate,
            f"{prefix}/success_ci_low": self.success_ci[0],
            f"{prefix}/success_ci_high": self.success_ci[1],
            f"{prefix}/return_mean": self.mean_return if self.episodes else nan,
            f"{prefix}/steps_mean": self.mean_steps if self.episodes else nan,
            f"{prefix}/invalid_rate": self.invalid_rate,
            f"{prefix}/episodes": float(self.episodes),
        }


def _ending(traj: Trajectory) -> str:
    if traj.terminated:
        return "terminated"
    if traj.truncated:
        return f"truncated:{traj.truncation_reason or 'unknown'}"
    return "unfinished"


def summarize(trajs: Iterable[Trajectory], *, seed: int = 0) -> Summary:
    """Reduce trajectories to a :class:`Summary` (``seed``: the bootstrap's, for the success interval)."""
    trajs = list(trajs)
    s = Summary(episodes=len(trajs), groups=len({t.group_id for t in trajs}))
    if not trajs:
        return s
    successes = [float(bool(t.success)) for t in trajs if t.success is not None]
    s.unknown_success = len(trajs) - len(successes)
    s.success_rate = _mean(successes) if successes else None
    s.success_ci = bootstrap_ci(successes, seed=seed)
    returns = [t.return_ for t in trajs]
    s.mean_return, s.min_return, s.max_return = _mean(returns), min(returns), max(returns)
    s.mean_steps = _mean([float(len(t.steps)) for t in trajs])
    steps = [st for t in trajs for st in t.steps]
    s.total_steps = len(steps)
    horizon = max((len(t.steps) for t in trajs), default=0)
    for k in range(horizon):
        at_k = [t.steps[k] for t in trajs if len(t.steps) > k]
        s.episodes_by_step.append(len(at_k))
        s.reward_by_step.append(_mean([st.reward for st in at_k]))
        s.valid_by_step.append(_mean([float(st.valid) for st in at_k]))
    s.action_kinds = dict(Counter(str((st.action or {}).get("kind", "none")) for st in steps).most_common())
    s.validity = dict(Counter("valid" if st.valid else "invalid" for st in steps).most_common())
    s.invalid_rate = sum(1 for st in steps if not st.valid) / max(1, len(steps))
    s.finish_reasons = dict(Counter(st.finish_reason for st in steps).most_common())
    s.endings = dict(Counter(_ending(t) for t in trajs).most_common())
    s.prompt_tokens = sum(len(st.prompt_ids) for st in steps)
    s.response_tokens = sum(len(st.response_ids) for st in steps)
    s.mean_prompt_tokens = s.prompt_tokens / len(steps) if steps else 0.0
    s.mean_response_tokens = s.response_tokens / len(steps) if steps else 0.0
    s.max_prompt_tokens = max((len(st.prompt_ids) for st in steps), default=0)
    return s


def _counts(d: dict[str, int]) -> str:
    total = sum(d.values()) or 1
    return ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in d.items()) or "-"


def format_summary(s: Summary, *, title: str = "") -> str:
    """A human-readable multi-line report of a :class:`Summary`."""
    rate = "n/a" if s.success_rate is None else f"{100 * s.success_rate:.1f}%"
    lines = [title] if title else []
    lines += [
        f"episodes        {s.episodes} ({s.groups} groups)",
        f"success rate    {rate}",
        f"steps           {s.total_steps} total, {s.mean_steps:.2f} per episode",
        f"return          mean {s.mean_return:+.3f}  min {s.min_return:+.3f}  max {s.max_return:+.3f}",
        f"endings         {_counts(s.endings)}",
        f"action kinds    {_counts(s.action_kinds)}",
        f"validity        {_counts(s.validity)}",
        f"finish reasons  {_counts(s.finish_reasons)}",
        f"tokens          prompt {s.prompt_tokens} (mean {s.mean_prompt_tokens:.0f}, max {s.max_prompt_tokens}), "
        f"response {s.response_tokens} (mean {s.mean_response_tokens:.1f})",
        "by step index   step  episodes  mean reward  valid",
    ]
    for k, (n, r, v) in enumerate(zip(s.episodes_by_step, s.reward_by_step, s.valid_by_step, strict=True)):
        lines.append(f"                {k:>4}  {n:>8}  {r:>+11.3f}  {100 * v:>4.0f}%")
    return "\n".join(lines)


def split_of(traj: Trajectory) -> str:
    """A trajectory's split: the first :data:`SPLIT_KEYS` entry of the last ``info["extra"]``, else the
    ``split`` env option, else ``"all"``."""
    extra = (traj.steps[-1].info.get("extra") or {}) if traj.steps else {}
    for key in SPLIT_KEYS:
        if isinstance(extra, dict) and extra.get(key) not in (None, ""):
            return str(extra[key])
    return str(traj.env_kwargs.get("split", "all"))


@dataclass(frozen=True)
class SplitRow:
    """One row of the eval table."""

    split: str
    episodes: int
    success_rate: float | None
    mean_return: float
    mean_steps: float


def split_table(trajs: Iterable[Trajectory]) -> list[SplitRow]:
    """Success / return / steps per split (sorted), plus a final ``"all"`` row when there are several."""
    trajs = list(trajs)
    by: dict[str, list[Trajectory]] = {}
    for t in trajs:
        by.setdefault(split_of(t), []).append(t)
    groups = sorted(by.items())
    if len(groups) != 1:
        groups.append(("all", trajs))
    rows = []
    for name, ts in groups:
        s = summarize(ts)
        rows.append(SplitRow(name, s.episodes, s.success_rate, s.mean_return, s.mean_steps))
    return rows


def format_split_table(rows: Sequence[SplitRow]) -> str:
    """The eval table as aligned text."""
    width = max([5] + [len(r.split) for r in rows])
    out = [f"{'split':<{width}}  episodes  success  mean return  mean steps"]
    for r in rows:
        rate = "   n/a" if r.success_rate is None else f"{100 * r.success_rate:5.1f}%"
        out.append(f"{r.split:<{width}}  {r.episodes:>8}  {rate:>7}  {r.mean_return:>+11.3f}  {r.mean_steps:>10.2f}")
    return "\n".join(out)


def plot_summary(trajs: Iterable[Trajectory], out_dir: str | Path) -> list[Path]:
    """Write PNG charts (return histogram, reward / validity by step, action kinds, response lengths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trajs = list(trajs)
    s = summarize(trajs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist([t.return_ for t in trajs] or [0.0], bins=20, color="tab:blue")
    ax.set(title="Episode return", xlabel="return", ylabel="episodes")
    save(fig, "returns.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    idx = list(range(len(s.reward_by_step)))
    ax.plot(idx, s.reward_by_step, marker="o", label="mean reward")
    ax.plot(idx, s.valid_by_step, marker="s", label="valid fraction")
    ax.set(title="By step index", xlabel="step", ylabel="value")
    ax.legend()
    save(fig, "reward_by_step.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    kinds = s.action_kinds or {"none": 0}
    ax.bar(list(kinds), list(kinds.values()), color="tab:green")
    ax.set(title="Action kinds", ylabel="steps")
    save(fig, "action_kinds.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist([len(st.response_ids) for t in trajs for st in t.steps] or [0], bins=20, color="tab:orange")
    ax.set(title="Response length", xlabel="tokens", ylabel="steps")
    save(fig, "response_tokens.png")
    return written
