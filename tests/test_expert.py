"""Expert step records (issue 7's warm start): the expert policy wins TextWorld games through the normal
rollout engine, its records are token-exact like a model's, and `steppo train --algo sft` learns from them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import make_tiny_llama  # noqa: E402

from steppo.cli import main  # noqa: E402
from steppo_agent.prompting import render_prompt_ids  # noqa: E402
from steppo_agent.trajectory_io import read_trajectories  # noqa: E402


@pytest.mark.slow
def test_expert_records_win_and_train_sft(tmp_path: Path) -> None:
    records = tmp_path / "expert.jsonl"
    rc = main([
        "rollout", "--backend", "expert", "--env", "steppo/TextWorld-v0", "--env-arg", "preset=simple",
        "--env-arg", "expert=true", "--env-arg", "pool_size=2", "-n", "2", "--temperature", "0", "-q", "-o", str(records),
    ])
    assert rc == 0
    trajs = read_trajectories(records)
    assert len(trajs) == 2
    from transformers import AutoTokenizer

    from steppo_agent.default_model import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    for traj in trajs:
        assert traj.success and traj.terminated and traj.policy.backend == "expert"
        for step in traj.steps:
            assert step.valid, step.info.get("feedback")
            assert step.prompt_ids == render_prompt_ids(tok, traj.system_prompt, step.observation, traj.tools)
            assert step.response_ids[-1] == tok.eos_token_id
            assert tok.decode(step.response_ids, skip_special_tokens=True) == step.response_text
    tiny = make_tiny_llama(tmp_path / "tiny")
    rc = main([
        "train", "--algo", "sft", "--model", str(tiny), "--from-trajectories", str(records), "--iterations", "2",
        "--tasks", "2", "--group-size", "1", "--output-dir", str(tmp_path / "sft"), "--set", "actor_lr=1e-3",
    ])
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[1]["losses/policy"] < rows[0]["losses/policy"]


def test_multihop_oracle_records_search_the_support_then_answer(tmp_path: Path) -> None:
    records = tmp_path / "oracle.jsonl"
    rc = main([
        "rollout", "--backend", "expert", "--env", "steppo/MultiHopQA-v0", "--env-arg", 'split="hotpotqa_ircot500"',
        "--env-arg", "expert=true", "--env-arg", "max_steps=4", "-n", "3", "--seed", "5", "--temperature", "0", "-q",
        "-o", str(records),
    ])
    assert rc == 0
    trajs = read_trajectories(records)
    assert len(trajs) == 3
    for traj in trajs:
        texts = [s.response_text for s in traj.steps]
        assert all(t.startswith("Search[") for t in texts[:-1]) and texts[-1].startswith("Answer["), texts
        assert 2 <= len(texts) <= 3  # HotpotQA questions have two supporting paragraphs (one may come with the first)
        assert all(s.valid for s in traj.steps) and traj.terminated
    assert sum(t.success for t in trajs) >= 2
