"""Open episodes of the gateway: steps in arrival order, rewards, endings, and the one writer.

Every request is a step of the episode it names (or of a one-step episode of its own). An episode is
written with :class:`~steppo_agent.trajectory_io.TrajectoryWriter` (the writer of ``steppo rollout``:
append, flush, fsync) when the client ends it, when it has been idle for ``idle_timeout_s``
(truncated, ``idle_timeout``) or when the gateway shuts down (truncated, ``shutdown``). A step is recorded only once its request
succeeded and its response was produced: a request that failed, or whose client left, is never
added, so it leaves the episode as it was.

All methods run on the server's event loop thread (no locks needed).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from steppo_agent.records import PolicyInfo, SamplingConfig, Step, Trajectory
from steppo_agent.trajectory_io import TrajectoryWriter

__all__ = ["EpisodeHeader", "EpisodeStore", "OpenEpisode", "UnknownEpisodeError"]


class UnknownEpisodeError(KeyError):
    """No open episode has this id (never started, or already ended)."""


@dataclass(frozen=True)
class EpisodeHeader:
    """What one request says about its episode's record (taken from the first recorded step)."""

    group_id: str | None
    system_prompt: str
    tools: list[dict[str, Any]]
    sampling: SamplingConfig

    def apply(self, traj: Trajectory) -> None:
        traj.group_id = self.group_id or traj.id
        traj.system_prompt, traj.tools, traj.sampling = self.system_prompt, list(self.tools), self.sampling
        traj.seed = self.sampling.seed or 0


@dataclass
class OpenEpisode:
    """An episode in flight: its record so far and its bookkeeping."""

    traj: Trajectory
    last_seen: float
    next_seq: int = 0
    pending: set[int] = field(default_factory=set)
    done: dict[int, Step] = field(default_factory=dict)
    messages_seen: int = 0


class EpisodeStore:
    """Episodes by id; ended ones go to ``writer``."""

    def __init__(self, writer: TrajectoryWriter, policy: PolicyInfo, env_id: str) -> None:
        self.writer, self.policy, self.env_id = writer, policy, env_id
        self.open: dict[str, OpenEpisode] = {}
        self.written = 0

    def begin_step(self, episode_id: str, header: EpisodeHeader) -> int:
        """Reserve the next step slot (arrival order) of ``episode_id``, opening the episode if needed
        (its record header comes from ``header`` until a step is recorded)."""
        ep = self.open.get(episode_id)
        if ep is None:
            traj = Trajectory(id=episode_id, env_id=self.env_id, task_id="", seed=0, group_id=episode_id,
                              system_prompt="", tools=[], policy=self.policy, sampling=header.sampling)
            ep = self.open[episode_id] = OpenEpisode(traj=traj, last_seen=time.monotonic())
            header.apply(traj)
        ep.last_seen = time.monotonic()
        seq = ep.next_seq
        ep.next_seq += 1
        ep.pending.add(seq)
        return seq

    def record_step(self, episode_id: str, seq: int, step: Step, header: EpisodeHeader,
                    messages: list[dict[str, Any]]) -> bool:
        """Store the step of slot ``seq`` (its request succeeded and its response was produced): the
        first recorded step sets the record's header (system prompt, tools, group, sampling);
        ``info["messages"]`` gets the messages added since the previous recorded step, ``info["sampling"]``
        the request's sampling when it differs from the episode's. False when the episode has ended meanwhile."""
        ep = self.open.get(episode_id)
        if ep is None:
            warnings.warn(f"episode {episode_id!r} ended while a step was generated: that step is not recorded.",
                          stacklevel=2)
            return False
        ep.pending.discard(seq)
        ep.last_seen = time.monotonic()
        if not ep.done:
            header.apply(ep.traj)
        start = ep.messages_seen if ep.messages_seen <= len(messages) else 0
        ep.messages_seen = len(messages)
        step.info["messages"] = messages[start:]
        if header.sampling != ep.traj.sampling:
            step.info["sampling"] = header.sampling.model_dump()
        ep.done[seq] = step
        return True

    def drop_step(self, episode_id: str, seq: int) -> None:
        """Give up slot ``seq`` (its request failed, or its client left): the episode stays as it was."""
        ep = self.open.get(episode_id)
        if ep is not None:
            ep.pending.discard(seq)
            ep.last_seen = time.monotonic()

    def steps(self, episode_id: str) -> list[Step]:
        """The episode's completed steps in arrival order, indices renumbered 0..n-1."""
        ep = self._get(episode_id)
        out = [ep.done[k] for k in sorted(ep.done)]
        for i, step in enumerate(out):
            step.index = i
        return out

    def add_reward(self, episode_id: str, reward: float, step: int | None = None) -> Step:
        """Add ``reward`` to step ``step`` (default: the last completed step)."""
        steps = self.steps(episode_id)
        if not steps:
            raise UnknownEpisodeError(f"episode {episode_id} has no completed step to reward yet")
        index = len(steps) - 1 if step is None else step
        if not 0 <= index < len(steps):
            raise IndexError(f"episode {episode_id} has steps 0..{len(steps) - 1}, not {step}")
        steps[index].reward += float(reward)
        self._get(episode_id).last_seen = time.monotonic()
        return steps[index]

    def end(self, episode_id: str, *, terminated: bool = True, truncated: bool = False,
            truncation_reason: str | None = None, reward: float | None = None, success: bool | None = None,
            metrics: dict[str, float] | None = None, task_id: str | None = None) -> Trajectory:
        """Close the episode and write it (unless it has no step); ``reward`` is added to its last step."""
        steps = self.steps(episode_id)
        ep = self.open.pop(episode_id)
        traj = ep.traj
        traj.steps = steps
        if reward is not None and steps:
            steps[-1].reward += float(reward)
        if steps:
            steps[-1].terminated, steps[-1].truncated = terminated, truncated
        traj.terminated, traj.truncated = terminated, truncated
        traj.truncation_reason = (truncation_reason or "client") if truncated else None
        traj.return_ = float(sum(s.reward for s in steps))
        traj.success = success
        traj.metrics = {k: float(v) for k, v in (metrics or {}).items()}
        if task_id is not None:
            traj.task_id = task_id
        if steps:  # an episode whose every request failed leaves no record
            self.writer.write(traj)
            self.written += 1
        return traj

    def expire(self, idle_timeout_s: float) -> list[str]:
        """End (truncated, ``idle_timeout``) every episode idle for longer than ``idle_timeout_s``
        with no step in flight; return their ids."""
        now = time.monotonic()
        stale = [k for k, ep in self.open.items() if not ep.pending and now - ep.last_seen > idle_timeout_s]
        for k in stale:
            self.end(k, terminated=False, truncated=True, truncation_reason="idle_timeout")
        return stale

    def close(self) -> None:
        """Write every open episode as truncated (``shutdown``) and close the writer."""
        for k in list(self.open):
            self.end(k, terminated=False, truncated=True, truncation_reason="shutdown")
        self.writer.close()

    def _get(self, episode_id: str) -> OpenEpisode:
        ep = self.open.get(episode_id)
        if ep is None:
            raise UnknownEpisodeError(f"no open episode {episode_id!r}: it was never started or has already ended")
        return ep
