"""The CI smoke step of issue 7's experiment: the whole pipeline (expert records -> SFT -> held-out
evaluation -> StepPO with in-loop evaluation -> table and plots) runs at a tiny budget on the default
model and writes well-formed outputs. It asserts that the loop runs, not that it learned."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.vllm
def test_experiment_smoke_runs_and_writes_well_formed_metrics(default_model_dir: str, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    out = tmp_path / "exp"
    cmd = [sys.executable, str(ROOT / "experiments" / "textworld_cpu.py"), "--out", str(out), "--smoke", "--algos", "steppo"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # piped output is a readable log: whole lines, no engine config dumps, the amp decision and one line per iteration
    log = proc.stdout + proc.stderr
    assert "\r" not in log and "\x1b[" not in log
    assert "non-default args" not in log and "Initializing a V1 LLM engine" not in log
    assert "steppo: amp=auto -> " in log
    assert "iter 2/2  success" in log

    experiment = json.loads((out / "experiment.json").read_text())
    assert experiment["rl_iterations"] == 2 and experiment["eval_every"] == 1
    rows = [json.loads(x) for x in (out / "steppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in r.values()), r
        for key in ("losses/policy", "losses/value", "charts/success_rate", "rollout/logprob_gap_max", "eval/success_rate",
                    "eval/success_ci_low", "eval/success_ci_high", "perf/peak_rss_gib", "memory/rss_update_gib",
                    "memory/rss_push_gib", "memory/rss_eval_gib"):
            assert key in r, key
        assert 0.0 <= r["eval/success_ci_low"] <= r["eval/success_rate"] <= r["eval/success_ci_high"] <= 1.0

    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| model | held-out success")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["sft", "steppo"]  # smoke: no untrained baseline
    for name in ("learning_curves.png", "heldout_success.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = (out / "commands.sh").read_text().splitlines()
    assert [c.split()[1] for c in commands] == ["rollout", "train", "eval", "train"]
    assert all(c.startswith("steppo ") for c in commands)
