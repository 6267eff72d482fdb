"""Issue 7's CPU experiment: SFT warm start on expert steps, then StepPO vs PPO vs GRPO at equal budget.

Stages (each skipped when its output exists, so the script resumes after an interruption):

1. ``expert``  - expert step records on the train pool (``ExpertPolicy``, the same renderer and schema);
2. ``sft``     - behaviour cloning on those records (``--algo sft``);
3. ``eval0``   - greedy held-out evaluation of the untrained and the SFT model;
4. ``rl``      - one run per algorithm from the SFT checkpoint, same episodes and updates each,
                 greedy held-out evaluation every ``eval_every`` iterations;
5. ``report``  - the comparison table (markdown) and learning curves (PNG) under ``OUT/``.

    python experiments/textworld_cpu.py --out runs/exp1                 # the full experiment
    python experiments/textworld_cpu.py --out /tmp/smoke --smoke        # minutes: checks the pipeline

Task: ``steppo/TextWorld-v0`` preset ``coin_collector``: the agent must walk through a few rooms to
find and take a coin. Short walkthroughs (1-6 commands) keep episodes and prompts short enough for
CPU training, the reward is sparse enough that credit assignment matters, and a behaviour-cloned
135M model wins some but not most held-out games — the regime where RL can show an effect.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from steppo_agent.policies.expert import ExpertPolicy
from steppo_agent.records import SamplingConfig
from steppo_agent.rollout import RolloutConfig, run_rollout
from steppo_agent.trajectory_io import read_trajectories
from steppo_train.config import load_config
from steppo_train.evaluation import summarize
from steppo_train.logging_utils import plot_metrics
from steppo_train.trainer import train


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Every knob of the experiment (the same budget for every algorithm)."""

    model: str = "smollm2-135m"
    env: dict = dataclasses.field(default_factory=lambda: {
        "preset": "coin_collector", "level": 5, "max_steps": 8, "budget_chars": 1200,
        "history_window": 2, "show_inventory": False,
    })
    train_pool: int = 64
    eval_pool: int = 48
    expert_episodes: int = 64
    sft_iterations: int = 40
    sft_lr: float = 1e-5
    rl_algos: tuple[str, ...] = ("steppo", "ppo", "grpo")
    rl_iterations: int = 24
    tasks_per_iteration: int = 4
    group_size: int = 4
    max_tokens: int = 16
    actor_lr: float = 2e-6
    critic_lr: float = 1e-5
    eval_every: int = 6
    seed: int = 0


SMOKE = Experiment(train_pool=4, eval_pool=4, expert_episodes=4, sft_iterations=2, rl_iterations=2,
                   tasks_per_iteration=2, group_size=2, eval_every=1)


def _env(exp: Experiment, pool: str, size: int, **extra: object) -> dict:
    return {**exp.env, "pool": pool, "pool_size": size, **extra}


def stage_expert(exp: Experiment, out: Path) -> Path:
    path = out / "expert.jsonl"
    if not path.exists():
        run_rollout(ExpertPolicy(exp.model), RolloutConfig(
            env_id="steppo/TextWorld-v0", env_kwargs=_env(exp, "train", exp.train_pool, expert=True),
            num_tasks=exp.expert_episodes, seed=exp.seed, sampling=SamplingConfig(temperature=0.0, max_tokens=exp.max_tokens),
            output=path,
        ))
    return path


def stage_sft(exp: Experiment, out: Path, records: Path) -> str:
    run = out / "sft"
    final = run / "checkpoints" / f"iter_{exp.sft_iterations - 1:06d}" / "actor"
    if not final.exists():
        train(load_config("sft", overrides=dict(
            model=exp.model, from_trajectories=[str(records)], iterations=exp.sft_iterations, tasks_per_iteration=16,
            group_size=1, actor_lr=exp.sft_lr, output_dir=str(run), save_every=exp.sft_iterations, seed=exp.seed,
        )))
    return str(final)


def evaluate(exp: Experiment, model: str, out: Path, name: str) -> dict:
    from steppo_agent.policies import PolicyConfig, make_policy

    path = out / "eval" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        policy = make_policy(PolicyConfig(backend="vllm", model=model))
        try:
            run_rollout(policy, RolloutConfig(
                env_id="steppo/TextWorld-v0", env_kwargs=_env(exp, "eval", exp.eval_pool), num_tasks=exp.eval_pool,
                seed=1_000_000, sampling=SamplingConfig(temperature=0.0, max_tokens=exp.max_tokens), output=path,
            ))
        finally:
            policy.close()
    s = summarize(read_trajectories(path))
    return {"success": s.success_rate, "ci": s.success_ci, "return": s.return_mean, "steps": s.steps_mean,
            "invalid": s.invalid_rate}


def stage_rl(exp: Experiment, out: Path, warm: str, algo: str) -> Path:
    run = out / algo
    if not (run / "done.json").exists():
        t0 = time.time()
        result = train(load_config(algo, overrides=dict(
            model=warm, env_id="steppo/TextWorld-v0", env_kwargs=_env(exp, "train", exp.train_pool),
            eval_env_kwargs={"pool": "eval", "pool_size": exp.eval_pool}, eval_tasks=exp.eval_pool,
            eval_every=exp.eval_every, iterations=exp.rl_iterations, tasks_per_iteration=exp.tasks_per_iteration,
            group_size=exp.group_size, max_tokens=exp.max_tokens, actor_lr=exp.actor_lr, critic_lr=exp.critic_lr,
            output_dir=str(run), save_every=exp.rl_iterations, seed=exp.seed, resume=True,
        )))
        import resource

        (run / "done.json").write_text(json.dumps({
            "wall_s": time.time() - t0, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "metrics": str(result.metrics_path),
        }))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/textworld_cpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny budget: checks the pipeline in minutes")
    ap.add_argument("--algos", nargs="*", help="subset of rl_algos")
    args = ap.parse_args()
    exp = SMOKE if args.smoke else Experiment()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "experiment.json").write_text(json.dumps(dataclasses.asdict(exp), indent=1))
    records = stage_expert(exp, args.out)
    warm = stage_sft(exp, args.out, records)
    table = {"untrained": evaluate(exp, exp.model, args.out, "untrained"), "sft": evaluate(exp, warm, args.out, "sft")}
    runs = {}
    for algo in args.algos or exp.rl_algos:
        run = stage_rl(exp, args.out, warm, algo)
        runs[algo] = run / "metrics.jsonl"
        final = run / "checkpoints" / f"iter_{exp.rl_iterations - 1:06d}" / "actor"
        table[algo] = {**evaluate(exp, str(final), args.out, algo), **json.loads((run / "done.json").read_text())}
    plot_metrics(runs, args.out / "learning_curves.png", title="TextWorld coin_collector, SmolLM2-135M from SFT")
    lines = ["| model | held-out success [95% CI] | return | steps | invalid rate | RL wall time | peak RSS |", "|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        wall = f"{r['wall_s'] / 60:.0f} min" if "wall_s" in r else "-"
        rss = f"{r['peak_rss_gib']:.1f} GiB" if "peak_rss_gib" in r else "-"
        lines.append(f"| {name} | {r['success']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] | {r['return']:.2f} | {r['steps']:.1f} | {r['invalid']:.2f} | {wall} | {rss} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
