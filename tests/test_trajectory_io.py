"""Trajectory files: durable appends, torn-line tolerance, resume, pandas / Parquet export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import toy_env
from toy_env import ENV_ID, FakePolicy

from steppo_agent.records import SamplingConfig, Trajectory
from steppo_agent.rollout import RolloutConfig, run_rollout
from steppo_agent.trajectory_io import (
    TrajectoryFileError,
    TrajectoryWriter,
    export_parquet,
    iter_trajectories,
    read_trajectories,
    repair_torn_tail,
    to_dataframe,
)


@pytest.fixture(scope="module")
def trajs() -> list[Trajectory]:
    policy = FakePolicy(toy_env.load_tokenizer())
    return run_rollout(policy, RolloutConfig(env_id=ENV_ID, num_tasks=4, group_size=2, progress=False,
                                             sampling=SamplingConfig(temperature=1.0, seed=3, max_tokens=16)))


def _config(path: Path, **kw: Any) -> RolloutConfig:
    return RolloutConfig(env_id=ENV_ID, num_tasks=4, group_size=2, progress=False, output=path,
                         sampling=SamplingConfig(temperature=1.0, seed=3, max_tokens=16), **kw)


def test_writer_appends_one_line_per_trajectory(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "sub" / "t.jsonl"
    with TrajectoryWriter(path) as w:
        for t in trajs[:3]:
            w.write(t)
    with TrajectoryWriter(path) as w:  # reopening appends
        for t in trajs[3:]:
            w.write(t)
    assert len(path.read_text().splitlines()) == len(trajs)
    assert read_trajectories(path) == trajs
    assert list(iter_trajectories(path)) == trajs


def test_torn_last_line_is_skipped_with_a_warning_and_repaired(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "t.jsonl"
    good = "".join(t.to_json_line() + "\n" for t in trajs[:2])
    path.write_text(good + trajs[2].to_json_line()[:57])
    with pytest.warns(UserWarning, match="torn"):
        assert read_trajectories(path) == trajs[:2]
    with pytest.warns(UserWarning, match="torn"):
        assert repair_torn_tail(path) == 57
    assert path.read_text() == good
    assert repair_torn_tail(path) == 0


def test_bad_line_in_the_middle_is_an_error_naming_the_line(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(trajs[0].to_json_line() + "\n{not json\n" + trajs[1].to_json_line() + "\n")
    with pytest.raises(TrajectoryFileError, match=r"t\.jsonl:2"):
        read_trajectories(path)
    with pytest.raises(TrajectoryFileError, match="does not exist"):
        read_trajectories(tmp_path / "missing.jsonl")


def test_resume_completes_a_partial_file(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "run.jsonl"
    # a killed run: three finished trajectories and a torn fourth
    path.write_text("".join(t.to_json_line() + "\n" for t in trajs[:3]) + trajs[3].to_json_line()[:100])
    policy = FakePolicy(toy_env.load_tokenizer())
    with pytest.raises(FileExistsError, match="--resume"):
        run_rollout(policy, _config(path))
    with pytest.warns(UserWarning, match="torn"):
        new = run_rollout(policy, _config(path, resume=True))
    assert {t.id for t in new} == {t.id for t in trajs[3:]}
    final = read_trajectories(path)
    assert sorted(final, key=lambda t: t.id) == sorted(trajs, key=lambda t: t.id)
    assert run_rollout(policy, _config(path, resume=True)) == []  # nothing left to do


def test_resume_refuses_a_file_of_another_env(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(trajs[0].model_copy(update={"env_id": "other/Env-v0"}).to_json_line() + "\n")
    with pytest.raises(TrajectoryFileError, match="--env other/Env-v0"):
        run_rollout(FakePolicy(toy_env.load_tokenizer()), _config(path, resume=True))


def test_dataframe_has_one_row_per_step_and_parquet_round_trips(tmp_path: Path, trajs: list[Trajectory]) -> None:
    import pandas as pd

    df = to_dataframe(trajs)
    assert len(df) == sum(len(t.steps) for t in trajs)
    for col in ("traj_id", "group_id", "step", "reward", "valid", "action_kind", "return", "success",
                "prompt_tokens", "response_tokens", "step_metrics.guesses"):
        assert col in df.columns
    per_episode = df.groupby("traj_id")["reward"].sum()
    for t in trajs:
        assert per_episode[t.id] == pytest.approx(t.return_)
    src = tmp_path / "t.jsonl"
    with TrajectoryWriter(src) as w:
        for t in trajs:
            w.write(t)
    out = export_parquet(src, tmp_path / "t.parquet")
    back = pd.read_parquet(out)
    assert len(back) == len(df)
    first = trajs[0].steps[0]
    assert list(back.loc[0, "prompt_ids"]) == first.prompt_ids
    assert list(back.loc[0, "response_ids"]) == first.response_ids
