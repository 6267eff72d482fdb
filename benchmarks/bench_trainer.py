"""Trainer update throughput vs a raw forward+backward of the same model on the same batch.

Both phases see the same step rows (prompt + response token ids) and run in fresh subprocesses so
their peak memory (max RSS) is measured separately. "Raw" is the plain HF recipe: one padded batch,
full logits, log_softmax, gather the response tokens, mean, backward, AdamW step. "Trainer" is
steppo's StepPO actor update (``steppo_train.update.actor_loss`` over token-budget micro-batches,
backward, clip, AdamW step), critic excluded. Reports median tokens/s over repeats and the ratio
(goal >= 0.8). More trainer phases show the CPU speed options side by side, with their speed-up over
the float32 trainer: ``amp`` (bfloat16 autocast over float32 weights, forced), ``auto`` (the trainer's
default ``amp="auto"``: autocast only where bf16 is native) and ``auto+top8`` (also only the top 8
blocks trainable, the results recipe). It first prints the CPU, its bf16 capability and the auto
choice. Where bf16 is not native the forced ``amp`` phase would be ~30x slower than float32 and is
skipped (the probe's measured factor is printed instead) unless ``--force-bf16``.

    python benchmarks/bench_trainer.py                 # the default model (SmolLM2-135M)
    python benchmarks/bench_trainer.py --rows 8 --prompt 256 --response 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rows(n: int, prompt: int, response: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(100, vocab - 1, (prompt - 7 * (i % 3),), generator=g).tolist() for i in range(n)]
    responses = [torch.randint(100, vocab - 1, (response - 5 * (i % 2),), generator=g).tolist() for i in range(n)]
    return prompts, responses


def _phase(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from steppo_agent.default_model import resolve_model
    from steppo_train.batch import StepBatch
    from steppo_train.config import load_config
    from steppo_train.models import ModelConfig, load_actor
    from steppo_train.targets import RowTargets
    from steppo_train.update import IterationData, actor_loss, make_units, pack_units

    torch.set_num_threads(args.threads) if args.threads else None
    path = resolve_model(args.model)
    from steppo_train.precision import resolve_amp

    amp = True if args.phase == "amp" else resolve_amp("auto", announce=False) if args.phase.startswith("auto") else False
    actor = load_actor(ModelConfig(path, trainable_layers=8 if args.phase == "auto+top8" else None))
    vocab = actor.config.vocab_size
    prompts, responses = _rows(args.rows, args.prompt, args.response, vocab)
    tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    opt = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-6)
    times = []
    if args.phase == "raw":
        L = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
        ids = torch.zeros(len(prompts), L, dtype=torch.long)
        attn = torch.zeros_like(ids)
        tgt_mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            attn[i, : len(p) + len(r)] = 1
            tgt_mask[i, len(p) : len(p) + len(r)] = True
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            logits = actor(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            loss = -(logp * tgt_mask[:, 1:]).sum() / tgt_mask.sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    else:
        config = load_config("steppo", overrides={"token_budget": args.token_budget, "model": path})
        n = len(prompts)
        batch = StepBatch.from_rows(prompts, responses)
        adv = torch.linspace(-1, 1, n)
        targets = RowTargets([adv[i].expand(len(r)).clone() for i, r in enumerate(responses)], adv, None, None)
        old = [torch.full((len(r),), -5.0) for r in responses]
        data = IterationData(batch, old, targets, None, make_units(config, batch))
        n_tok = sum(len(r) for r in responses)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for pack in pack_units(data.units, batch, config.token_budget):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    loss, _ = actor_loss(config, actor, data, pack, len(data.units), n_tok)
                loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in actor.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times[1:] if len(times) > 2 else times)
    return {"tokens": tokens, "seconds_median": med, "tokens_per_s": tokens / med,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--response", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--force-bf16", action="store_true", help="run the forced-bf16 phase even where bf16 is not native")
    ap.add_argument("--phase", choices=["raw", "trainer", "amp", "auto", "auto+top8"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(_phase(args)))
        return
    from steppo_train.precision import bf16_slowdown, bf16_support, describe_cpu

    support = bf16_support("cpu")
    print(f"cpu: {describe_cpu()}")
    print(f"bf16: {'native' if support.native else 'NOT native'} ({support.reason}); amp=auto -> "
          f"{'on' if support.native else 'off'}; probe: a bf16 matmul takes {bf16_slowdown():.2f}x the float32 time")
    phases = ["raw", "trainer", "amp", "auto", "auto+top8"]
    if not support.native and not args.force_bf16:
        phases.remove("amp")
        print("forced-bf16 phase skipped: bf16 is not native here (pass --force-bf16 to measure it)")
    results = {}
    for phase in phases:
        cmd = [sys.executable, __file__, "--phase", phase] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("phase", "force_bf16")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[phase] = json.loads(out)
    raw, tr = results["raw"], results["trainer"]
    print(f"model={args.model} rows={args.rows} prompt~{args.prompt} response~{args.response} tokens/update={raw['tokens']}")
    print(f"{'phase':<10}{'median s':>10}{'tokens/s':>12}{'peak RSS GiB':>14}")
    for name, r in results.items():
        print(f"{name:<10}{r['seconds_median']:>10.2f}{r['tokens_per_s']:>12.1f}{r['peak_rss_gib']:>14.2f}")
    print(f"ratio trainer/raw tokens/s = {tr['tokens_per_s'] / raw['tokens_per_s']:.2f} (goal >= 0.8)")
    for name in ("amp", "auto", "auto+top8"):
        if name in results:
            print(f"speed-up {name} over the float32 trainer = {results[name]['tokens_per_s'] / tr['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
