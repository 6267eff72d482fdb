"""Issue 7's CPU experiment: SFT warm start on expert steps, then StepPO vs PPO vs GRPO at equal budget.

Stages (each skipped when its output exists, so the script resumes after an interruption):

1. ``expert``  - expert step records on the train pool (``ExpertPolicy``, the same renderer and schema);
2. ``sft``     - behaviour cloning on those records (``--algo sft``);
3. ``eval0``   - greedy held-out evaluation of the untrained (not in ``--smoke``) and the SFT model;
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
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from steppo_agent.analysis import summarize
from steppo_agent.trajectory_io import read_trajectories
from steppo_train.logging_utils import plot_interval_curves, plot_metrics, read_metrics

STEPPO = [sys.executable, "-m", "steppo"]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Every knob of the experiment (the same budget for every algorithm)."""

    model: str = "smollm2-135m"
    env: dict = dataclasses.field(default_factory=lambda: {
        "preset": "coin_collector", "level": 5, "max_steps": 8, "budget_chars": 1000,
        "prompt_style": "compact", "show_inventory": False,
    })
    train_pool: int = 64
    rl_pool: int = 1000
    eval_pool: int = 100
    expert_episodes: int = 64
    sft_iterations: int = 8
    sft_episodes: int = 16
    sft_lr: float = 2e-5
    rl_algos: tuple[str, ...] = ("steppo", "ppo", "grpo", "gigpo")
    rl_iterations: int = 16
    tasks_per_iteration: int = 4
    group_size: int = 4
    max_tokens: int = 16
    actor_lr: float = 5e-6
    critic_lr: float = 5e-5
    trainable_layers: int | None = 8
    amp: bool | str = "auto"  # bf16 autocast where bf16 is native (steppo_train.precision)
    kv_cache_gib: int = 1  # ~23k tokens of fp32 KV: the 100-game evaluation's ~26k wait briefly; 2 GiB cost 1 GiB of RSS
    eval_every: int = 4
    seed: int = 0
    eval_untrained: bool = True  # the untrained baseline row (the smoke run skips it: the same stage as the sft row's)


#: every stage, at the smallest budget that still runs each code path (a group of 2, evaluation every iteration):
#: CI runs it on every machine, and in float32 (CPUs without native bf16) each sampled step costs seconds to train
SMOKE = Experiment(train_pool=4, rl_pool=8, eval_pool=2, expert_episodes=2, sft_iterations=2, sft_episodes=1,
                   rl_iterations=2, tasks_per_iteration=1, group_size=2, eval_every=1, eval_untrained=False)


def _env_args(env: dict) -> list[str]:
    return [x for k, v in env.items() for x in ("--env-arg", f"{k}={json.dumps(v)}")]


def _run(cmd: list[str], out: Path) -> float:
    """Run one stage in its own process (memory is returned between stages); log the command line."""
    line = shlex.join(["steppo", *cmd[len(STEPPO):]])
    print(f"\n$ {line}", flush=True)
    with open(out / "commands.sh", "a") as f:
        f.write(line + "\n")
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def stage_expert(exp: Experiment, out: Path) -> Path:
    path = out / "expert.jsonl"
    if not path.exists():
        env = {**exp.env, "pool": "train", "pool_size": exp.train_pool, "expert": True, "draw": "cycle"}
        _run([*STEPPO, "rollout", "--backend", "expert", "--model", exp.model, "--env", "steppo/TextWorld-v0",
              *_env_args(env), "-n", str(exp.expert_episodes), "--temperature", "0", "--max-tokens", str(exp.max_tokens),
              "-q", "-o", str(path)], out)
    return path


def stage_sft(exp: Experiment, out: Path, records: Path) -> str:
    run = out / "sft"
    final = run / "checkpoints" / f"iter_{exp.sft_iterations - 1:06d}" / "actor"
    if not final.exists():
        _run([*STEPPO, "train", "--algo", "sft", "--model", exp.model, "--from-trajectories", str(records),
              "--iterations", str(exp.sft_iterations), "--tasks", str(exp.sft_episodes), "--group-size", "1",
              "--output-dir", str(run), "--seed", str(exp.seed), "--set", f"actor_lr={exp.sft_lr}",
              f"save_every={exp.sft_iterations}", f"amp={json.dumps(exp.amp)}"], out)
    return str(final)


def evaluate(exp: Experiment, model: str, out: Path, name: str) -> dict:
    path = out / "eval" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        env = {**exp.env, "pool": "eval", "pool_size": exp.eval_pool, "draw": "cycle"}
        _run([*STEPPO, "eval", "--model", model, "--env", "steppo/TextWorld-v0", *_env_args(env),
              "-n", str(exp.eval_pool), "--seed", "1000000", "--max-tokens", str(exp.max_tokens), "-q", "-o", str(path)], out)
    return _summary(path)


def _summary(path: Path) -> dict:
    s = summarize(read_trajectories(path))
    return {"success": s.success_rate, "ci": s.success_ci, "return": s.mean_return, "steps": s.mean_steps,
            "invalid": s.invalid_rate}


