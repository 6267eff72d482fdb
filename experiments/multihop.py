"""Issue 14, exploratory part: StepPO vs PPO vs GRPO on MultiHopQA (the paper's headline task), one seed.

Stages (each skipped when its output exists, so the script resumes run by run after an interruption):

1. ``oracle`` - oracle step records on the train split: search each supporting title, then answer
                (``--backend expert`` with ``expert=true``);
2. ``sft``    - behaviour cloning on them: the warm start of every run;
3. ``eval0``  - greedy exact match of the warm start on ``eval_tasks`` questions of the held-out ``eval``
                split (HotpotQA, MuSiQue and 2Wiki dev questions, drawn by reset seeds from 1,000,000);
4. ``runs``   - StepPO, PPO and GRPO from the warm start at equal budget, held-out evaluation every
                ``eval_every`` iterations on the same questions. Skipped when the warm start scores below
                ``min_warm_em`` (a model that never answers right gives RL nothing to reinforce).

Bulky outputs go under ``--work`` (ignored by git); each finished stage's small outputs go to ``--results``
(default ``results/multihop``, committed). ``python experiments/horizon.py report`` puts them on the results
page next to the long-horizon runs.

    python experiments/multihop.py                      # everything not done yet
    python experiments/multihop.py --only-warm-start    # stages 1-3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from horizon import (  # experiments/ is on sys.path when this file runs as a script
    _cli,
    finish_run,
    per_game,
    sft_stage,
    warm_start_commands,
)
from textworld_cpu import STEPPO, _env_args, _run

from steppo_agent.trajectory_io import read_trajectories

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "steppo/MultiHopQA-v0"
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "steppo": ("steppo", {"gamma": 1.0}),
    "ppo": ("ppo", {"gamma": 1.0}),
    "grpo": ("grpo", {}),
}
EVAL_SEED = 1_000_000  # the trainer's in-loop evaluation draws its questions from the same reset seeds


@dataclasses.dataclass(frozen=True)
class MultiHop:
    """Every knob of the exploratory run (the same budget for every algorithm)."""

    model: str = "smollm2-135m"
    env: dict = dataclasses.field(default_factory=lambda: {
        "max_steps": 4, "top_k": 3, "budget_chars": 2400, "passage_chars": 300, "history_passage_chars": 100,
    })
    oracle_episodes: int = 96
    sft_iterations: int = 8
    sft_episodes: int = 24
    sft_lr: float = 2e-5
    eval_tasks: int = 100
    min_warm_em: float = 0.02
    iterations: int = 8
    tasks_per_iteration: int = 2
    group_size: int = 4
    max_tokens: int = 32
    actor_lr: float = 5e-6
    critic_lr: float = 5e-5
    trainable_layers: int | None = 8
    amp: bool | str = "auto"
    kv_cache_gib: int = 2
    eval_every: int = 4
    seed: int = 0


def warm_start(m: MultiHop, work: Path) -> str:
    """Stages 1-2: oracle records on the train split, then SFT; returns the warm-start checkpoint."""
    records = work / "oracle.jsonl"
    if not records.exists():
        env = {**m.env, "split": "train", "expert": True}
        _run([*STEPPO, "rollout", "--backend", "expert", "--model", m.model, "--env", ENV_ID, *_env_args(env),
              "-n", str(m.oracle_episodes), "--seed", "0", "--temperature", "0", "--max-tokens", str(m.max_tokens),
              "-q", "-o", str(records)], work)
    return sft_stage(m.model, records, m.sft_iterations, m.sft_episodes, m.sft_lr, m.amp, m.seed, work)


def eval_warm_start(m: MultiHop, warm: str, work: Path, results: Path) -> dict:
    """Stage 3: greedy held-out exact match of the warm start, saved to ``results/warm_start.json``."""
    out = results / "warm_start.json"
    if out.exists():
        return json.loads(out.read_text())
    path = work / "eval" / "sft.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*STEPPO, "eval", "--model", warm, "--env", ENV_ID, *_env_args({**m.env, "split": "eval"}),
           "-n", str(m.eval_tasks), "--seed", str(EVAL_SEED), "--max-tokens", str(m.max_tokens), "-q", "-o", str(path)]
    if not path.exists():
        _run(cmd, work)
    games = per_game(path)
    oracle = list(read_trajectories(work / "oracle.jsonl"))
    sources = {str(t.seed): str(t.steps[0].info.get("extra", {}).get("source", "?")) for t in read_trajectories(path)}
    summary = {"command": _cli(cmd), "success": sum(games.values()) / len(games), "games": games, "sources": sources,
               "oracle_success": sum(bool(t.success) for t in oracle) / len(oracle),
               "oracle_steps_mean": sum(len(t.steps) for t in oracle) / len(oracle),
               "commands": warm_start_commands(work, cmd)}
    results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def run_command(m: MultiHop, warm: str, variant: str, run: Path) -> list[str]:
    """The ``steppo train`` command line of one run."""
    algo, extra = VARIANTS[variant]
    sets = {"eval_env_kwargs": {"split": "eval"}, "eval_tasks": m.eval_tasks, "eval_every": m.eval_every,
            "actor_lr": m.actor_lr, "critic_lr": m.critic_lr, "save_every": 1, "amp": m.amp,
            "trainable_layers": m.trainable_layers, "kv_cache_gib": m.kv_cache_gib, **extra}
    return [*STEPPO, "train", "--algo", algo, "--model", warm, "--env", ENV_ID, *_env_args({**m.env, "split": "train"}),
            "--iterations", str(m.iterations), "--tasks", str(m.tasks_per_iteration), "--group-size", str(m.group_size),
            "--max-tokens", str(m.max_tokens), "--seed", str(m.seed), "--output-dir", str(run), "--resume",
            "--set", *[f"{k}={json.dumps(v)}" for k, v in sets.items()]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "multihop", help="bulky outputs (not committed)")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "multihop", help="small outputs (committed)")
    ap.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), help="subset of the algorithms")
    ap.add_argument("--only-warm-start", action="store_true", help="stop after stages 1-3")
    args = ap.parse_args()
    m = MultiHop()
    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "experiment.json").write_text(json.dumps(dataclasses.asdict(m), indent=1) + "\n")
    warm = warm_start(m, args.work)
    summary = eval_warm_start(m, warm, args.work, args.results)
    print(f"warm start: held-out exact match {summary['success']:.2f} on {len(summary['games'])} questions "
          f"(oracle records: {summary['oracle_success']:.2f} exact match, {summary['oracle_steps_mean']:.1f} steps)")
    if args.only_warm_start:
        return
    if summary["success"] < m.min_warm_em:
        print(f"the warm start scores below {m.min_warm_em}: no RL runs (see docs/results.md)")
        return
    for variant in args.variants or VARIANTS:
        name = f"{variant}-seed{m.seed}"
        finish_run(run_command(m, warm, variant, args.work / "runs" / name), variant, m.seed, args.work,
                   args.results / "runs" / f"{name}.json")


if __name__ == "__main__":
    main()
