"""vLLM on CPU: its oneDNN linear layers vs torch's ``F.linear``, side by side: speed and memory growth.

vLLM's CPU backend runs every dense projection through its own oneDNN GEMM handler, which compiles and
keeps a kernel per batch size it meets. A rollout sends ever-new batch sizes (prompt lengths and
running requests change every engine step), and the process's live heap grew by ~5 MiB per 80
requests without end (it did not grow when the very same batch was sent again). This benchmark
loads the engine once per variant (the choice is made when the model loads), sends the same
rounds of recorded step prompts to each, and prints generated tokens/s and the live heap after every
round.

    python benchmarks/bench_vllm_linear.py [--rounds 10] [--prompts runs/.../rollouts]

Variants: ``onednn`` (vLLM's default) and ``torch`` (``PolicyConfig.cpu_linear``, steppo's default on
CPU: see ``steppo_agent.policies.vllm_settings.use_torch_linear``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _prompts(n: int, seed: int) -> list[list[int]]:
    """Step-like prompts: a shared system prompt and task, then a varying history (200-420 tokens)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    head = rng.integers(100, 40000, size=160).tolist()
    return [head + rng.integers(100, 40000, size=int(rng.integers(40, 260))).tolist() for _ in range(n)]


def _child(variant: str, rounds: int, batch: int, seed: int) -> dict[str, object]:
    from steppo_agent.policies import PolicyConfig, make_policy
    from steppo_agent.records import SamplingConfig
    from steppo_train.memory import heap_info, release_free_memory

    policy = make_policy(PolicyConfig(backend="vllm", model="smollm2-135m", max_model_len=2048, kv_cache_gib=1,
                                      cpu_linear=variant))  # type: ignore[arg-type]  # "onednn" | "torch"
    prompts = _prompts(batch * rounds, seed)
    policy.generate(prompts[:batch], SamplingConfig(temperature=0.0, max_tokens=16))  # warm-up
    times, tokens, heap = [], [], []
    for r in range(rounds):
        start = time.perf_counter()
        out = policy.generate(prompts[r * batch:(r + 1) * batch], SamplingConfig(temperature=1.0, max_tokens=16, seed=r))
        times.append(time.perf_counter() - start)
        tokens.append(sum(len(g.token_ids) for g in out))
        release_free_memory()
        info = heap_info()
        heap.append(info.in_use if info is not None else float("nan"))
    return {"variant": variant, "tok_s": [t / s for t, s in zip(tokens, times, strict=True)], "heap_gib": heap}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=80, help="prompts per round (a rollout iteration's steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.rounds, args.batch, args.seed)))
        return 0
    from steppo_train.precision import describe_cpu

    print(f"cpu: {describe_cpu()}")
    results = {}
    for variant in ("onednn", "torch"):
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", variant, "--rounds", str(args.rounds),
                               "--batch", str(args.batch), "--seed", str(args.seed)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'variant':<8}{'median tok/s':>14}{'heap after round 1':>20}{'after last':>12}{'growth / round':>16}")
    for variant, r in results.items():
        heap = r["heap_gib"]
        growth = (heap[-1] - heap[0]) / max(1, len(heap) - 1) * 1024
        print(f"{variant:<8}{statistics.median(r['tok_s']):>14.1f}{heap[0]:>17.3f} GiB{heap[-1]:>8.3f} GiB{growth:>12.1f} MiB")
    ratio = statistics.median(results["torch"]["tok_s"]) / statistics.median(results["onednn"]["tok_s"])
    print(f"torch / onednn tokens/s: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
