"""Does RSS grow with the number of distinct batch shapes? Forward+backward of the actor over
micro-batches of ever-new shapes, with and without padding widths to a bucket, side by side.

Each variant runs in its own process (oneDNN's settings are read once per process) and does
``--rounds`` rounds; a round is ``--batches`` micro-batches whose widths (prompt+response tokens)
are drawn like the results recipe's step rows (160-420 tokens) and whose row counts fill a 4096-token
budget, then ``malloc_trim``. Printed per variant: RSS after round 1 and after the last round, the
growth per round, the number of distinct (rows, width) shapes seen, and the median round time.

    python benchmarks/bench_shape_memory.py [--rounds 8] [--batches 12] [--variants amp,amp-bucket64,...]

Variants: ``fp32``, ``amp`` (bf16 autocast), ``amp-width64`` (widths padded up to a multiple of 64
tokens, what the trainer's ``pad_multiple`` does), ``amp-bucket64`` (also row counts rounded up to a
multiple of 4), ``amp-nocache`` (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("fp32", "amp", "amp-width64", "amp-bucket64", "amp-nocache")


def _child(variant: str, rounds: int, batches: int, seed: int) -> dict[str, object]:
    import numpy as np
    import torch

    from steppo_agent.default_model import resolve_model
    from steppo_train.memory import release_free_memory, rss_gib
    from steppo_train.models import ModelConfig, load_actor

    torch.manual_seed(seed)
    model = load_actor(ModelConfig(resolve_model("smollm2-135m"), "float32", trainable_layers=8))  # as the results recipe
    model.train()
    rng = np.random.default_rng(seed)
    use_amp = variant != "fp32"
    bucket = 64 if variant in ("amp-bucket64", "amp-width64") else 1
    shapes: set[tuple[int, int]] = set()
    rss: list[float] = []
    times: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batches):
            width = int(rng.integers(160, 421))
            rows = max(1, 4096 // width - int(rng.integers(0, 3)))
            if bucket > 1:
                width = -(-width // bucket) * bucket
                rows = max(1, 4096 // width - int(rng.integers(0, 3)))  # rows that fit the padded width
            if variant == "amp-bucket64":
                rows = max(4, -(-rows // 4) * 4)
            shapes.add((rows, width))
            ids = torch.randint(0, 49152, (rows, width))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_amp):
                out = model(input_ids=ids).logits
            out.float().logsumexp(-1).mean().backward()
            model.zero_grad(set_to_none=True)
            del out
        release_free_memory()
        times.append(time.perf_counter() - start)
        rss.append(rss_gib())
    return {"variant": variant, "rss": rss, "shapes": len(shapes), "round_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.rounds, args.batches, args.seed)))
        return
    from steppo_train.precision import describe_cpu

    print(f"CPU: {describe_cpu()}")
    rows = []
    for variant in args.variants.split(","):
        env = dict(os.environ)
        if variant == "amp-nocache":
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "0"
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--rounds", str(args.rounds),
                              "--batches", str(args.batches), "--seed", str(args.seed)],
                             capture_output=True, text=True, env=env, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rss = r["rss"]
        rows.append(r)
        print(f"{variant:14s} RSS round 1 {rss[0]:.2f} GiB, round {len(rss)} {rss[-1]:.2f} GiB "
              f"(+{(rss[-1] - rss[0]) / max(1, len(rss) - 1) * 1024:.0f} MiB/round), {r['shapes']} shapes, "
              f"median round {r['round_s']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
