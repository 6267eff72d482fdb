"""Issue 37, part 2: the credit-assignment benchmark's maths on hand-built tensors, its report's determinism, and a
tiny end-to-end fit + score on synthetic features (no model)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "experiments"))  # credit.py imports its siblings, as when it runs as a script
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "experiments"))


credit = _load("credit")
report = _load("credit_report")


# -- AUC and Spearman --------------------------------------------------------------------------------------------


def test_auc_hand_cases_with_ties() -> None:
    t = torch.tensor
    assert credit.auc(t([0.1, 0.4, 0.35, 0.8]), t([0, 0, 1, 1])) == pytest.approx(0.75)
    # pos {1, 2}, neg {1, 0}: (1 vs 1) = 1/2, (1 vs 0) = 1, (2 vs 1) = 1, (2 vs 0) = 1 -> 3.5 / 4
    assert credit.auc(t([1.0, 1.0, 2.0, 0.0]), t([1, 0, 1, 0])) == pytest.approx(0.875)
    assert credit.auc(t([3.0, 3.0, 3.0]), t([1, 0, 0])) == pytest.approx(0.5)  # all tied
    assert credit.auc(t([0.0, 1.0, 2.0]), t([1, 0, 0])) == pytest.approx(0.0)
    assert credit.auc(t([0.0, 1.0]), t([True, True])) != credit.auc(t([0.0, 1.0]), t([True, True]))  # NaN: no negative


def test_spearman_hand_case_and_ties() -> None:
    _, rho = credit.rank_stats(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1]))
    # ranks 1..4 vs labels: cov sum 4, sum of squared rank deviations 5, of label deviations 4 -> 4 / sqrt(20)
    assert float(rho[0]) == pytest.approx(4 / 20**0.5)
    # ties take midranks: scores [1, 1, 2] -> ranks [1.5, 1.5, 3]; labels [0, 1, 1]
    _, rho = credit.rank_stats(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0, 1, 1]))
    r, y = torch.tensor([1.5, 1.5, 3.0]), torch.tensor([0.0, 1.0, 1.0])
    expected = ((r - r.mean()) * (y - y.mean())).sum() / ((r - r.mean()).pow(2).sum() * (y - y.mean()).pow(2).sum()).sqrt()
    assert float(rho[0]) == pytest.approx(float(expected))


def test_weights_are_multiplicities() -> None:
    scores = torch.tensor([0.3, 0.3, 0.9, 0.1, 0.5])
    labels = torch.tensor([1, 0, 1, 0, 0])
    weights = torch.tensor([[2.0, 1.0, 0.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    auc, rho = credit.rank_stats(scores, labels, torch.arange(5), weights)  # each item its own group
    repeated = torch.repeat_interleave(torch.arange(5), weights[0].long())
    auc0, rho0 = credit.rank_stats(scores[repeated], labels[repeated])
    assert float(auc[0]) == pytest.approx(float(auc0[0]))
    assert float(rho[0]) == pytest.approx(float(rho0[0]))
    assert float(auc[1]) == pytest.approx(credit.auc(scores, labels))


# -- folds, bootstrap, baselines, token aggregation --------------------------------------------------------------


def test_fold_assignment_keeps_task_groups_together() -> None:
    seeds = torch.tensor([5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 13, 4])
    fold = credit.fold_assignment(seeds, 3, seed=0)
    assert fold.shape == seeds.shape and set(fold.tolist()) == {0, 1, 2}  # every episode in exactly one fold
    for s in seeds.unique():
        assert len(set(fold[seeds == s].tolist())) == 1  # no task seed in two folds
    tasks_per_fold = [len(seeds[fold == k].unique()) for k in range(3)]
    assert sorted(tasks_per_fold) == [2, 2, 2]
    assert torch.equal(fold, credit.fold_assignment(seeds, 3, seed=0))  # deterministic
    with pytest.raises(credit.CreditError, match="cannot fill"):
        credit.fold_assignment(torch.tensor([1, 1, 2]), 3, seed=0)


def test_bootstrap_resamples_whole_groups() -> None:
    counts = credit.bootstrap_counts(3, 50, seed=3)
    assert counts.shape == (50, 3) and torch.equal(counts.sum(1), torch.full((50,), 3.0))  # 3 groups per replicate
    assert torch.equal(counts, credit.bootstrap_counts(3, 50, seed=3))
    # group counts = item multiplicities: the same statistics as repeating each item its group's count times
    scores, labels, groups = torch.tensor([0.2, 0.7, 0.7, 0.1, 0.9, 0.4]), torch.tensor([0, 1, 0, 0, 1, 1]), torch.tensor([0, 0, 1, 2, 2, 2])
    auc, rho = credit.rank_stats(scores, labels, groups, counts)
    for r in (0, 7, 49):
        repeated = torch.repeat_interleave(torch.arange(6), counts[r, groups].long())
        auc0, rho0 = credit.rank_stats(scores[repeated], labels[repeated])
        assert float(auc[r]) == pytest.approx(float(auc0[0]), nan_ok=True)
        assert float(rho[r]) == pytest.approx(float(rho0[0]), nan_ok=True)


def test_mc_minus_step_index_baseline_uses_the_other_folds() -> None:
    returns = torch.tensor([[3.0, 2.0, 1.0], [5.0, 4.0, 0.0], [1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert credit.step_index_baseline(returns, mask, torch.tensor([1, 1, 0, 0])).tolist() == [4.0, 3.0, 1.0]
    fold = torch.tensor([0, 0, 1, 1])
    a = credit.mc_minus_baseline(returns, mask, fold, 2)
    # fold 0 against trajectories 2, 3: b = [1.5, 2, 2]; fold 1 against 0, 1: b = [4, 3, 1]
    assert a.tolist() == [[1.5, 0.0, -1.0], [3.5, 2.0, 0.0], [-3.0, 0.0, 0.0], [-2.0, -1.0, 1.0]]


def test_token_advantages_to_steps_mean_and_first() -> None:
    # trajectory 0: step 0 has tokens 0-1, step 1 tokens 2-4, step 2 none; trajectory 1: step 0 has one token
    idx = torch.tensor([[0, 0, 1, 1, 1], [0, -1, -1, -1, -1]])
    token_adv = torch.tensor([[1.0, 3.0, -2.0, 4.0, 1.0], [0.5, 9.0, 9.0, 9.0, 9.0]])
    mean, first = credit.token_to_step(token_adv, idx, 3)
    assert mean.tolist() == [[2.0, 1.0, 0.0], [0.5, 0.0, 0.0]]
    assert first.tolist() == [[1.0, -2.0, 0.0], [0.5, 0.0, 0.0]]


def test_explained_variance_and_interval() -> None:
    r = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert credit.explained_variance(r, r) == pytest.approx(1.0)
    assert credit.explained_variance(r, torch.full((4,), 1.5)) == pytest.approx(0.0)
    assert credit.percentile_interval(torch.tensor([float("nan"), 0.0, 1.0, 2.0, 3.0, 4.0]), 0.5) == pytest.approx((1.0, 3.0))


# -- end to end on synthetic features ---------------------------------------------------------------------------


def _synthetic(random_features: bool, tasks: int = 16, group: int = 4, steps: int = 6, seed: int = 0):
    """Episodes of ``steps`` steps; each step makes progress (label 1) with probability 1/2 and the episode's only
    reward, at its last step, is the number of progress steps. The state before step ``t`` shows ``(t, progress so
    far)``: its value is ``V_t = progress + (steps - t) / 2``, linear in the features, and the label is a function
    of the features of consecutive states: ``label_t = r_t + V_{t+1} - V_t + 1/2`` (the TD error, gamma = 1).
    So a fitted critic's lambda = 0 advantage is about ``label - 1/2`` (at lambda = 1 the later steps' coin flips
    add noise). The control's features are noise. A step's action tokens share its state's features."""
    from steppo_agent.records import PolicyInfo, SamplingConfig, Step, Trajectory
    from steppo_train.batch import build_step_batch

    g = torch.Generator().manual_seed(seed)
    trajs, labels, step_x, token_x = [], [], [], []
    for task in range(tasks):
        for sample in range(group):
            done, records = 0, []
            for t in range(steps):
                label = int(torch.rand((), generator=g) < 0.5)
                x = torch.tensor([float(t), float(done)]) if not random_features else torch.randn(2, generator=g)
                n_tokens = 1 + int(torch.randint(3, (), generator=g))
                step_x.append(torch.cat([x, torch.randn(4, generator=g) * 0.1]))
                token_x += [step_x[-1]] * n_tokens
                done += label
                labels.append(bool(label))
                records.append(Step(index=t, observation=f"t={t} done={done - label}", prompt_ids=[1, 2],
                                    response_ids=[3] * n_tokens, response_logprobs=[0.0] * n_tokens, response_text="",
                                    reward=float(done) if t == steps - 1 else 0.0, terminated=t == steps - 1,
                                    info={"step_label": label}))
            trajs.append(Trajectory(id=f"{task}-{sample}", env_id="toy", task_id=str(task), seed=task,
                                    group_id=str(task), policy=PolicyInfo(backend="test", model="none"),
                                    sampling=SamplingConfig(), steps=records, return_=float(done), terminated=True))
    batch = build_step_batch(trajs)
    return credit.CreditData(batch, torch.tensor(labels), torch.tensor([t.seed for t in trajs]),
                             torch.stack(step_x), torch.stack(token_x))


