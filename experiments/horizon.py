"""Issue 14: does step-level credit assignment win over a long horizon? Several seeds x algorithms and
the paper's two ablations, at equal budget, from one SFT warm start.

Stages (each skipped when its output exists, so the script resumes run by run after an interruption):

1. ``expert`` - expert step records on the train pool (every won episode takes >= 10 steps);
2. ``sft``    - behaviour cloning on them: the one warm start every run starts from;
3. ``eval0``  - greedy held-out success of the warm start (the task is chosen so that it is 20-60%);
                On a fresh machine (the warm start is not committed) stages 1-3 run again and the rebuilt warm
                start is compared game by game with the committed one (``results/horizon/warm_start_rebuilds.json``);
4. ``runs``   - for each seed, each variant (StepPO, PPO, GRPO, GiGPO, StepPO w/o step-GAE,
                StepPO w/o step-IS): ``steppo train`` from the warm start, the same episodes per
                iteration, iterations and optimizer steps; held-out evaluation every ``eval_every``.

Bulky outputs (trajectories, checkpoints) go under ``--work`` (ignored by git). Each *finished* run's
small outputs go to ``--results`` (default ``results/horizon``, committed): its command line, its
metrics, and per held-out game success at every evaluation. The docs section is regenerated from those
files alone by ``python experiments/horizon.py report`` (see ``experiments/horizon_report.py``).

    python experiments/horizon.py                       # everything not done yet, then the report
    python experiments/horizon.py --seeds 0 --variants steppo ppo   # a subset
    python experiments/horizon.py --only-warm-start     # stages 1-3: check the task choice
    python experiments/horizon.py --repeat --seeds 2 --variants steppo   # StepPO seed 2 again, on this CPU
    python experiments/horizon.py report                # regenerate the docs section and plots
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import resource
import shlex
from pathlib import Path

from textworld_cpu import (  # experiments/ is on sys.path when this file runs as a script
    STEPPO,
    _env_args,
    _run,
)

from steppo_agent.trajectory_io import read_trajectories

ROOT = Path(__file__).resolve().parents[1]

#: name -> (algorithm, extra trainer settings). gamma = 1 for every critic variant so that the step and
#: token timelines discount alike (the reward comes at the end only).
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "steppo": ("steppo", {"gamma": 1.0}),
    "ppo": ("ppo", {"gamma": 1.0}),
    "grpo": ("grpo", {}),
    "gigpo": ("gigpo", {}),
    "steppo-no-step-gae": ("steppo", {"gamma": 1.0, "advantage_level": "token"}),
    "steppo-no-step-is": ("steppo", {"gamma": 1.0, "ratio_level": "token"}),
}


@dataclasses.dataclass(frozen=True)
class Horizon:
    """Every knob of the experiment (the same budget for every run)."""

    model: str = "smollm2-135m"
    env: dict = dataclasses.field(default_factory=lambda: {
        "preset": "coin_collector", "level": 10, "max_steps": 18, "budget_chars": 1000,
        "prompt_style": "compact", "show_inventory": False,
    })
    train_pool: int = 64
    rl_pool: int = 1000
    eval_pool: int = 100
    expert_episodes: int = 64
    sft_iterations: int = 5
    sft_episodes: int = 16
    sft_lr: float = 2e-5
    iterations: int = 12
    tasks_per_iteration: int = 2
    group_size: int = 4
    max_tokens: int = 16
    actor_lr: float = 5e-6
    critic_lr: float = 5e-5
    trainable_layers: int | None = 8
    amp: bool | str = "auto"
    kv_cache_gib: int = 2
    eval_every: int = 6
    seeds: tuple[int, ...] = (0, 1, 2)


def _cli(cmd: list[str]) -> str:
    return shlex.join(["steppo", *cmd[len(STEPPO):]])


def warm_start(h: Horizon, work: Path) -> str:
    """Stages 1-2: expert records on the train pool, then SFT; returns the warm-start checkpoint."""
    records = work / "expert.jsonl"
    if not records.exists():
        env = {**h.env, "pool": "train", "pool_size": h.train_pool, "expert": True, "draw": "cycle"}
        _run([*STEPPO, "rollout", "--backend", "expert", "--model", h.model, "--env", "steppo/TextWorld-v0",
              *_env_args(env), "-n", str(h.expert_episodes), "--temperature", "0", "--max-tokens", str(h.max_tokens),
              "-q", "-o", str(records)], work)
    return sft_stage(h.model, records, h.sft_iterations, h.sft_episodes, h.sft_lr, h.amp, 0, work)


def sft_stage(model: str, records: Path, iterations: int, episodes: int, lr: float, amp: bool | str, seed: int,
              work: Path) -> str:
    """Behaviour cloning on ``records`` into ``work/sft`` unless its last checkpoint exists (resumable iteration
    by iteration); returns that checkpoint's actor folder."""
    final = work / "sft" / "checkpoints" / f"iter_{iterations - 1:06d}" / "actor"
    if not final.exists():
        _run([*STEPPO, "train", "--algo", "sft", "--model", model, "--from-trajectories", str(records),
              "--iterations", str(iterations), "--tasks", str(episodes), "--group-size", "1",
              "--output-dir", str(work / "sft"), "--seed", str(seed), "--resume", "--set", f"actor_lr={lr}",
              "save_every=1", f"amp={json.dumps(amp)}"], work)
    return str(final)


