"""``steppo rollout`` / ``eval`` / ``inspect``: parsing, output, kill-and-resume."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steppo.cli import build_parser, main
from steppo.cli.rollout import DEFAULT_ENV
from steppo_agent.trajectory_io import read_trajectories

TESTS = Path(__file__).parent
TOY = "toy_env:steppotest/Guess-v0"
FAKE = ["--policy", "toy_env:make_fake_policy"]


def test_parser_defaults() -> None:
    parser = build_parser()
    r = parser.parse_args(["rollout"])
    assert (r.env, r.model, r.backend, r.num_tasks, r.group_size, r.temperature, r.max_tokens, r.verbose) == (
        DEFAULT_ENV, "smollm2-135m", "vllm", 1, 1, 1.0, 64, None)
    r = parser.parse_args(["rollout", "--episodes", "5", "--base-url", "http://a", "--base-url", "http://b",
                           "--env-arg", "max_steps=3", "--env-arg", "low=2", "-q"])
    assert r.num_tasks == 5 and r.base_url == ["http://a", "http://b"] and r.env_arg == ["max_steps=3", "low=2"]
    assert r.verbose is False
    e = parser.parse_args(["eval", "--split", "dev"])
    assert e.num_tasks == 20 and e.split == "dev" and not hasattr(e, "temperature")
    i = parser.parse_args(["inspect", "x.jsonl", "--plot", "d"])
    assert str(i.file) == "x.jsonl" and str(i.plot) == "d"


def test_rollout_prints_one_episode_step_by_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    assert main(["rollout", "--env", TOY, *FAKE, "--output", str(out), "--max-tokens", "16"]) == 0
    text = capsys.readouterr().out
    assert "system prompt" in text and "step 0" in text and "observation" in text and "reward" in text
    assert f"wrote 1 trajectories to {out}" in text
    [t] = read_trajectories(out)
    assert t.env_id == TOY and t.sampling.temperature == 1.0
    capsys.readouterr()
    assert main(["rollout", "--env", TOY, *FAKE, "--output", str(out)]) == 2
    assert "steppo: error:" in (err := capsys.readouterr().err) and "--resume" in err


def test_eval_prints_a_table_and_inspect_summarises_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(f) inspect output and --plot files."""
    out = tmp_path / "e.jsonl"
    assert main(["eval", "--env", TOY, *FAKE, "-n", "4", "--output", str(out), "--max-tokens", "16"]) == 0
    text = capsys.readouterr().out
    assert "split" in text and "success" in text and "toy" in text and "step 0" not in text
    trajs = read_trajectories(out)
    assert len(trajs) == 4 and all(t.sampling.temperature == 0.0 for t in trajs)

    plots = tmp_path / "plots"
    assert main(["inspect", str(out), "--plot", str(plots), "--parquet", str(tmp_path / "e.parquet")]) == 0
    text = capsys.readouterr().out
    for needle in ("episodes        4", "success rate", "mean reward", "action kinds", "validity", "tokens"):
        assert needle in text
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["action_kinds.png", "response_tokens.png", "returns.png", "reward_by_step.png"]
    assert all((plots / p).stat().st_size > 1000 for p in pngs)
    assert (tmp_path / "e.parquet").stat().st_size > 0
    assert main(["inspect", str(out), "--json"]) == 0
    assert '"episodes": 4' in capsys.readouterr().out


def _policy_args() -> list[str]:
    """The real transformers backend when it is installed (preferred), else the scripted policy."""
    if importlib.util.find_spec("steppo_agent.policies.hf_policy") and importlib.util.find_spec("torch"):
        return ["--backend", "hf", "--max-tokens", "8"]
    return [*FAKE, "--max-tokens", "16"]


def _steppo(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from steppo.cli import main; sys.exit(main())", *args]


@pytest.mark.slow
def test_sigkill_mid_run_leaves_finished_trajectories_and_resume_completes(tmp_path: Path) -> None:
    """(c) a `steppo rollout` killed with SIGKILL keeps every finished trajectory; --resume does the rest."""
    out = tmp_path / "run.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ["rollout", "--env", TOY, "--env-arg", "step_delay=0.25", "--env-arg", "max_steps=3", "-n", "8",
            "--max-active", "2", "--output", str(out), "-q", *_policy_args()]
    proc = subprocess.Popen(_steppo(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished (or failed) before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = out.read_bytes()
    finished = read_trajectories(out)
    assert 2 <= len(finished) < 8
    assert all(len(t.steps) >= 1 and (t.terminated or t.truncated) for t in finished)

    done = subprocess.run(_steppo(*args, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"skipped {len(finished)} already there" in done.stdout
    final = read_trajectories(out)
    assert sorted(t.id for t in final) == sorted(f"{i}-0" for i in range(8))
    assert out.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # finished lines untouched
    assert final[: len(finished)] == finished
