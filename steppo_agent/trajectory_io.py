"""Trajectory files: crash-safe JSONL writing, tolerant reading, pandas / Parquet export.

Layout: one :class:`~steppo_agent.records.Trajectory` per line (``Trajectory.to_json_line()``), in the
order episodes finished. :class:`TrajectoryWriter` appends a line, flushes and ``os.fsync``\\ s it, so
a killed run leaves every finished trajectory readable; at worst the last line is torn.
:func:`iter_trajectories` skips a torn *last* line with a warning (a bad line elsewhere is an error),
and opening a writer on such a file cuts the torn tail off before appending (``--resume``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from steppo_agent.records import SamplingConfig, Trajectory
from steppo_envs.config import UserError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TrajectoryFileError",
    "TrajectoryWriter",
    "episodes_dataframe",
    "export_parquet",
    "iter_trajectories",
    "read_ids",
    "read_trajectories",
    "repair_torn_tail",
    "settings_difference",
    "to_dataframe",
]


class TrajectoryFileError(UserError, ValueError):
    """A trajectory file is unreadable or does not match the run; the message names the fix."""


def repair_torn_tail(path: str | Path) -> int:
    """Cut an unterminated last line (a write torn by a kill) off ``path``; return the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        block = 1 << 16
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"{path}: removed a torn last line ({size - keep} bytes) left by an interrupted run.", stacklevel=2)
    return size - keep


class TrajectoryWriter:
    """Append trajectories to a JSONL file, one line each, flushed and fsync'ed per trajectory.

    Opening repairs a torn last line (see :func:`repair_torn_tail`). Use as a context manager or
    call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._fsync = fsync
        self.count = 0

    def write(self, traj: Trajectory) -> None:
        """Append one trajectory as a line and make it durable before returning."""
        self._file.write(traj.to_json_line() + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, is_last) for each non-empty line, streamed; an unreadable file is a
    :class:`TrajectoryFileError`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            prev: tuple[int, str] | None = None
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if prev is not None:
                    yield prev[0], prev[1], False
                prev = (lineno, line)
            if prev is not None:
                yield prev[0], prev[1], True
    except OSError as exc:
        raise TrajectoryFileError(f"{path} cannot be read ({exc.strerror or exc}): check its permissions.") from None


def iter_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Yield the trajectories of a JSONL file in file order.

    A last line that does not parse (a run killed mid-write) is skipped with a warning; a bad line
    anywhere else raises :class:`TrajectoryFileError` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise TrajectoryFileError(f"{path} does not exist: pass the JSONL file written by `steppo rollout --output`.")
    for lineno, line, last in _lines(path):
        try:
            yield Trajectory.model_validate_json(line)
        except (ValidationError, ValueError) as exc:
            if last:
                warnings.warn(f"{path}:{lineno}: skipped a torn or unreadable last line (an interrupted run?).", stacklevel=2)
                return
            first = str(exc).splitlines()[0]
            raise TrajectoryFileError(
                f"{path}:{lineno} is not a trajectory record ({first}): delete that line or regenerate the file."
            ) from None


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """All trajectories of a JSONL file (see :func:`iter_trajectories`)."""
    return list(iter_trajectories(path))


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from a JSON line (tuples become lists, paths strings, ...)."""
    return json.loads(json.dumps(to_jsonable_python(value)))


def settings_difference(
    traj: Trajectory,
    *,
    env_kwargs: dict[str, Any] | None = None,
    sampling: SamplingConfig | None = None,
    policy: tuple[str, str] | None = None,
) -> str | None:
    """How ``traj`` was collected differently from the given settings (``None`` = not compared), as
    ``"<what> <old>, not <new>"``; ``None`` when they agree."""
    if env_kwargs is not None and traj.env_kwargs != _jsonable(env_kwargs):
        return f"env options {json.dumps(traj.env_kwargs, sort_keys=True)}, not {json.dumps(_jsonable(env_kwargs), sort_keys=True)}"
    if sampling is not None and traj.sampling != sampling:
        old, new = traj.sampling.model_dump(), sampling.model_dump()
        changed = [k for k in old if old[k] != new[k]]
        return "sampling " + ", ".join(f"{k}={old[k]!r}" for k in changed) + ", not " + ", ".join(f"{k}={new[k]!r}" for k in changed)
    if policy is not None and (traj.policy.backend, traj.policy.model) != policy:
        return f"the policy {traj.policy.backend}:{traj.policy.model}, not {policy[0]}:{policy[1]}"
    return None