def per_game(path: Path) -> dict[str, float]:
    """Held-out success per game (task seed) of one evaluation file."""
    return {str(t.seed): 1.0 if t.success else 0.0 for t in read_trajectories(path)}


def expert_lengths(work: Path) -> list[int]:
    return [len(t.steps) for t in read_trajectories(work / "expert.jsonl") if t.success]


def eval_warm_start(h: Horizon, warm: str, work: Path, results: Path) -> dict:
    """Stage 3: greedy held-out success of the warm start, saved to ``results/warm_start.json``.

    The warm-start checkpoint lives in ``work`` (not committed), so a fresh machine rebuilds it from the same
    command lines. Floating point differs between CPUs, so a rebuilt warm start is evaluated again on the same
    held-out games and compared game by game with the committed one (:func:`note_rebuild`)."""
    out = results / "warm_start.json"
    path = work / "eval" / "sft.jsonl"
    cmd = [*STEPPO, "eval", "--model", warm, "--env", "steppo/TextWorld-v0",
           *_env_args({**h.env, "pool": "eval", "pool_size": h.eval_pool, "draw": "cycle"}),
           "-n", str(h.eval_pool), "--seed", "1000000", "--max-tokens", str(h.max_tokens), "-q", "-o", str(path)]
    fresh = not path.exists()
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(cmd, work)
    if out.exists():
        summary = json.loads(out.read_text())
        if fresh:
            note_rebuild(summary, per_game(path), results / "warm_start_rebuilds.json")
        return summary
    games = per_game(path)
    lengths = expert_lengths(work)
    summary = {"command": _cli(cmd), "success": sum(games.values()) / len(games), "games": games,
               "expert_steps_min": min(lengths), "expert_steps_mean": sum(lengths) / len(lengths),
               "expert_steps_max": max(lengths), "commands": warm_start_commands(work, cmd), "machine": machine()}
    results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def note_rebuild(committed: dict, games: dict[str, float], dest: Path) -> None:
    """Append to ``dest`` how a rebuilt warm start compares with the committed one: this machine, its held-out
    success and the games whose outcome differs (an identical entry is not repeated)."""
    differ = sorted((g for g in committed["games"] if games.get(g) != committed["games"][g]), key=int)
    entry = {"machine": machine(), "success": sum(games.values()) / len(games), "games_differing": differ}
    entries = json.loads(dest.read_text()) if dest.exists() else []
    if entry not in entries:
        dest.write_text(json.dumps([*entries, entry], indent=1, sort_keys=True) + "\n")
    print(f"rebuilt warm start: held-out success {entry['success']:.2f} (committed {committed['success']:.2f}); "
          f"{len(differ)} of {len(committed['games'])} games differ")


def machine() -> str:
    """The CPU (model, vector / bf16 flags, torch's capability) every result file records: floating point,
    the bf16 decision of ``amp=auto`` and wall times depend on it."""
    from steppo_train.precision import describe_cpu  # torch: imported only when a stage records its machine

    return describe_cpu()


def warm_start_commands(work: Path, eval_cmd: list[str]) -> list[str]:
    """The command lines behind the warm start: the newest expert rollout and SFT in ``commands.sh``, then ``eval_cmd``
    (earlier tries, e.g. a longer SFT, stay in that log but are not the warm start)."""
    log = (work / "commands.sh").read_text().splitlines()
    newest = [next((c for c in reversed(log) if key in c), None) for key in (" rollout --backend expert ", " --algo sft ")]
    return [c for c in newest if c] + [_cli(eval_cmd)]


