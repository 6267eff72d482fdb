"""Reset / step latency of steppo/TextWorld-v0 (per preset) and steppo/ALFWorld-v0, and the throughput
of N episodes run in worker processes (AsyncVectorEnv) versus one after another in this process.

    python benchmarks/bench_textworld.py [--episodes 4] [--steps 10] [--workers 2]

Prints medians (p50) and p90 in milliseconds; timings are noisy on shared machines.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import steppo_envs  # noqa: F401  (registers the ids)
from steppo_envs.textworld_env.vector import make_async_vector_env

CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "simple L1": ("steppo/TextWorld-v0", {"preset": "simple", "level": 1}),
    "coin_collector L2": ("steppo/TextWorld-v0", {"preset": "coin_collector", "level": 2}),
    "treasure_hunter L3": ("steppo/TextWorld-v0", {"preset": "treasure_hunter", "level": 3}),
    "cooking L3": ("steppo/TextWorld-v0", {"preset": "cooking", "level": 3}),
    "alfworld valid_seen": ("steppo/ALFWorld-v0", {"split": "valid_seen"}),
}


def _pct(xs: list[float]) -> str:
    return f"p50 {np.percentile(xs, 50) * 1e3:7.1f} ms  p90 {np.percentile(xs, 90) * 1e3:7.1f} ms"


def _commands(info: dict[str, object], rng: np.random.Generator) -> str:
    cmds = info["extra"]["admissible_commands"]  # type: ignore[index]
    return str(rng.choice(cmds)) if cmds else "look"


def latency(env_id: str, overrides: dict[str, object], episodes: int, steps: int) -> tuple[list[float], list[float]]:
    kw = dict(overrides)
    if env_id == "steppo/TextWorld-v0":
        kw.update(pool_size=episodes, pregenerate=True)
    env = gym.make(env_id, **kw)
    env.reset(seed=0)  # generation / first load, not timed
    rng = np.random.default_rng(0)
    resets, step_times = [], []
    for ep in range(episodes):
        t = time.perf_counter()
        _, info = env.reset(seed=ep, options={"task_index": ep % len(env.unwrapped.games)})
        resets.append(time.perf_counter() - t)
        for _ in range(steps):
            cmd = _commands(info, rng)
            t = time.perf_counter()
            _, _, term, trunc, info = env.step(f"Act[{cmd}]")
            step_times.append(time.perf_counter() - t)
            if term or trunc:
                break
    env.close()
    return resets, step_times


def throughput(env_id: str, overrides: dict[str, object], n: int, steps: int) -> tuple[float, float]:
    """Seconds for ``n`` episodes of ``steps`` steps: one process, then ``n`` worker processes."""
    kw = dict(overrides, progress=False) if env_id == "steppo/TextWorld-v0" else dict(overrides)
    if env_id == "steppo/TextWorld-v0":
        kw["pool_size"] = n
    actions = ["look", "inventory", "Act[examine room]", "go east"]
    env = gym.make(env_id, **kw)
    env.reset(seed=0)
    t = time.perf_counter()
    for i in range(n):
        env.reset(seed=i)
        for s in range(steps):
            env.step(actions[s % len(actions)])
    serial = time.perf_counter() - t
    env.close()
    venv = make_async_vector_env(env_id, n, **kw)
    venv.reset(seed=list(range(n)))
    t = time.perf_counter()
    venv.reset(seed=list(range(n)))
    for s in range(steps):
        venv.step([actions[s % len(actions)]] * n)
    parallel = time.perf_counter() - t
    venv.close()
    return serial, parallel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    for name, (env_id, overrides) in CONFIGS.items():
        resets, steps = latency(env_id, overrides, args.episodes, args.steps)
        print(f"{name:<20} reset {_pct(resets)}   step {_pct(steps)}   ({len(steps)} steps)")
    for name in ("simple L1", "alfworld valid_seen"):
        env_id, overrides = CONFIGS[name]
        serial, parallel = throughput(env_id, overrides, args.workers, args.steps)
        print(
            f"{name:<20} {args.workers} episodes x {args.steps} steps: one process {serial:6.2f} s, "
            f"{args.workers} workers {parallel:6.2f} s, speed-up x{serial / parallel:4.2f}"
        )


if __name__ == "__main__":
    main()
