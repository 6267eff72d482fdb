"""Issue 37, part 3: StepPO vs PPO vs GRPO (and StepPO w/o step-GAE) again, with the critic fixes, >= 5 seeds,
read by seeds. The whole spec is one config file, ``experiments/configs/rerun.yaml``: shared trainer fields
(``train``, any :class:`~steppo_train.config.TrainConfig` field, nested mappings included), the variants (each the
fields it changes), the seeds, and the fields of the critic variants only (their warm-up).

Each (variant, seed) is one ``steppo train --config RUN/config.yaml --model WARM --seed S --output-dir RUN
--resume``, the config file written from the spec, so the run is reproduced from its own folder. Runs go one at a
time (two on 2 cores slow each other far more than 2x), resumable iteration by iteration; each *finished* run's
small outputs (command line, config, metrics, per-game held-out success, CPU) go to ``results/rerun/runs/`` to be
committed as they finish. The warm start is experiments/horizon.py's (rebuilt on a fresh machine by
``python experiments/horizon.py --only-warm-start``).

    python experiments/rerun.py                          # every run not done yet, seed by seed
    python experiments/rerun.py --seeds 0 1 --variants steppo grpo
    python experiments/rerun.py report                   # the docs section from the committed files
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from horizon import finish_run  # experiments/ is on sys.path when this file runs as a script
from textworld_cpu import STEPPO

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "configs" / "rerun.yaml"
WARM = ROOT / "runs" / "horizon" / "sft" / "checkpoints" / "iter_000004" / "actor"


def load_spec(path: Path) -> dict[str, Any]:
    """The experiment spec (see the module docstring); its ``train`` mapping must load as a TrainConfig."""
    from steppo_train.config import load_config

    spec = yaml.safe_load(path.read_text())
    for name in spec["variants"]:
        load_config(overrides=run_fields(spec, name))  # a typo in the spec fails here, before any run
    return spec


def run_fields(spec: dict[str, Any], variant: str) -> dict[str, Any]:
    """The TrainConfig fields of one variant's runs: ``train``, then the critic fields (critic variants), then the
    variant's own fields (``algo`` included)."""
    fields = dict(spec["train"])
    if variant in spec.get("critic_variants", []):
        fields.update(spec.get("critic_fields", {}))
    fields.update(spec["variants"][variant])
    return fields


def run_command(spec: dict[str, Any], variant: str, seed: int, warm: Path, run: Path) -> list[str]:
    """Write ``run/config.yaml`` for (variant, seed) and return its ``steppo train`` command line."""
    fields = run_fields(spec, variant)
    run.mkdir(parents=True, exist_ok=True)
    config = run / "config.yaml"
    config.write_text(yaml.safe_dump(fields, sort_keys=True))
    return [*STEPPO, "train", "--algo", str(fields["algo"]), "--config", str(config), "--model", str(warm),
            "--seed", str(seed), "--output-dir", str(run), "--resume"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="all", choices=("all", "report"))
    ap.add_argument("--spec", type=Path, default=SPEC, help="the experiment's config file")
    ap.add_argument("--warm-start", type=Path, default=WARM, help="default: experiments/horizon.py's SFT checkpoint")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "rerun", help="bulky outputs (not committed)")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "rerun", help="small outputs (committed)")
    ap.add_argument("--seeds", type=int, nargs="*", help="a subset of the spec's seeds")
    ap.add_argument("--variants", nargs="*", help="a subset of the spec's variants")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    unknown = sorted(set(args.variants or []) - set(spec["variants"]))
    if unknown:
        print(f"steppo: error: unknown variant(s) {', '.join(unknown)}: choose from {', '.join(spec['variants'])}.",
              file=sys.stderr)
        return 2
    if args.command == "all":
        if not args.warm_start.exists():
            print(f"steppo: error: no warm start at {args.warm_start}: build it with "
                  "`python experiments/horizon.py --only-warm-start`, or pass --warm-start.", file=sys.stderr)
            return 2
        args.work.mkdir(parents=True, exist_ok=True)
        (args.results / "runs").mkdir(parents=True, exist_ok=True)
        (args.results / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
        for seed in args.seeds if args.seeds is not None else spec["seeds"]:
            for variant in args.variants or spec["variants"]:
                run = args.work / f"{variant}-seed{seed}"
                cmd = run_command(spec, variant, seed, args.warm_start, run)
                finish_run(cmd, variant, seed, args.work, args.results / "runs" / f"{variant}-seed{seed}.json")
    from rerun_report import write_report

    write_report(args.results, ROOT / "docs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
