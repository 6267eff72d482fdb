"""The trainer's rollout side: on-policy collection, greedy evaluation, offline batches, the checks
made before any model loads, and rewinding an output folder on resume. :mod:`steppo_train.trainer`
calls these; none of them touches the models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steppo_agent.analysis import summarize
from steppo_agent.records import Trajectory
from steppo_envs.config import ConfigError
from steppo_train.checkpoint import latest_checkpoint, rewind_outputs
from steppo_train.config import TrainConfig

if TYPE_CHECKING:
    from steppo_agent.policies.base import Policy
    from steppo_agent.rollout import RolloutConfig

__all__ = ["collect", "evaluate", "offline_batch", "preflight", "rewind"]


#: The reset seed of the first evaluation task (far from the training tasks' seeds).
_EVAL_SEED = 1_000_000


def _rollout_config(config: TrainConfig, iteration: int, path: Path) -> RolloutConfig:
    """The on-policy rollout of iteration ``iteration`` (``config.rollout`` as it is, with this
    iteration's reset and sampling seeds), written to (and resumed from) ``path``."""
    from steppo_agent.rollout import RolloutConfig

    return RolloutConfig.of(config.rollout, {
        "seed": config.seed + iteration * config.rollout.num_tasks,
        "sampling": config.sampling.model_copy(update={"seed": config.seed * 1_000_003 + iteration}),
        "output": path,
        "resume": True,
        "validate_env": False,  # checked once before training (preflight)
    })


def _eval_env_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {**config.rollout.env_kwargs, **config.eval_env_kwargs}


def _rollout_path(out_dir: Path, iteration: int) -> Path:
    return out_dir / "rollouts" / f"iter_{iteration:06d}.jsonl"


def collect(config: TrainConfig, policy: Policy, iteration: int, out_dir: Path) -> list[Trajectory]:
    """On-policy episodes for one iteration (written to rollouts/iter_N.jsonl; a crashed iteration resumes)."""
    from steppo_agent.rollout import run_rollout
    from steppo_agent.trajectory_io import read_trajectories

    path = _rollout_path(out_dir, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_rollout(policy, _rollout_config(config, iteration, path))
    return read_trajectories(path)


def _eval_config(config: TrainConfig, path: Path) -> RolloutConfig:
    """The evaluation rollout: ``config.rollout``'s env and workers with ``eval_env_kwargs`` added,
    ``eval_tasks`` tasks from reset seed 1,000,000, one greedy sample each, written to ``path``."""
    from steppo_agent.rollout import RolloutConfig

    return RolloutConfig.of(config.rollout, {
        "env_kwargs": _eval_env_kwargs(config),
        "num_tasks": config.eval_tasks,
        "group_size": 1,
        "seed": _EVAL_SEED,
        "sampling": config.sampling.model_copy(update={"temperature": 0.0, "seed": None}),
        "output": path,
    })


def evaluate(config: TrainConfig, policy: Policy, iteration: int, out_dir: Path) -> dict[str, float]:
    """Greedy episodes on the evaluation tasks (``eval_env_kwargs``), summarised with bootstrap CIs."""
    from steppo_agent.rollout import run_rollout

    path = out_dir / "eval" / f"iter_{iteration:06d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return summarize(run_rollout(policy, _eval_config(config, path))).as_metrics("eval")


def offline_batch(config: TrainConfig, pool: list[Trajectory], iteration: int) -> list[Trajectory]:
    """Iteration ``i`` of offline training takes the next ``rollout.num_episodes`` (tasks x group size)
    trajectories (cycling)."""
    n = min(len(pool), config.rollout.num_episodes)
    start = (iteration * n) % len(pool)
    return [pool[(start + j) % len(pool)] for j in range(n)]


def preflight(config: TrainConfig) -> None:
    """Check what the user named before any model loads: the rollout's settings (as the first iteration
    plays them: e.g. a group of greedy samples is refused), the env and its options / data (train and
    eval), or the offline trajectory files. Raises a :class:`~steppo_envs.UserError`."""
    from steppo_agent.rollout import check_env
    from steppo_agent.trajectory_io import TrajectoryFileError

    if not config.resume and latest_checkpoint(config.output_dir) is not None:
        raise ConfigError(f"{config.output_dir} already holds checkpoints of an earlier run: pass --resume to continue "
                          "it, or choose another --output-dir.")
    if config.from_trajectories:
        missing = [f for f in config.from_trajectories if not Path(f).is_file()]
        if missing:
            raise TrajectoryFileError(f"--from-trajectories {', '.join(missing)}: no such file; pass JSONL files "
                                      "written by `steppo rollout --output`.")
        return
    _rollout_config(config, 0, _rollout_path(Path(config.output_dir), 0))
    check_env(config.rollout.env_id, config.rollout.env_kwargs, seed=config.seed)
    if config.eval_every > 0 and config.eval_env_kwargs:
        check_env(config.rollout.env_id, _eval_env_kwargs(config), seed=_EVAL_SEED)


def rewind(config: TrainConfig, out_dir: Path, start: int, checkpoint: Path | None, policy: Policy | None) -> None:
    """Make ``out_dir`` agree with a run that continues at iteration ``start`` (see
    :func:`~steppo_train.checkpoint.rewind_outputs`) and say what was removed; the interrupted
    iteration's rollouts are continued only if they were collected with this run's settings, and never
    with ``async_rollout`` (``max_staleness > 0``: they were sampled ahead, by older weights)."""
    removed = rewind_outputs(out_dir, start)
    rows = f"{removed} metrics row(s)"
    if checkpoint is not None:
        print(f"resumed from {checkpoint} at iteration {start}" + (f"; removed {rows} written after it" if removed else ""))
    elif config.resume:
        print(f"steppo: --resume: no checkpoint in {out_dir}: starting from iteration 0"
              + (f"; removed {rows} of the interrupted run" if removed else ""), file=sys.stderr)
    elif removed:
        print(f"steppo: {out_dir} held {rows} of an earlier run that saved no checkpoint: removed them, starting "
              "from iteration 0.", file=sys.stderr)
    path = _rollout_path(out_dir, start)
    if policy is not None and path.exists() and (difference := _rollout_difference(config, start, path, policy)):
        path.unlink()
        print(f"steppo: {path} was collected with {difference}: collecting iteration {start} again.", file=sys.stderr)
    elif path.exists() and config.async_rollout and config.max_staleness > 0:
        path.unlink()  # collected ahead, by weights older than the checkpoint's, which are gone
        print(f"steppo: {path} was collected ahead of the checkpoint (async_rollout): collecting iteration {start} "
              "again with the checkpoint's weights.", file=sys.stderr)


def _rollout_difference(config: TrainConfig, iteration: int, path: Path, policy: Policy) -> str | None:
    """How the records in ``path`` were collected differently from this run's iteration ``iteration``."""
    from steppo_agent.trajectory_io import iter_trajectories, settings_difference

    rollout = _rollout_config(config, iteration, path)
    for traj in iter_trajectories(path):
        if traj.env_id != rollout.env_id:
            return f"env {traj.env_id}, not {rollout.env_id}"
        difference = settings_difference(traj, env_kwargs=rollout.env_kwargs, sampling=rollout.sampling,
                                         policy=(policy.backend, policy.model))
        if difference is not None:
            return difference
    return None