# the default head (Adam lr 1e-3, chosen on 576-d hidden states) moves too little for 6 toy features in 400 steps
SMALL = dict(critic_seeds=(0, 1), gammas=(1.0,), lams=(0.0, 1.0), bootstrap=100, head_lr=1e-2)


def test_fit_and_score_recover_a_known_value_function() -> None:
    c = dataclasses.replace(credit.Credit(), **SMALL)
    scored = credit.score(_synthetic(random_features=False), c)
    rows = {(r["estimator"], r["gamma"], r["lam"]): r for r in scored["rows"]}
    assert {r["estimator"] for r in scored["rows"]} == set(credit.ESTIMATORS)
    step = rows["step-GAE", 1.0, 0.0]
    assert step["auc"] > 0.9
    assert step["auc_ci"][0] <= step["auc"] <= step["auc_ci"][1]
    assert len(step["auc_seeds"]) == 2
    assert rows["token-GAE (mean)", 1.0, 0.0]["auc"] > 0.9  # the TD error sits on each step's last token
    assert 0.5 < rows["step-GAE", 1.0, 1.0]["auc"] < step["auc"]  # Monte-Carlo noise of the later steps
    # the critic learned the value: the best possible held-out EV is 1 - E[Var(G - V)] / Var(G) = 1 - (3.5 / 4) / (6 / 4)
    # = 0.417 (the later steps' coin flips are noise no critic can predict)
    assert 0.3 < min(scored["critic_ev"]["step"]["1"]) < 0.43
    assert rows["GRPO", None, None]["auc_seeds"] == [rows["GRPO", None, None]["auc"]]  # no critic, one "seed"


