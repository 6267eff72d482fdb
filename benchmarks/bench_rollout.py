"""Rollout engine overhead vs raw ``vllm.LLM.generate`` on the same prompts (and the hf backend).

1. The rollout engine plays ``--tasks`` episodes of ``--env`` greedily with the vLLM policy
   (tokens/s = response tokens / wall time, steps/s), recording every round's prompts.
2. Raw baseline: the same prompts, batched by the same rounds, through the policy's own
   ``vllm.LLM.generate`` with the same ``SamplingParams`` (no env, no rendering, no records).
3. Ratio = engine tokens/s / raw tokens/s (goal >= 0.9).
4. The hf (transformers) backend on the first ``--hf-tasks`` tasks, for comparison.

The prefix cache is reset before each measurement (otherwise the second one replays cached
prompts). Each measurement is repeated ``--repeats`` times; medians are printed. Timings on a shared 2-core
CPU swing 2-3x: compare ratios from one run, never absolute numbers across machines.

    python benchmarks/bench_rollout.py --env steppo/MultiHopQA-v0 --tasks 8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # toy_env for --env toy


def _rollout(policy: Any, env_id: str, env_kwargs: dict[str, Any], tasks: int, max_tokens: int) -> tuple[Any, list[Any]]:
    from steppo_agent.records import SamplingConfig
    from steppo_agent.rollout import RolloutConfig, RolloutStats, run_rollout

    stats = RolloutStats()
    config = RolloutConfig(env_id=env_id, env_kwargs=env_kwargs, num_tasks=tasks, progress=False,
                           sampling=SamplingConfig(temperature=0.0, max_tokens=max_tokens, seed=0))
    trajs = run_rollout(policy, config, stats=stats)
    return stats, trajs


def _rounds(trajs: list[Any]) -> list[list[list[int]]]:
    """The prompts of each round (all episodes start together, so round k = every episode's step k)."""
    depth = max(len(t.steps) for t in trajs)
    return [[t.steps[k].prompt_ids for t in trajs if len(t.steps) > k] for k in range(depth)]


def _raw(llm: Any, rounds: list[list[list[int]]], max_tokens: int) -> tuple[int, float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0)
    tokens, start = 0, time.perf_counter()
    for prompts in rounds:
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="steppo/MultiHopQA-v0", help="env id, or 'toy' for the test toy env")
    ap.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-tasks", type=int, default=4, help="tasks for the hf comparison (0 = skip)")
    args = ap.parse_args()

    from steppo.cli.common import parse_env_kwargs
    from steppo_agent.policies import PolicyConfig, make_policy

    env_id = "toy_env:steppotest/Guess-v0" if args.env == "toy" else args.env
    env_kwargs = parse_env_kwargs(args.env_arg)
    policy = make_policy(PolicyConfig(backend="vllm"))
    _rollout(policy, env_id, env_kwargs, min(2, args.tasks), args.max_tokens)  # warm-up
    eng_tps, eng_sps, raw_tps, ratios = [], [], [], []
    for _ in range(args.repeats):
        policy._llm.reset_prefix_cache()  # neither measurement may reuse the other's cached prompts
        stats, trajs = _rollout(policy, env_id, env_kwargs, args.tasks, args.max_tokens)
        policy._llm.reset_prefix_cache()
        tokens, seconds = _raw(policy._llm, _rounds(trajs), args.max_tokens)
        eng_tps.append(stats.tokens_per_second)
        eng_sps.append(stats.steps_per_second)
        raw_tps.append(tokens / seconds)
        ratios.append(stats.tokens_per_second / (tokens / seconds))
    print(f"env {env_id} {env_kwargs}, {args.tasks} tasks, greedy, max_tokens {args.max_tokens}, "
          f"{stats.steps} steps, {stats.rounds} rounds, {stats.response_tokens} response tokens, "
          f"generate {stats.generate_seconds:.1f} s + env {stats.env_seconds:.1f} s of {stats.wall_seconds:.1f} s")
    print(f"raw vllm.LLM.generate       {statistics.median(raw_tps):8.1f} tok/s")
    print(f"rollout engine (vllm)       {statistics.median(eng_tps):8.1f} tok/s  {statistics.median(eng_sps):6.2f} steps/s")
    print(f"ratio engine / raw          {statistics.median(ratios):8.3f}  (goal >= 0.9; per repeat: "
          + ", ".join(f"{r:.3f}" for r in ratios) + ")")
    policy.close()
    if args.hf_tasks > 0:
        hf = make_policy(PolicyConfig(backend="hf"))
        stats, _ = _rollout(hf, env_id, env_kwargs, args.hf_tasks, args.max_tokens)
        print(f"rollout engine (hf, {args.hf_tasks} tasks) {stats.tokens_per_second:8.1f} tok/s  {stats.steps_per_second:6.2f} steps/s")
        hf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