def rl_command(exp: Experiment, warm: str, algo: str, run: Path, extra_sets: dict | None = None) -> list[str]:
    """The ``steppo train`` command line of one RL run (also used by benchmarks/bench_memory.py)."""
    env = {**exp.env, "pool": "train", "pool_size": exp.rl_pool}
    sets = {"eval_env_kwargs": {"pool": "eval", "pool_size": exp.eval_pool, "draw": "cycle"}, "eval_tasks": exp.eval_pool,
            "eval_every": exp.eval_every, "actor_lr": exp.actor_lr, "critic_lr": exp.critic_lr,
            "save_every": exp.rl_iterations, "amp": exp.amp, "trainable_layers": exp.trainable_layers,
            "kv_cache_gib": exp.kv_cache_gib, **(extra_sets or {})}
    return [*STEPPO, "train", "--algo", algo, "--model", warm, "--env", "steppo/TextWorld-v0", *_env_args(env),
            "--iterations", str(exp.rl_iterations), "--tasks", str(exp.tasks_per_iteration),
            "--group-size", str(exp.group_size), "--max-tokens", str(exp.max_tokens), "--seed", str(exp.seed),
            "--output-dir", str(run), "--resume", "--set", *[f"{k}={json.dumps(v)}" for k, v in sets.items()]]


def stage_rl(exp: Experiment, out: Path, warm: str, algo: str) -> Path:
    run = out / algo
    if not (run / "done.json").exists():
        wall = _run(rl_command(exp, warm, algo, run), out)
        (run / "done.json").write_text(json.dumps({"wall_s": wall}))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/textworld_cpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny budget: checks the pipeline in minutes")
    ap.add_argument("--algos", nargs="*", help="subset of rl_algos")
    ap.add_argument("--no-rl", action="store_true", help="stop after the warm start and its evaluation")
    args = ap.parse_args()
    exp = SMOKE if args.smoke else Experiment()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "experiment.json").write_text(json.dumps(dataclasses.asdict(exp), indent=1))
    records = stage_expert(exp, args.out)
    warm = stage_sft(exp, args.out, records)
    table = {"untrained": evaluate(exp, exp.model, args.out, "untrained")} if exp.eval_untrained else {}
    table["sft"] = evaluate(exp, warm, args.out, "sft")
    print(json.dumps(table, indent=1))
    if args.no_rl:
        return
    runs: dict[str, Path] = {}
    curves: dict[str, list[tuple[float, float, float, float]]] = {}
    sft = table["sft"]
    for algo in args.algos or exp.rl_algos:
        run = stage_rl(exp, args.out, warm, algo)
        runs[algo] = run / "metrics.jsonl"
        # the trainer's own greedy evaluations (run/eval/iter_N.jsonl after N iterations)
        held_out = {int(p.stem.removeprefix("iter_")): _summary(p) for p in (run / "eval").glob("iter_*.jsonl")}
        curves[algo] = [(0.0, sft["success"], *sft["ci"])] + [
            (float(it), e["success"], *e["ci"]) for it, e in sorted(held_out.items())]  # (x, mean, low, high)
        result = held_out.get(exp.rl_iterations)
        if result is None:  # eval_every does not divide rl_iterations: evaluate the final checkpoint
            final = run / "checkpoints" / f"iter_{exp.rl_iterations - 1:06d}" / "actor"
            result = evaluate(exp, str(final), args.out, algo)
        table[algo] = {**result, **json.loads((run / "done.json").read_text())}
        rows = read_metrics(run / "metrics.jsonl")
        peaks = [r["perf/peak_rss_gib"] for r in rows if "perf/peak_rss_gib" in r]
        if peaks:
            table[algo]["peak_rss_gib"] = max(peaks)
        table[algo]["median_iteration_s"] = statistics.median(
            r["time/rollout_s"] + r["time/update_s"] for r in rows if "time/update_s" in r)
    plot_metrics(runs, args.out / "learning_curves.png", title="TextWorld coin_collector, SmolLM2-135M from SFT")
    plot_interval_curves(curves, args.out / "heldout_success.png", xlabel="RL iteration (0 = SFT warm start)",
                         title=f"greedy success on {exp.eval_pool} held-out games, 95% bootstrap CI")
    lines = ["| model | held-out success [95% CI] | return | steps | invalid rate | RL wall time | median s / iteration | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        wall = f"{r['wall_s'] / 60:.0f} min" if "wall_s" in r else "-"
        med = f"{r['median_iteration_s']:.0f} s" if "median_iteration_s" in r else "-"
        rss = f"{r['peak_rss_gib']:.1f} GiB" if "peak_rss_gib" in r else "-"
        lines.append(f"| {name} | {r['success']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] | {r['return']:.2f} | {r['steps']:.1f} "
                     f"| {r['invalid']:.2f} | {wall} | {med} | {rss} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