def run_command(h: Horizon, warm: str, variant: str, seed: int, run: Path) -> list[str]:
    """The ``steppo train`` command line of one run."""
    algo, extra = VARIANTS[variant]
    sets = {"eval_env_kwargs": {"pool": "eval", "pool_size": h.eval_pool, "draw": "cycle"}, "eval_tasks": h.eval_pool,
            "eval_every": h.eval_every, "actor_lr": h.actor_lr, "critic_lr": h.critic_lr, "save_every": 1,
            "amp": h.amp, "trainable_layers": h.trainable_layers, "kv_cache_gib": h.kv_cache_gib, **extra}
    return [*STEPPO, "train", "--algo", algo, "--model", warm, "--env", "steppo/TextWorld-v0",
            *_env_args({**h.env, "pool": "train", "pool_size": h.rl_pool}),
            "--iterations", str(h.iterations), "--tasks", str(h.tasks_per_iteration), "--group-size", str(h.group_size),
            "--max-tokens", str(h.max_tokens), "--seed", str(seed), "--output-dir", str(run), "--resume",
            "--set", *[f"{k}={json.dumps(v)}" for k, v in sets.items()]]


def one_run(h: Horizon, warm: str, variant: str, seed: int, work: Path, results: Path, repeat: bool = False) -> None:
    """Train one (variant, seed) unless its results exist; then save its small outputs to ``results/runs``.

    With ``repeat``, train it again on this CPU whatever ran elsewhere, with the same command line, so the result
    says how far the CPU alone (its floating point, the bf16 decision, its rebuilt warm start) moves one run; its
    outputs go to ``results/repeats/<variant>-seed<s>-<cpu tag>.json``."""
    name = f"{variant}-seed{seed}" + (f"-{cpu_tag(machine())}" if repeat else "")
    folder = "repeats" if repeat else "runs"
    run = work / folder / name
    finish_run(run_command(h, warm, variant, seed, run), variant, seed, work, results / folder / f"{name}.json")


def cpu_tag(description: str) -> str:
    """A short, stable file-name part for one CPU description (:func:`machine`): the first 8 hex digits of
    its SHA-1, so repeats of one run on different CPUs get different files."""
    return hashlib.sha1(description.encode()).hexdigest()[:8]


def finish_run(cmd: list[str], variant: str, seed: int, work: Path, dest: Path) -> None:
    """Run ``cmd`` (a resumable ``steppo train ... --output-dir RUN --resume``) unless ``dest`` exists, then write
    ``dest``: the command line, wall time, peak memory, metrics and per-game success at every held-out evaluation."""
    if dest.exists():
        print(f"{dest.stem}: done (results in {dest})")
        return
    run = Path(cmd[cmd.index("--output-dir") + 1])
    wall = _run(cmd, work)  # resumable: --resume continues from the newest checkpoint
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {int(p.stem.removeprefix("iter_")): per_game(p) for p in sorted((run / "eval").glob("iter_*.jsonl"))}
    peak = max((r.get("perf/peak_rss_gib", 0.0) for r in metrics), default=0.0)
    record = {"variant": variant, "seed": seed, "command": _cli(cmd), "wall_s": round(wall, 1),
              "peak_rss_gib": round(peak, 3), "machine": machine(), "children_maxrss_gib": round(_children_maxrss_gib(), 3),
              "eval": {str(k): v for k, v in evals.items()}, "metrics": metrics}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
    tmp.replace(dest)
    print(f"{dest.stem}: wrote {dest}")


def _children_maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="all", choices=("all", "report"))
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "horizon", help="bulky outputs (not committed)")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "horizon", help="small outputs (committed)")
    ap.add_argument("--seeds", type=int, nargs="*", help="subset of the seeds (default 0 1 2)")
    ap.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), help="subset of the variants")
    ap.add_argument("--only-warm-start", action="store_true", help="stop after stages 1-3")
    ap.add_argument("--repeat", action="store_true",
                    help="run the named --seeds and --variants again on this CPU (results/horizon/repeats/): how far "
                         "the CPU alone moves a run")
    args = ap.parse_args()
    if args.repeat and not (args.seeds and args.variants):
        ap.exit(2, "steppo: error: --repeat needs the runs to repeat: add --seeds and --variants, "
                   "e.g. --repeat --seeds 2 --variants steppo\n")
    h = Horizon()
    if args.command == "all":
        args.work.mkdir(parents=True, exist_ok=True)
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "experiment.json").write_text(json.dumps(dataclasses.asdict(h), indent=1) + "\n")
        warm = warm_start(h, args.work)
        summary = eval_warm_start(h, warm, args.work, args.results)
        print(f"warm start: held-out success {summary['success']:.2f}; expert episodes take "
              f"{summary['expert_steps_min']}-{summary['expert_steps_max']} steps")
        if not args.only_warm_start:
            for seed in args.seeds if args.seeds is not None else h.seeds:
                for variant in args.variants or VARIANTS:
                    one_run(h, warm, variant, seed, args.work, args.results, args.repeat)
    from horizon_report import write_report  # experiments/ is on sys.path when this file runs as a script

    write_report(args.results, ROOT / "docs")


if __name__ == "__main__":
    main()
