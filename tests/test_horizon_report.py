"""Issue 14's and 37's report: per-seed t-intervals, the paired bootstrap and the critics' explained variance on
hand-built outcomes; the committed page regenerates identically."""

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


def test_t_interval_over_seeds_by_hand() -> None:
    report = _report()
    # StepPO − PPO per seed on coin_collector L10: mean -17/150, sd^2 = (0.0866..^2 + 0.0166..^2 + 0.1033..^2) / 2
    # = 277/30000, t_0.975,2 = 4.30265273; half width = t * sqrt(277/30000) / sqrt(3) = 0.2387014
    iv = report.seed_t_interval([-0.20, -0.13, -0.01])
    assert iv.values == (-0.20, -0.13, -0.01) and iv.n == 3
    assert iv.mean == pytest.approx(-0.1133333333, abs=1e-9)
    assert iv.sd == pytest.approx(0.0960902354, abs=1e-9)
    assert iv.low == pytest.approx(-0.3520347108, abs=1e-9)
    assert iv.high == pytest.approx(0.1253680441, abs=1e-9)
    same = report.seed_t_interval([-1.0, -1.0, -1.0])  # no spread: the interval is the point
    assert (same.mean, same.sd, same.low, same.high) == (-1.0, 0.0, -1.0, -1.0)
    two = report.seed_t_interval([0.1, 0.3])  # mean 0.2, sd 0.1414214, t_0.975,1 = 12.7062047: half 1.2706205
    assert (two.low, two.high) == (pytest.approx(-1.0706205, abs=1e-7), pytest.approx(1.4706205, abs=1e-7))
    one = report.seed_t_interval([0.25])
    assert (one.mean, one.sd, one.low, one.high, one.n) == (0.25, None, None, None, 1)
    assert report.seed_t_interval([]).n == 0


def test_t_quantiles_table_and_expansion() -> None:
    report = _report()
    assert report.t_quantile_975(1) == 12.706204736
    assert report.t_quantile_975(2) == pytest.approx(4.30265272974946, abs=1e-9)
    assert report.t_quantile_975(4) == pytest.approx(2.7764451051977934, abs=1e-9)
    assert report.t_quantile_975(30) == pytest.approx(2.0422724563012378, abs=1e-9)
    # above the table: the Cornish-Fisher expansion (scipy.stats.t.ppf(0.975, df) for reference)
    assert report.t_quantile_975(31) == pytest.approx(2.039513446396408, abs=1e-7)
    assert report.t_quantile_975(60) == pytest.approx(2.0002978220142604, abs=1e-8)
    assert report.t_quantile_975(10_000) == pytest.approx(1.96020126, abs=1e-7)
    with pytest.raises(ValueError):
        report.t_quantile_975(0)


def test_a_difference_is_a_win_or_loss_only_when_the_seed_interval_excludes_0() -> None:
    report = _report()
    interval = report.SeedInterval
    assert report.seed_reading(interval((0.1, 0.2, 0.3), 0.2, 0.1, 0.0516, 0.3484)) == "win"
    assert report.seed_reading(interval((-1.0,) * 3, -1.0, 0.0, -1.0, -1.0)) == "loss"
    assert report.seed_reading(report.seed_t_interval([-0.20, -0.13, -0.01])) == "not separated at this budget"
    assert report.seed_reading(interval((0.0, 0.2), 0.1, 0.14, 0.0, 1.37)) == "not separated at this budget"  # 0 on the edge
    assert report.seed_reading(report.seed_t_interval([-0.5])) == "n/a (one seed: no interval)"