def test_fit_and_score_random_features_are_near_chance() -> None:
    c = dataclasses.replace(credit.Credit(), **SMALL)
    scored = credit.score(_synthetic(random_features=True), c)
    step = next(r for r in scored["rows"] if r["estimator"] == "step-GAE" and r["lam"] == 0.0)
    assert 0.3 < step["auc"] < 0.7
    assert max(scored["critic_ev"]["step"]["1"]) < 0.1
    assert credit.score(_synthetic(random_features=True), c) == scored  # seeded generators only: deterministic


def test_missing_labels_and_warm_start_are_one_line_errors(tmp_path: Path) -> None:
    from steppo_agent.records import PolicyInfo, SamplingConfig, Step, Trajectory

    step = Step(index=0, observation="o", prompt_ids=[1], response_ids=[2], response_logprobs=[0.0], response_text="")
    traj = Trajectory(id="0-0", env_id="toy", task_id="0", seed=0, group_id="0", policy=PolicyInfo(backend="t", model="m"),
                      sampling=SamplingConfig(), steps=[step])
    path = tmp_path / "r.jsonl"
    path.write_text(traj.to_json_line() + "\n")
    with pytest.raises(credit.CreditError, match="step_labels=true"):
        credit.load_records(path)
    task = credit.tasks(tmp_path / "horizon", tmp_path / "multihop")["textworld"]
    with pytest.raises(credit.CreditError, match="experiments/horizon.py --only-warm-start"):
        credit.resolve_warm_start(task, None)


