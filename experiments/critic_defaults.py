"""Issue 37, part 1: which critic settings let the step critic learn? Each setting trains the critic alone
(``critic_warmup`` = every iteration: the actor never moves) offline on the same recorded warm-start
episodes, batch after batch as a run would see them, and logs its explained variance on each new batch
*before* it trains on it (held-out: the critic has not seen those episodes) and after.

Settings (everything else as in ``experiments/horizon.py``'s runs: trainable_layers 8, critic_lr 5e-5,
8 episodes per iteration, gamma = lam = 1):

* ``default``        - the defaults: value head on layer-normalised features, V starts at N(0, 0.001^2),
                       no value clip;
* ``far-start-clip`` - the situation of the 2026-12 runs: V starts at N(0, 0.5^2) (their |V| was
                       0.4-0.6) and value_clip 0.2;
* ``far-start``      - the same far start without the clip;
* ``clip``           - the default start with value_clip 0.2.

Each finished setting writes ``results/critic/<setting>.json`` (command line, CPU, per-iteration
metrics); the script skips settings whose file exists and prints the table.

    python experiments/critic_defaults.py --records runs/credit/textworld/records.jsonl
    python experiments/critic_defaults.py report
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from textworld_cpu import STEPPO, _run  # experiments/ is on sys.path when this file runs as a script

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, dict[str, object]] = {
    "default": {},
    "far-start-clip": {"value_head_init_std": 0.5, "value_clip": 0.2},
    "far-start": {"value_head_init_std": 0.5},
    "clip": {"value_clip": 0.2},
}
KEYS = ("critic/explained_variance_before", "critic/explained_variance_after")


def command(records: Path, model: str, setting: str, iterations: int, out: Path, seed: int) -> list[str]:
    """The ``steppo train`` command line of one setting: StepPO offline on ``records``, critic only."""
    sets = {"critic_warmup": iterations, "gamma": 1.0, "lam": 1.0, "critic_lr": 5e-5, "trainable_layers": 8,
            "save_every": iterations, "amp": "auto", **SETTINGS[setting]}
    return [*STEPPO, "train", "--algo", "steppo", "--model", model, "--from-trajectories", str(records),
            "--iterations", str(iterations), "--tasks", "2", "--group-size", "4", "--seed", str(seed),
            "--output-dir", str(out), "--resume", "--set", *[f"{k}={json.dumps(v)}" for k, v in sets.items()]]


def by_task(records: Path, work: Path) -> Path:
    """``records`` ordered by (task seed, episode id) in ``work``: a rollout file lists episodes as they finish (the
    short, won ones first), and offline training takes them in file order, so each batch must be whole groups of
    tasks as an on-policy run samples them."""
    from steppo_agent.trajectory_io import read_trajectories

    out = work / "records_by_task.jsonl"
    if not out.exists():
        trajectories = sorted(read_trajectories(records), key=lambda t: (t.seed, t.id))
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(t.to_json_line() + "\n" for t in trajectories))
        tmp.replace(out)
    return out


def run_setting(args: argparse.Namespace, setting: str) -> None:
    dest = args.results / f"{setting}.json"
    if dest.exists():
        print(f"{setting}: done ({dest})")
        return
    out = args.work / setting
    cmd = command(by_task(args.records, args.work), args.model, setting, args.iterations, out, args.seed)
    wall = _run(cmd, args.work)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    from steppo_train.precision import describe_cpu

    record = {"setting": setting, "settings": SETTINGS[setting], "command": shlex.join(["steppo", *cmd[len(STEPPO):]]),
              "wall_s": round(wall, 1), "machine": describe_cpu(),
              "metrics": [{k: r[k] for k in ("iteration", *KEYS, "losses/value", "losses/value_clip_fraction",
                                             "charts/value_mean") if k in r}
                          for r in metrics]}
    args.results.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"{setting}: wrote {dest}")


def table(results: Path) -> str:
    """Markdown: per setting, the explained variance on each new batch before training on it, and its median
    over iterations 3 and later."""
    rows = []
    files = sorted(results.glob("*.json"), key=lambda p: list(SETTINGS).index(p.stem) if p.stem in SETTINGS else 99)
    for path in files:
        rec = json.loads(path.read_text())
        before = [r.get(KEYS[0]) for r in rec["metrics"]]
        after = [r.get(KEYS[1]) for r in rec["metrics"]]
        late = [v for v in before[3:] if v is not None]
        cells = " | ".join("-" if v is None else f"{v:+.2f}" for v in before)
        rows.append(f"| {rec['setting']} | {cells} | {statistics.median(late):+.2f} | "
                    f"{statistics.median([v for v in after if v is not None]):+.2f} |" if late else
                    f"| {rec['setting']} | {cells} | - | - |")
    if not rows:
        return "no results yet: run python experiments/critic_defaults.py --records FILE"
    n = max(len(json.loads(p.read_text())["metrics"]) for p in files)
    head = "| setting | " + " | ".join(f"it {i}" for i in range(n)) + " | median before, it >= 3 | median after |"
    return "\n".join([head, "|" + "---|" * (n + 3), *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="all", choices=("all", "report"))
    ap.add_argument("--records", type=Path, help="warm-start episodes at temperature 1 (JSONL, e.g. experiments/credit.py's)")
    ap.add_argument("--model", default=str(ROOT / "runs" / "horizon" / "sft" / "checkpoints" / "iter_000004" / "actor"),
                    help="the warm start (default: experiments/horizon.py's)")
    ap.add_argument("--settings", nargs="*", choices=sorted(SETTINGS), help="a subset (default: all)")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "critic")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "critic")
    args = ap.parse_args()
    if args.command == "all":
        if args.records is None or not args.records.is_file():
            sys.exit(f"steppo: error: --records {args.records}: no such file; record warm-start episodes first "
                     "(python experiments/credit.py --tasks textworld).")
        args.work.mkdir(parents=True, exist_ok=True)
        for setting in args.settings or SETTINGS:
            run_setting(args, setting)
    print(table(args.results))


if __name__ == "__main__":
    main()
