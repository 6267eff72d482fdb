"""Fuzz every registered environment with hostile actions (default 10,000 per env) and print a table.

For each env: actions played, exceptions out of ``env.step``, hangs (a step over ``--timeout``
seconds), bad outputs (an observation or info that cannot be stored as UTF-8 JSON), episodes, the
slowest step and the wall time. The actions come from :func:`steppo_envs.fuzzing.hostile_actions`
(see its docstring). Exit code 1 when anything failed. The test suite runs the same check with a
few hundred actions per env (``tests/test_fuzz_registry.py``).

    python benchmarks/fuzz_envs.py [--actions 10000] [--env steppo/TextWorld-v0 ...] [--out runs/fuzz]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

import steppo_envs
from steppo_envs.fuzzing import FuzzReport, fuzz_env

#: Small instances of the bundled envs (the data they need must be in the data folder).
OPTIONS: dict[str, dict[str, Any]] = {
    "steppo/MultiHopQA-v0": {"split": "eval"},
    "steppo/TextWorld-v0": {"preset": "cooking", "level": 1, "pool_size": 4, "max_steps": 25, "progress": False},
    "steppo/ALFWorld-v0": {"split": "valid_seen", "max_steps": 40},
    "steppo/PaperSearch-v0": {"split": "test", "progress": False},
}


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except OSError:
        model = ""
    return model or platform.processor() or "unknown CPU"


def _run(env_id: str, n: int, seed: int, timeout: float, cache: str) -> tuple[FuzzReport, float]:
    options = dict(OPTIONS.get(env_id, {}))
    if env_id == "steppo/TextWorld-v0":
        options["cache_dir"] = cache
    env = gym.make(env_id, **options)
    start = time.perf_counter()
    try:
        report = fuzz_env(env, n, seed=seed, step_timeout_s=timeout, env_id=env_id)
    finally:
        env.close()
    return report, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=10_000, help="actions per env (default 10000)")
    parser.add_argument("--env", action="append", help="env id (repeatable; default every registered id)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one step may take (default 10)")
    parser.add_argument("--out", type=Path, default=Path("runs/fuzz"), help="folder for fuzz.json and fuzz.md")
    args = parser.parse_args()

    ids = args.env or steppo_envs.registered_ids()
    print(f"CPU: {_cpu()}; {args.actions} hostile actions per env, seed {args.seed}, step limit {args.timeout:g} s")
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for env_id in ids:
            try:
                report, wall = _run(env_id, args.actions, args.seed, args.timeout, cache)
            except (steppo_envs.DataDirError, steppo_envs.MissingExtraError) as exc:
                print(f"{env_id}: skipped ({exc})")
                continue
            rows.append({"env": env_id, "actions": report.actions, "exceptions": report.exceptions, "hangs": report.hangs,
                         "bad_outputs": report.bad_outputs, "episodes": report.episodes,
                         "slowest_step_s": round(report.slowest_step_s, 3), "wall_s": round(wall, 1),
                         "examples": report.examples})
            print(f"{env_id}: {report.actions} actions, {report.exceptions} exceptions, {report.hangs} hangs, "
                  f"{report.bad_outputs} bad outputs, {report.episodes} episodes, slowest step "
                  f"{report.slowest_step_s:.2f} s, {wall:.0f} s", flush=True)
            for example in report.examples:
                print(f"    {example}")
    header = "| env | actions | exceptions | hangs | bad outputs | episodes | slowest step (s) | wall (s) |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['env']} | {r['actions']} | {r['exceptions']} | {r['hangs']} | {r['bad_outputs']} | {r['episodes']} "
              f"| {r['slowest_step_s']} | {r['wall_s']} |" for r in rows]
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps({"cpu": _cpu(), "seed": args.seed, "rows": rows}, indent=2) + "\n")
    (args.out / "fuzz.md").write_text(f"CPU: {_cpu()}\n\n{table}\n")
    return 1 if any(r["exceptions"] or r["hangs"] or r["bad_outputs"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
