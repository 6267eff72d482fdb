"""Issue 14's report: paired bootstrap on hand-built outcomes; the committed page regenerates identically."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "horizon"


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("horizon_report", ROOT / "experiments" / "horizon_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(games: dict[str, float]) -> dict:
    return {"eval": {"4": {g: 0.0 for g in games}, "8": games}}


def test_paired_difference_pairs_by_game_and_pools_seeds() -> None:
    report = _report()
    a = {0: _run({"1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0}), 1: _run({"1": 1.0, "2": 0.0, "3": 0.0, "4": 1.0})}
    b = {0: _run({"1": 0.0, "2": 1.0, "3": 0.0, "4": 1.0}), 1: _run({"1": 0.0, "2": 0.0, "3": 1.0, "4": 1.0}),
         2: _run({"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0})}  # seed 2 has no partner in a: left out
    mean, low, high, seeds = report.paired_difference(a, b)
    # per game, mean over seeds 0 and 1: d = [1, 0, -0.5, 0] -> mean 0.125
    assert seeds == 2
    assert mean == pytest.approx(0.125)
    assert -0.5 <= low <= mean <= high <= 1.0
    assert report.paired_difference(a, b) == (mean, low, high, seeds)  # deterministic
    same = report.paired_difference(a, a)
    assert same == (0.0, 0.0, 0.0, 2)


def test_resampling_seeds_widens_the_interval_by_the_seed_to_seed_spread() -> None:
    report = _report()
    games = [str(g) for g in range(1, 11)]
    # seed 0: a wins every game b loses; seed 1: the reverse. Per game the pooled difference is 0.
    a = {0: _run(dict.fromkeys(games, 1.0)), 1: _run(dict.fromkeys(games, 0.0))}
    b = {0: _run(dict.fromkeys(games, 0.0)), 1: _run(dict.fromkeys(games, 1.0))}
    assert report.paired_difference(a, b) == (0.0, 0.0, 0.0, 2)  # games alone: no spread at all
    # seeds drawn with replacement: (0, 0) -> +1, (1, 1) -> -1, each with probability 1/4
    mean, low, high, seeds = report.paired_difference(a, b, resample_seeds=True)
    assert (mean, low, high, seeds) == (0.0, -1.0, 1.0, 2)
    # one seed: nothing to resample, the same interval as over games
    one_a, one_b = {0: a[0]}, {0: _run({**dict.fromkeys(games, 1.0), "1": 0.0})}
    assert report.paired_difference(one_a, one_b, resample_seeds=True)[1:] == report.paired_difference(one_a, one_b)[1:]


def test_verdict_qualifies_a_loss_that_the_seed_spread_covers() -> None:
    report = _report()
    games = [str(g) for g in range(1, 21)]
    up, down = _run(dict.fromkeys(games, 1.0)), _run(dict.fromkeys(games, 0.0))
    # seeds 0 and 1 tie, seed 2 loses every game: -1/3 over games, but seeds drawn as (0, 0, 1) give 0
    runs = {"steppo": {0: up, 1: up, 2: down}, "ppo": {0: up, 1: up, 2: up}}
    lines = report._verdict(runs, planned_seeds=3)
    assert "| StepPO − PPO | -0.333 | [-0.333, -0.333] | [-1.000, +0.000] | 3 | StepPO loses on these games, within the spread between seeds |" in lines
    runs["steppo"] = {0: down, 1: down, 2: down}  # every seed loses: both intervals exclude 0
    assert "| StepPO − PPO | -1.000 | [-1.000, -1.000] | [-1.000, -1.000] | 3 | StepPO loses |" in report._verdict(runs, 3)
    one = report._verdict({"steppo": {0: down}, "ppo": {0: up}}, planned_seeds=3)
    assert one[2].endswith("| 1 | StepPO loses (provisional: 1 of 3 seeds) |")


def test_committed_results_regenerate_the_page_byte_identically() -> None:
    report = _report()
    section, _ = report.render(RESULTS)
    page = (ROOT / "docs" / "results.md").read_text()
    assert section.rstrip("\n") in page, "docs/results.md is stale: run python experiments/horizon_report.py"
    experiment = json.loads((RESULTS / "experiment.json").read_text())
    assert experiment["env"]["level"] >= 10 and len(experiment["seeds"]) >= 3


def _write_runs(folder: Path, runs: dict[str, dict[str, float]], extra: dict | None = None) -> None:
    (folder / "runs").mkdir(parents=True)
    for variant, games in runs.items():
        record = {"variant": variant, "seed": 0, "command": f"steppo train --algo {variant}", "wall_s": 600.0,
                  "peak_rss_gib": 9.5, "metrics": [], **_run(games)}
        (folder / "runs" / f"{variant}-seed0.json").write_text(json.dumps(record))


def test_paper_table_and_multihop_section_come_from_the_files(tmp_path: Path) -> None:
    report = _report()
    horizon, multihop = tmp_path / "horizon", tmp_path / "multihop"
    horizon.mkdir()
    (horizon / "experiment.json").write_text(json.dumps({
        "env": {"preset": "coin_collector", "level": 10, "max_steps": 18}, "seeds": [0, 1, 2], "iterations": 12,
        "tasks_per_iteration": 2, "group_size": 4}))
    (horizon / "warm_start.json").write_text(json.dumps({
        "success": 0.4, "games": {"1": 1.0, "2": 0.0}, "expert_steps_min": 10, "expert_steps_max": 10,
        "expert_steps_mean": 10.0, "commands": ["steppo rollout"]}))
    _write_runs(horizon, {"steppo": {"1": 1.0, "2": 1.0}, "ppo": {"1": 1.0, "2": 0.0}})
    section, _ = report.render(horizon, multihop)
    assert "| StepPO | 1.000 (1) | - |" in section and "| PPO | 0.500 (1) | - |" in section
    # per seed: success, then the games gained / lost against the warm start (game 2 won by StepPO only)
    assert "| StepPO | 1.000 | 1.00 (+1 / -0) | - | - | 10 min | 9.5 GiB |" in section
    assert "| PPO | 0.500 | 0.50 (+0 / -0) | - | - | 10 min | 9.5 GiB |" in section
    assert "MultiHopQA: the warm start has not been evaluated yet" in section
    multihop.mkdir()
    (multihop / "experiment.json").write_text(json.dumps({
        "env": {"max_steps": 4}, "oracle_episodes": 8, "iterations": 8, "tasks_per_iteration": 2, "group_size": 4,
        "min_warm_em": 0.02}))
    warm = {"success": 0.01, "games": {"1": 0.0, "2": 0.0, "3": 0.0}, "oracle_success": 1.0, "oracle_steps_mean": 2.9,
            "commands": ["steppo rollout --backend expert"]}
    (multihop / "warm_start.json").write_text(json.dumps(warm))
    section, _ = report.render(horizon, multihop)
    assert "| SFT warm start | 0.400 | 0.010 |" in section and "no RL run was made" in section
    (multihop / "warm_start.json").write_text(json.dumps({**warm, "success": 0.2, "sources": {"1": "a", "2": "a", "3": "b"}}))
    _write_runs(multihop, {"steppo": {"1": 1.0, "2": 0.0, "3": 1.0}, "grpo": {"1": 0.0, "2": 0.0, "3": 1.0}})
    section, _ = report.render(horizon, multihop)
    assert "| StepPO | 1.000 (1) | 0.667 (1) |" in section and "| GRPO | - | 0.333 (1) |" in section
    assert "| StepPO | 0.20 | 0.00 | 0.67 | +2 / -0 | 10 min | 9.5 GiB |" in section  # warm start, each evaluation
    assert "| StepPO − GRPO | +0.333 |" in section
    assert "| run | a | b |" in section and "| StepPO | 0.50 (2) | 1.00 (1) |" in section  # by dataset


def test_machines_table_names_each_cpu_its_runs_and_how_a_rebuilt_warm_start_differs(tmp_path: Path) -> None:
    report = _report()
    intel, amd = "Intel Xeon; flags: avx2 amx_bf16", "AMD EPYC; flags: avx2 avx512_bf16"
    runs = {"steppo": {0: {"machine": intel}, 1: {"machine": amd}}, "ppo": {0: {"machine": intel}, 1: {}}}
    warm = {"success": 0.27, "machine": intel}
    (tmp_path / "warm_start_rebuilds.json").write_text(json.dumps(
        [{"machine": amd, "success": 0.25, "games_differing": ["3", "17", "40"]}]))
    lines = report._machines(tmp_path, runs, warm)
    assert f"| {intel} | 0.27 (the committed one) | - | StepPO seed 0, PPO seed 0 |" in lines
    assert f"| {amd} | 0.25 (rebuilt) | 3 | StepPO seed 1 |" in lines
    assert "| not recorded | - | - | PPO seed 1 |" in lines  # a run file without a machine is listed, not dropped
    (tmp_path / "warm_start_rebuilds.json").unlink()
    assert f"| {amd} | - | - | StepPO seed 1 |" in report._machines(tmp_path, runs, warm)


def test_a_rebuilt_warm_start_is_compared_game_by_game_and_noted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("horizon", ROOT / "experiments" / "horizon.py")
    assert spec is not None and spec.loader is not None
    horizon = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "horizon", horizon)  # dataclasses look their module up there
    spec.loader.exec_module(horizon)
    monkeypatch.setattr(horizon, "machine", lambda: "AMD EPYC; flags: avx2")
    committed = {"success": 2 / 3, "games": {"1": 1.0, "2": 0.0, "10": 1.0}}
    dest = tmp_path / "warm_start_rebuilds.json"
    horizon.note_rebuild(committed, {"1": 1.0, "2": 1.0, "10": 0.0}, dest)
    horizon.note_rebuild(committed, {"1": 1.0, "2": 1.0, "10": 0.0}, dest)  # the same rebuild again: not repeated
    entries = json.loads(dest.read_text())
    assert entries == [{"machine": "AMD EPYC; flags: avx2", "success": 2 / 3, "games_differing": ["2", "10"]}]
    horizon.note_rebuild(committed, dict(committed["games"]), dest)  # an identical rebuild is noted too
    assert json.loads(dest.read_text())[1]["games_differing"] == []


def test_a_runs_warm_start_is_the_one_rebuilt_on_its_cpu() -> None:
    report = _report()
    intel, amd, fp32 = "Intel; amx_bf16", "AMD; avx512_bf16", "Intel; avx512f"
    warm = {"machine": intel, "games": {"1": 1.0, "2": 0.0, "3": 1.0}}
    rebuilds = [{"machine": amd, "success": 0.33, "games_differing": ["3"]},
                {"machine": fp32, "success": 1.0, "games_differing": ["2"]}]
    assert report.start_games(warm, rebuilds, intel) == {"1": 1.0, "2": 0.0, "3": 1.0}
    assert report.start_games(warm, rebuilds, amd) == {"1": 1.0, "2": 0.0, "3": 0.0}
    assert report.start_games(warm, rebuilds, fp32) == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert report.start_games(warm, rebuilds, "never rebuilt") == warm["games"]
    assert warm["games"] == {"1": 1.0, "2": 0.0, "3": 1.0}  # not modified in place


def test_change_from_own_warm_start_removes_the_warm_starts_difference() -> None:
    report = _report()
    start = {"intel": {"1": 1.0, "2": 0.0, "3": 0.0, "4": 0.0}, "amd": {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0}}
    a = {0: {**_run({"1": 1.0, "2": 1.0, "3": 0.0, "4": 0.0}), "machine": "intel"}}  # kept game 1, gained game 2
    b = {0: {**_run({"1": 0.0, "2": 1.0, "3": 1.0, "4": 0.0}), "machine": "amd"}}  # gained games 2 and 3
    # plain: d = [1, 0, -1, 0] -> 0; changes: a = [0, 1, 0, 0], b = [0, 1, 1, 0] -> d = [0, 0, -1, 0] -> -0.25
    assert report.paired_difference(a, b)[0] == 0.0
    mean, low, high, seeds = report.paired_difference(a, b, start=lambda r: start[r["machine"]])
    assert (mean, seeds) == (-0.25, 1)
    assert -1.0 <= low <= mean <= high <= 0.0
    same = report.paired_difference(a, b, start=lambda r: start["amd"])  # one warm start: the plain difference
    assert same == report.paired_difference(a, b)
    lines = report._verdict({"steppo": a, "ppo": b}, planned_seeds=3, start=lambda r: start[r["machine"]])
    assert lines[2].startswith("| StepPO − PPO | +0.000 |") and "| -0.250 [" in lines[2]


def test_a_repeat_on_another_cpu_is_set_beside_its_first_run_and_the_runs_on_its_cpu(tmp_path: Path) -> None:
    report = _report()
    amd, fp32 = "AMD; avx512_bf16", "Intel; avx512f"
    first = {**_run({"1": 1.0, "2": 0.0, "3": 0.0, "4": 0.0}), "machine": amd, "variant": "steppo", "seed": 2}
    repeat = {**_run({"1": 1.0, "2": 1.0, "3": 1.0, "4": 0.0}), "machine": fp32, "variant": "steppo", "seed": 2,
              "command": "steppo train --seed 2", "wall_s": 5940.0, "metrics": []}
    runs = {"steppo": {2: first},
            "ppo": {2: {**_run({"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0}), "machine": amd}},  # other CPU: no pair
            "steppo-no-step-is": {2: {**_run({"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}), "machine": fp32}}}
    assert report._repeats([], runs) == []
    (tmp_path / "repeats").mkdir()
    (tmp_path / "repeats" / "steppo-seed2-abcd1234.json").write_text(json.dumps(repeat))
    lines = report._repeats(report.load_repeats(tmp_path), runs)
    assert f"| StepPO seed 2 | 0.25 ({amd}) | 0.75 ({fp32}) | 2 | 99 min |" in lines
    # 1 - 1, 1 - 1, 1 - 1, 0 - 1 -> -0.25 over the 4 games, paired with the ablation that ran on the same CPU
    pair = [line for line in lines if line.startswith("| StepPO − ")]
    assert len(pair) == 1 and pair[0].startswith("| StepPO − StepPO w/o step-IS, seed 2 | -0.250 | [")
    assert "steppo train --seed 2" in lines
