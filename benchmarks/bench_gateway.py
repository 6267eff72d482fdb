"""The step gateway's cost: tokens/s through the gateway vs the same policy called directly, and the
latency it adds per request.

1. Throughput: ``--clients`` chats (distinct questions), rendered once into prompt ids. Direct: one
   ``policy.generate`` call on all of them. Gateway: the same chats sent at once by as many async
   ``openai`` clients to a gateway (in this process, on 127.0.0.1) in front of the same policy, with
   the same per-request seeds (so both sample the same tokens). tokens/s = response tokens / wall time.
   Ratio = gateway / direct (target >= 0.95).
2. Latency: one request at a time (``--latency-requests`` of ``--latency-max-tokens`` tokens), direct ``policy.generate([prompt])`` vs a
   gateway request; the added latency is the median of the per-request differences. Then the gateway's
   own cost: the median round trip of a request through a gateway whose policy answers at once.

The prefix cache is reset before each measurement; measurements alternate and repeat ``--repeats``
times; medians are printed with the CPU they ran on. Timings on a shared CPU swing: compare the ratio
of one run, never absolute numbers across machines.

    python benchmarks/bench_gateway.py --clients 32 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SYSTEM = "You are a helpful assistant. Answer in one or two sentences."
TOPICS = ["rain", "bread", "a compass", "tides", "glass", "bees", "ice", "a lighthouse", "paper", "volcanoes", "wind",
          "salt", "rainbows", "clocks", "maps", "owls"]


def _chats(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question {i}: how does {TOPICS[i % len(TOPICS)]} work?"}]
            for i in range(n)]


def _reset(policy: Any) -> None:
    llm = getattr(policy, "_llm", None)
    if llm is not None:
        llm.reset_prefix_cache()  # no measurement may reuse another's cached prompts


def _direct(policy: Any, prompts: list[list[int]], max_tokens: int, seeds: list[int] | None = None) -> tuple[int, float]:
    from steppo_agent.records import SamplingConfig

    _reset(policy)
    t0 = time.perf_counter()
    gens = policy.generate(prompts, SamplingConfig(temperature=1.0, max_tokens=max_tokens),
                           seeds=seeds if seeds is not None else list(range(len(prompts))))
    return sum(len(g.token_ids) for g in gens), time.perf_counter() - t0


async def _through(url: str, chats: list[list[dict[str, str]]], max_tokens: int, seeds: list[int]) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    try:
        replies = await asyncio.gather(*[
            client.chat.completions.create(model="bench", messages=chat, max_tokens=max_tokens, temperature=1.0, seed=s)  # type: ignore[arg-type]
            for chat, s in zip(chats, seeds, strict=True)])
    finally:
        await client.close()
    return sum(r.usage.completion_tokens for r in replies if r.usage is not None)


def _gateway(policy: Any, url: str, chats: list[list[dict[str, str]]], max_tokens: int) -> tuple[int, float]:
    _reset(policy)
    t0 = time.perf_counter()
    tokens = asyncio.run(_through(url, chats, max_tokens, list(range(len(chats)))))
    return tokens, time.perf_counter() - t0


def _latency(policy: Any, url: str, chats: list[list[dict[str, str]]], prompts: list[list[int]], max_tokens: int,
             n: int) -> list[float]:
    """Per-request (gateway - direct) seconds, one request at a time, same prompt and seed."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)  # one keep-alive connection

    def through(k: int) -> float:
        _reset(policy)
        t0 = time.perf_counter()
        client.chat.completions.create(model="bench", messages=chats[k], max_tokens=max_tokens, temperature=1.0, seed=k)  # type: ignore[arg-type]
        return time.perf_counter() - t0

    through(0)  # opens the connection
    added = []
    for i in range(n):  # alternate which path goes first, so a drifting machine load cancels out
        k = i % len(chats)
        if i % 2:
            gateway_s = through(k)
            direct_s = _direct(policy, [prompts[k]], max_tokens, seeds=[k])[1]
        else:
            direct_s = _direct(policy, [prompts[k]], max_tokens, seeds=[k])[1]
            gateway_s = through(k)
        added.append(gateway_s - direct_s)
    client.close()
    return added


class _InstantPolicy:
    """Answers every prompt at once with the same few tokens: the gateway's own cost (HTTP, rendering,
    batching, records) without an engine."""

    backend: str = "instant"
    model: str = "bench"
    version: int = 0
    max_model_len: int = 2048
    wants_infos: bool = False

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids = tokenizer.encode("It falls.", add_special_tokens=False) + [int(tokenizer.eos_token_id)]

    def generate(self, prompts: Any, sampling: Any, seeds: Any = None, infos: Any = None) -> list[Any]:
        from steppo_agent.policies.base import Generation

        return [Generation(list(self.ids), [-0.1] * len(self.ids), "It falls.", "stop") for _ in prompts]

    def close(self) -> None:
        pass