def read_ids(
    path: str | Path,
    *,
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    sampling: SamplingConfig | None = None,
    policy: tuple[str, str] | None = None,
) -> set[str]:
    """The trajectory ids already in ``path`` (for resume); checks that every record was collected with
    ``env_id``, ``env_kwargs``, ``sampling`` and ``policy`` = ``(backend, model)`` (``None`` = not
    checked), so one file never mixes two configurations. A mismatch is a :class:`TrajectoryFileError`."""
    ids: set[str] = set()
    for traj in iter_trajectories(path):
        if env_id is not None and traj.env_id != env_id:
            raise TrajectoryFileError(
                f"{path} holds trajectories of {traj.env_id!r}, not {env_id!r}: resume with --env {traj.env_id} "
                "or choose another --output."
            )
        difference = settings_difference(traj, env_kwargs=env_kwargs, sampling=sampling, policy=policy)
        if difference is not None:
            raise TrajectoryFileError(
                f"{path} was collected with {difference}: resume with the same settings, or write to a new file "
                "(--output NEW.jsonl) so one file never mixes two configurations."
            )
        ids.add(traj.id)
    return ids


def _episode_row(traj: Trajectory) -> dict[str, Any]:
    return {
        "traj_id": traj.id,
        "env_id": traj.env_id,
        "task_id": traj.task_id,
        "seed": traj.seed,
        "group_id": traj.group_id,
        "policy_backend": traj.policy.backend,
        "policy_model": traj.policy.model,
        "policy_version": traj.policy.version,
        "temperature": traj.sampling.temperature,
        "num_steps": len(traj.steps),
        "return": traj.return_,
        "success": traj.success,
        "terminated": traj.terminated,
        "truncated": traj.truncated,
        "truncation_reason": traj.truncation_reason,
        **{f"metrics.{k}": v for k, v in traj.metrics.items()},
    }


def to_dataframe(trajs: Iterable[Trajectory], *, with_ids: bool = False) -> pd.DataFrame:
    """One row per step: episode columns (``traj_id``, ``return``, ``success``, ...) + step columns.

    Step columns: ``step``, ``observation``, ``response_text``, ``prompt_tokens``,
    ``response_tokens``, ``finish_reason``, ``action_kind``, ``valid``, ``feedback``, ``reward``,
    ``step_terminated``, ``step_truncated``, ``mean_logprob`` and ``step_metrics.<name>``. With
    ``with_ids`` also ``prompt_ids``, ``response_ids``, ``response_logprobs`` (list columns).
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for traj in trajs:
        episode = _episode_row(traj)
        for step in traj.steps:
            row = dict(episode)
            row.update(
                step=step.index,
                observation=step.observation,
                response_text=step.response_text,
                prompt_tokens=len(step.prompt_ids),
                response_tokens=len(step.response_ids),
                finish_reason=step.finish_reason,
                action_kind=(step.action or {}).get("kind"),
                valid=step.valid,
                feedback=step.info.get("feedback"),
                reward=step.reward,
                step_terminated=step.terminated,
                step_truncated=step.truncated,
                mean_logprob=(sum(step.response_logprobs) / len(step.response_logprobs)) if step.response_logprobs else None,
            )
            for k, v in (step.info.get("metrics") or {}).items():
                row[f"step_metrics.{k}"] = v
            if with_ids:
                row.update(prompt_ids=step.prompt_ids, response_ids=step.response_ids, response_logprobs=step.response_logprobs)
            rows.append(row)
    return pd.DataFrame(rows)


def episodes_dataframe(trajs: Iterable[Trajectory]) -> pd.DataFrame:
    """One row per trajectory (episode columns of :func:`to_dataframe`)."""
    import pandas as pd

    return pd.DataFrame([_episode_row(t) for t in trajs])


def export_parquet(path_in: str | Path, path_out: str | Path, *, with_ids: bool = True) -> Path:
    """Write the per-step table of a JSONL trajectory file to Parquet (token ids as list columns)."""
    df = to_dataframe(iter_trajectories(path_in), with_ids=with_ids)
    out = Path(path_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    return out