def test_per_seed_differences_compare_each_seeds_runs_and_their_changes() -> None:
    report = _report()
    a = {0: _run({"1": 1.0, "2": 1.0, "3": 0.0, "4": 0.0}), 1: _run({"1": 1.0, "2": 0.0, "3": 0.0, "4": 0.0}),
         2: _run({"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0})}
    b = {0: _run({"1": 0.0, "2": 1.0, "3": 0.0, "4": 0.0}), 1: _run({"1": 1.0, "2": 1.0, "3": 1.0, "4": 0.0})}
    assert report.per_seed_differences(a, b) == {0: 0.25, 1: -0.5}  # seed 2 has no partner
    start = {id(a[0]): {"1": 1.0, "2": 0.0, "3": 0.0, "4": 0.0}}  # a's seed-0 warm start had game 1 already
    zero = dict.fromkeys(("1", "2", "3", "4"), 0.0)
    assert report.per_seed_differences(a, b, start=lambda r: start.get(id(r), zero)) == {0: 0.0, 1: -0.5}


def test_verdict_reads_the_seed_interval_and_keeps_the_game_bootstrap_secondary() -> None:
    report = _report()
    games = [str(g) for g in range(1, 21)]
    up, down = _run(dict.fromkeys(games, 1.0)), _run(dict.fromkeys(games, 0.0))
    # seeds 0 and 1 tie, seed 2 loses every game: the games bootstrap gives -1/3 [-1/3, -1/3], yet over seeds
    # mean -1/3, sd sqrt(1/3), half width t_0.975,2 / 3 = 1.4342176: not separated
    runs = {"steppo": {0: up, 1: up, 2: down}, "ppo": {0: up, 1: up, 2: up}}
    lines = report._verdict(runs, planned_seeds=3)
    assert "| StepPO − PPO | +0.00 | +0.00 | -1.00 | -0.333 | [-1.768, +1.101] | 3 | not separated at this budget |" in lines
    assert "| StepPO − PPO | -0.333 | [-0.333, -0.333] | [-1.000, +0.000] | 3 |" in lines  # secondary: no reading
    assert "**No difference is separated at this budget:** every per-seed interval contains 0." in lines
    assert not any("loses" in line or "| loss" in line for line in lines)
    runs["steppo"] = {0: down, 1: down, 2: down}  # every seed loses every game: the seed interval excludes 0
    lines = report._verdict(runs, 3)
    assert "| StepPO − PPO | -1.00 | -1.00 | -1.00 | -1.000 | [-1.000, -1.000] | 3 | loss for StepPO |" in lines
    assert any(line.startswith("**Separated at this budget:** StepPO − PPO (loss for StepPO)") for line in lines)
    one = report._verdict({"steppo": {0: down}, "ppo": {0: up}}, planned_seeds=3)
    row = next(line for line in one if line.startswith("| StepPO − PPO | -1.00 |"))
    assert row.endswith("| n/a | 1 | n/a (one seed: no interval) (provisional: 1 of 3 seeds) |")
    # critic variants against the group baselines
    runs = {"steppo": {0: up, 1: up}, "ppo": {0: up, 1: down}, "grpo": {0: up, 1: up}}
    lines = report._verdict(runs, 2)
    assert any(line.startswith("| PPO − GRPO | +0.00 | -1.00 | -0.500 |") for line in lines)
    assert "What holds up is only that **no critic variant beats the group baselines** (GRPO) here: no interval of a critic variant minus a group baseline lies above 0." in lines


def _metrics(**values: float) -> dict:
    base = {"iteration": 0, "charts/episodes": 4.0, "charts/success_rate": 0.5, "charts/return_mean": 0.5,
            "rollout/truncated_rate": 0.5, "rollout/steps": 40.0, "rollout/response_tokens": 240.0}
    return {**base, **values}


def test_critic_explained_variance_from_the_value_loss_or_logged() -> None:
    report = _report()
    # 4 episodes, 2 won, 2 truncated at 15 steps: 30 of 40 steps lost, p = 10/40 = 0.25, Var(G) = 0.1875.
    # losses/value 0.125 = 0.5 * MSE -> MSE 0.25 -> 1 - 0.25 / 0.1875 = -1/3; mean value 0.5: MSE >= 0.25^2,
    # so before the update at most 1 - 0.0625 / 0.1875 = 2/3
    m = _metrics(**{"losses/value": 0.125, "charts/value_mean": 0.5, "losses/value_clip_fraction": 0.4})
    assert report.step_return_stats(m, 15) == (0.25, 0.1875)
    fit = report.critic_fit(m, 15)
    assert fit.estimate == pytest.approx(-1 / 3) and fit.upper_bound == pytest.approx(2 / 3) and fit.before is None
    assert fit.value == fit.estimate
    logged = {**m, "critic/explained_variance_before": 0.3, "critic/explained_variance_after": 0.5}
    assert report.critic_fit(logged, 15) == report.CriticFit(before=0.3, after=0.5)  # the logged keys win
    assert report.critic_fit(logged, 15).value == 0.3
    no_reward = _metrics(**{"losses/value": 0.1, "charts/success_rate": 0.0, "charts/return_mean": 0.0,
                            "rollout/truncated_rate": 1.0, "rollout/steps": 60.0})
    assert report.step_return_stats(no_reward, 15) == (0.0, 0.0) and report.critic_fit(no_reward, 15) is None
    early_loss = _metrics(**{"losses/value": 0.1, "rollout/truncated_rate": 0.25})  # a loss before the step limit
    assert report.step_return_stats(early_loss, 15) is None and report.critic_fit(early_loss, 15) is None
    assert report.critic_fit(_metrics(), 15) is None  # no critic
    runs = {"steppo": {0: {"metrics": [m, {**no_reward, "iteration": 1}]}},
            "ppo": {0: {"metrics": [{k: v for k, v in logged.items() if k != "losses/value_clip_fraction"}]}},
            "grpo": {0: {"metrics": [_metrics()]}}}
    table, pooled = report._critic_table(runs, 15)
    assert "| StepPO seed 0 | 1 of 2 | -0.33 (estimate) | +0.67 | 40% |" in table
    assert "| PPO seed 0 | 1 of 1 | +0.30 before, +0.50 after the update (logged) | - | - |" in table
    assert set(pooled) == {"steppo", "ppo"}
    text = "\n".join(report._cannot_show(runs, 15))
    assert "Such iterations: StepPO 1 of 2, PPO 0 of 1." in text  # the reward-free batch
    assert "has 4.00-6.00 tokens per step" in text and "issue 37" in text  # 240 tokens over 40 and over 60 steps
    assert text.startswith("### What these runs cannot show\n\n**The critics' fit.**")  # PPO's +0.30: not "no critic learned"


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
    primary = next(line for line in lines if line.startswith("| StepPO − PPO | +0.00 |"))
    assert "| +0.000 | n/a | -0.250 n/a | 1 |" in primary  # one seed: the change's mean, no interval
    secondary = next(line for line in lines if line.startswith("| StepPO − PPO | +0.000 |"))
    assert "| -0.250 [" in secondary


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