# -- the report ---------------------------------------------------------------------------------------------------


def _result(task: str) -> dict:
    settings = {**dataclasses.asdict(credit.Credit()), "critic_seeds": [0, 1]}
    rows = [{"estimator": name, "gamma": g, "lam": lam, "auc": 0.6 + 0.01 * k, "auc_ci": [0.55, 0.7],
             "auc_seeds": [0.6, 0.61] if uses else [0.6], "spearman": 0.1, "spearman_ci": [0.05, 0.2],
             "spearman_seeds": [0.1, 0.1] if uses else [0.1]}
            for k, (name, (uses, by_gamma, by_lam)) in enumerate(credit.ESTIMATORS.items())
            for g in ((1.0, 0.99) if by_gamma else (None,)) for lam in ((1.0, 0.95) if by_lam else (None,))]
    return {"task": task, "env_id": "steppo/TextWorld-v0", "env": {"level": 10}, "settings": settings,
            "temperature": 1.0, "counts": {"episodes": 8, "task_seeds": 2, "group_size": 4, "steps": 40, "mean_steps": 5.0, "action_tokens": 300,
                       "success_rate": 0.5, "truncated": 4, "labels_positive": 12, "label_rate": 0.3},
            "critic_ev": {"step": {"1": [0.3, 0.31], "0.99": [0.3, 0.3]}, "token": {"1": [0.2, 0.2], "0.99": [0.2, 0.2]}},
            "seconds": {"record": None, "features": 60.0, "features_per_row": 1.5, "score": 30.0},
            "machine": "test CPU", "commands": ["python experiments/credit.py"], "rows": rows}


def test_report_regenerates_byte_identically(tmp_path: Path) -> None:
    docs, results = tmp_path / "docs", tmp_path / "results"
    docs.mkdir()
    results.mkdir()
    page = "# Results\n\nintro\n\n## Single seed, 5-step episodes\n\nold\n"
    (docs / "results.md").write_text(page)
    report.write_report(results, docs)  # no results yet: the block says how to make them, no plot
    text = (docs / "results.md").read_text()
    assert "No results yet: run `python experiments/credit.py`" in text and not (docs / report.PLOT).exists()
    assert text.index(report.END) < text.index("## Single seed") and text.endswith("old\n")
    (results / "textworld.json").write_text(json.dumps(_result("textworld")))
    report.write_report(results, docs)
    first = (docs / "results.md").read_bytes(), (docs / report.PLOT).read_bytes()
    report.write_report(results, docs)
    assert ((docs / "results.md").read_bytes(), (docs / report.PLOT).read_bytes()) == first
    text = first[0].decode()
    assert text.count(report.BEGIN) == 1 and "No results yet" not in text
    assert "| step-GAE | 0.99 | 0.95 | 0.600 [0.550, 0.700] | 0.600-0.610 (0.605 ± 0.007, 2 seeds) |" in text
    assert "| GRPO | - | - |" in text
