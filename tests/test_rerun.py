"""Issue 37, part 3: the rerun's spec is one config file that loads as TrainConfigs (a typo fails before any run),
and its report reads per-seed differences with t-intervals and regenerates identically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import rerun  # noqa: E402
import rerun_report  # noqa: E402

from steppo_envs.config import ConfigError  # noqa: E402
from steppo_train.config import load_config  # noqa: E402


def test_every_variant_of_the_committed_spec_is_a_valid_train_config(tmp_path: Path) -> None:
    spec = rerun.load_spec(rerun.SPEC)
    assert len(spec["seeds"]) >= 5
    gammas = set()
    for variant in spec["variants"]:
        fields = rerun.run_fields(spec, variant)
        config = load_config(str(fields["algo"]), overrides=fields)
        gammas.add(config.gamma)
        assert config.critic_warmup == (spec["critic_fields"]["critic_warmup"] if config.uses_critic else 0)
    assert len(gammas) == 1  # the same discount for every algorithm
    cmd = rerun.run_command(spec, "steppo-no-step-gae", 3, tmp_path / "warm", tmp_path / "run")
    assert cmd[cmd.index("--seed") + 1] == "3" and (tmp_path / "run" / "config.yaml").is_file()
    written = load_config("steppo", yaml_path=tmp_path / "run" / "config.yaml")
    assert written.advantage_level == "token" and written.critic_warmup == 2


def test_a_typo_in_the_spec_fails_before_any_run(tmp_path: Path) -> None:
    bad = tmp_path / "spec.yaml"
    bad.write_text(rerun.SPEC.read_text().replace("actor_lr:", "actor_lrr:"))
    with pytest.raises(ConfigError, match="actor_lrr"):
        rerun.load_spec(bad)


def _record(variant: str, seed: int, wins: int, evs: list[float] | None = None) -> dict:
    games = {str(g): 1.0 if g < wins else 0.0 for g in range(10)}
    metrics = [{"iteration": i, **({"critic/explained_variance_before": v} if evs else {})}
               for i, v in enumerate(evs or [0.0] * 7)]
    return {"variant": variant, "seed": seed, "command": f"steppo train --algo x --seed {seed}", "eval": {"7": games},
            "metrics": metrics}


def test_the_report_reads_differences_by_seed(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    (results / "runs").mkdir(parents=True)
    docs.mkdir()
    (docs / "results.md").write_text(f"# Results\n\n{rerun_report.BEGIN}\n{rerun_report.END}\n\nafter\n")
    rerun_report.write_report(results, docs)
    assert "No run has finished yet" in (docs / "results.md").read_text()
    (results / "spec.json").write_text(json.dumps({"seeds": [0, 1, 2], "variants": {"steppo": {}, "grpo": {}}}))
    evs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # median 0.4, iteration 6: 0.7
    for seed, (a, b) in enumerate([(6, 4), (7, 4), (5, 4)]):  # StepPO - GRPO per seed: +.2, +.3, +.1
        for variant, wins in (("steppo", a), ("grpo", b)):
            path = results / "runs" / f"{variant}-seed{seed}.json"
            path.write_text(json.dumps(_record(variant, seed, wins, evs if variant == "steppo" else None)))
    rerun_report.write_report(results, docs)
    page = (docs / "results.md").read_text()
    # mean .2, sd .1, t(.975, 2) = 4.302653: half-width .248414 -> [-0.048, +0.448], which contains 0
    assert "| StepPO − GRPO | +0.20 | +0.30 | +0.10 | +0.200 | [-0.048, +0.448] | 3 | not separated at this budget |" in page
    assert "+0.40 (+0.70)" in page and "no critic" in page
    assert page.endswith("\n\nafter\n") and "4 of 6 runs" not in page and "6 of 6 runs" in page
    rerun_report.write_report(results, docs)
    assert (docs / "results.md").read_text() == page  # byte-identical on a re-run


def test_the_committed_page_holds_the_section_the_committed_files_give() -> None:
    page = (ROOT / "docs" / "results.md").read_text()
    block = page[page.index(rerun_report.BEGIN): page.index(rerun_report.END) + len(rerun_report.END)]
    assert block + "\n" == rerun_report.render(ROOT / "results" / "rerun")