def _overhead(tokenizer: Any, chats: list[list[dict[str, str]]], window_s: float, n: int) -> float:
    """Median round trip (seconds) of one request at a time through a gateway over :class:`_InstantPolicy`."""
    import openai

    from steppo_agent.gateway import GatewayConfig, start_gateway

    with tempfile.TemporaryDirectory() as tmp, start_gateway(_InstantPolicy(tokenizer), GatewayConfig(
            output=Path(tmp) / "instant.jsonl", port=0, served_model_name="bench", batch_window_s=window_s)) as gw:
        client = openai.OpenAI(base_url=gw.url, api_key="none", max_retries=0)
        times = []
        for i in range(n + 5):
            t0 = time.perf_counter()
            client.chat.completions.create(model="bench", messages=chats[i % len(chats)], max_tokens=4)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
        client.close()
    return statistics.median(times[5:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=32, help="concurrent requests per throughput measurement")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--latency-max-tokens", type=int, default=4, help="response tokens of the latency requests")
    parser.add_argument("--batch-window", type=float, default=0.005)
    parser.add_argument("--batch-max-wait", type=float, default=0.25)
    args = parser.parse_args(argv)

    from steppo_agent.gateway import GatewayConfig, start_gateway
    from steppo_agent.policies import PolicyConfig, make_policy
    from steppo_agent.prompting import render_messages_ids
    from steppo_train.precision import describe_cpu

    policy = make_policy(PolicyConfig(backend="vllm", model=args.model, kv_cache_gib=1.0))
    chats = _chats(args.clients)
    prompts = [render_messages_ids(policy.tokenizer, chat, None) for chat in chats]
    with tempfile.TemporaryDirectory() as tmp:
        config = GatewayConfig(output=Path(tmp) / "bench.jsonl", port=0, served_model_name="bench",
                               batch_window_s=args.batch_window, batch_max_wait_s=args.batch_max_wait,
                               max_batch=max(64, args.clients))
        with start_gateway(policy, config) as gw:
            _gateway(policy, gw.url, chats, 4)  # warm-up: both paths, every batch size once
            _direct(policy, prompts, 4)
            direct_tps, gateway_tps, call_sizes = [], [], []
            for _ in range(args.repeats):
                tokens, seconds = _direct(policy, prompts, args.max_tokens)
                direct_tps.append(tokens / seconds)
                calls_before = len(gw.gateway.batcher.stats.sizes)
                tokens_gw, seconds = _gateway(policy, gw.url, chats, args.max_tokens)
                gateway_tps.append(tokens_gw / seconds)
                call_sizes.append(gw.gateway.batcher.stats.sizes[calls_before:])
                if tokens_gw != tokens:
                    print(f"note: {tokens_gw} tokens through the gateway vs {tokens} direct", file=sys.stderr)
            added = _latency(policy, gw.url, chats, prompts, args.latency_max_tokens, args.latency_requests)
            stats = gw.gateway.batcher.stats
    tokenizer = policy.tokenizer
    policy.close()
    instant = _overhead(tokenizer, chats, args.batch_window, 50)
    d, g = statistics.median(direct_tps), statistics.median(gateway_tps)
    print(f"cpu: {describe_cpu()}")
    print(f"model {args.model}, {args.clients} concurrent requests x {args.max_tokens} max tokens, {args.repeats} repeats")
    print(f"direct policy.generate   {d:8.1f} tokens/s (median; runs {', '.join(f'{x:.1f}' for x in direct_tps)})")
    print(f"through the gateway      {g:8.1f} tokens/s (median; runs {', '.join(f'{x:.1f}' for x in gateway_tps)})")
    print(f"ratio gateway / direct   {g / d:8.3f}  (target >= 0.95)")
    print(f"added latency/request    {1000 * statistics.median(added):8.1f} ms median over {len(added)} single requests "
          f"of {args.latency_max_tokens} tokens "
          f"(min {1000 * min(added):.1f}, max {1000 * max(added):.1f})")
    print(f"gateway alone            {1000 * instant:8.1f} ms median round trip per request (openai client, HTTP, "
          f"rendering, a {1000 * args.batch_window:.0f} ms batch window, records) with a policy that answers at once")
    print(f"batching: {stats.requests} requests in {stats.calls} policy calls (largest {max(stats.sizes)}); "
          f"calls per throughput repeat: {' '.join(str(sizes) for sizes in call_sizes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
