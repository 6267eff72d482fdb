"""Iteration time of the synchronous loop vs rollout overlapped with training (``async_rollout``).

The same small training run twice, each in a fresh subprocess (an in-process vLLM engine is not fully
released by ``close()``): ``sync`` (``async_rollout=false``) and ``async`` (``async_rollout=true``,
``max_staleness=1``). Prints the CPU, then per mode the median over iterations 1.. (iteration 0 is
never overlapped) of the iteration time, the rollout time the trainer waited for, the collection's
own time, the update time and the push wait, the prefix-cache hit rate, and the ratio async / sync.

On a GPU the engine and the trainer use different hardware and the overlap hides up to
``min(rollout, update)`` per iteration; on a CPU both share the same cores (torch intra-op threads and
vLLM's), so expect little or no gain there.

    python benchmarks/bench_async.py                       # vLLM, the default model, TextWorld simple
    python benchmarks/bench_async.py --iterations 3 --backend hf --tasks 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_KEYS = ("time/iteration_s", "time/rollout_s", "time/rollout_collect_s", "time/update_s", "time/push_wait_s",
         "rollout/prefix_cache_hit_rate", "rollout/staleness_max")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _phase(args: argparse.Namespace) -> None:
    """One training run (``--phase sync|async``); prints its metrics rows as one JSON line at the end."""
    from steppo_train.config import load_config
    from steppo_train.trainer import train

    with tempfile.TemporaryDirectory(prefix="steppo-bench-async-") as out:
        config = load_config("steppo", overrides={
            "env_id": args.env, "env_kwargs": json.loads(args.env_kwargs), "backend": args.backend,
            "model": args.model, "iterations": args.iterations, "tasks_per_iteration": args.tasks,
            "group_size": args.group_size, "max_tokens": args.max_tokens, "trainable_layers": args.trainable_layers,
            "kv_cache_gib": 1.0, "output_dir": out, "save_every": 1000, "minibatch_size": 64,
            "async_rollout": args.phase == "async", "max_staleness": 1,
        })
        train(config)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    print("BENCH " + json.dumps([{k: r[k] for k in _KEYS if k in r} for r in rows]), flush=True)


def _median(rows: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows[1:] if key in r] or [r[key] for r in rows if key in r]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["sync", "async"], help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="vllm")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--env", default="steppo/TextWorld-v0")
    parser.add_argument("--env-kwargs", default='{"preset": "simple", "level": 1, "pool_size": 4, "max_steps": 4}')
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--trainable-layers", type=int, default=4)
    args = parser.parse_args()
    if args.phase:
        _phase(args)
        return
    print(f"CPU: {cpu_model()} ({platform.machine()}), {args.backend} {args.model}, {args.env}, "
          f"{args.iterations} iterations of {args.tasks}x{args.group_size} episodes, max_tokens {args.max_tokens}")
    forwarded = [a for a in sys.argv[1:]]
    results: dict[str, list[dict[str, float]]] = {}
    for phase in ("sync", "async"):
        done = subprocess.run([sys.executable, __file__, "--phase", phase, *forwarded], capture_output=True, text=True)
        line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("BENCH ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"{phase} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        results[phase] = json.loads(line.removeprefix("BENCH "))
    print(f"{'median over iterations 1..':30s} {'sync':>10s} {'async':>10s}")
    for key in _KEYS:
        s, a = _median(results["sync"], key), _median(results["async"], key)
        print(f"{key:30s} {'-' if s is None else f'{s:10.3f}':>10s} {'-' if a is None else f'{a:10.3f}':>10s}")
    s, a = _median(results["sync"], "time/iteration_s"), _median(results["async"], "time/iteration_s")
    if s and a:
        print(f"iteration time async / sync: {a / s:.2f} (< 1 = the overlap pays)")


if __name__ == "__main__":
    main()
