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

LoRA vs full fine-tuning, side by side in the same run: the ``lora`` phase is the float32 trainer
phase with PEFT adapters (``--lora-rank``, alpha = 2 * rank, the attention and MLP projections) and
prints, next to the full ``trainer`` phase, the median update time per optimizer step, the peak RSS and
the AdamW state bytes, with their ratios. ``--phases trainer lora`` runs only those two.

    python benchmarks/bench_trainer.py                 # the default model (SmolLM2-135M)
    python benchmarks/bench_trainer.py --rows 8 --prompt 256 --response 64 --repeats 3
    python benchmarks/bench_trainer.py --phases trainer lora --lora-rank 16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

PHASES = ["raw", "trainer", "amp", "auto", "auto+top8", "lora"]


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
    from steppo_train.lora import LoraConfig

    lora = LoraConfig(rank=args.lora_rank, alpha=2 * args.lora_rank) if args.phase == "lora" else None
    actor = load_actor(ModelConfig(path, trainable_layers=8 if args.phase == "auto+top8" else None, lora=lora))
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
    opt_bytes = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
    return {"tokens": tokens, "seconds_median": med, "tokens_per_s": tokens / med,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "optimizer_state_mib": opt_bytes / 2**20,
            "trainable_params": sum(p.numel() for p in actor.parameters() if p.requires_grad)}


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
    ap.add_argument("--lora-rank", type=int, default=16, help="rank of the lora phase (alpha = 2 * rank)")
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=PHASES, help="phases to run (default: all)")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(_phase(args)))
        return
    from steppo_train.precision import bf16_slowdown, bf16_support, describe_cpu

    support = bf16_support("cpu")
    print(f"cpu: {describe_cpu()}")
    print(f"bf16: {'native' if support.native else 'NOT native'} ({support.reason}); amp=auto -> "
          f"{'on' if support.native else 'off'}; probe: a bf16 matmul takes {bf16_slowdown():.2f}x the float32 time")
    phases = list(args.phases)
    if "amp" in phases and not support.native and not args.force_bf16:
        phases.remove("amp")
        print("forced-bf16 phase skipped: bf16 is not native here (pass --force-bf16 to measure it)")
    results = {}
    for phase in phases:
        cmd = [sys.executable, __file__, "--phase", phase] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("phase", "phases", "force_bf16")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[phase] = json.loads(out)
    _report(args, results)


def _report(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    first = next(iter(results.values()))
    print(f"model={args.model} rows={args.rows} prompt~{args.prompt} response~{args.response} tokens/update={first['tokens']}")
    print(f"{'phase':<10}{'median s':>10}{'tokens/s':>12}{'peak RSS GiB':>14}{'AdamW MiB':>11}{'trainable':>12}")
    for name, r in results.items():
        print(f"{name:<10}{r['seconds_median']:>10.2f}{r['tokens_per_s']:>12.1f}{r['peak_rss_gib']:>14.2f}"
              f"{r['optimizer_state_mib']:>11.1f}{int(r['trainable_params']):>12,}")
    tr = results.get("trainer")
    if tr is None:
        return
    if "raw" in results:
        print(f"ratio trainer/raw tokens/s = {tr['tokens_per_s'] / results['raw']['tokens_per_s']:.2f} (goal >= 0.8)")
    for name in ("amp", "auto", "auto+top8"):
        if name in results:
            print(f"speed-up {name} over the float32 trainer = {results[name]['tokens_per_s'] / tr['tokens_per_s']:.2f}x")
    if "lora" in results:
        lo = results["lora"]
        print(f"LoRA rank {args.lora_rank} vs full fine-tuning: update time per step {lo['seconds_median']:.2f} s vs "
              f"{tr['seconds_median']:.2f} s (ratio {lo['seconds_median'] / tr['seconds_median']:.2f}); peak RSS "
              f"{lo['peak_rss_gib']:.2f} vs {tr['peak_rss_gib']:.2f} GiB (ratio {lo['peak_rss_gib'] / tr['peak_rss_gib']:.2f}); "
              f"AdamW state {lo['optimizer_state_mib']:.1f} vs {tr['optimizer_state_mib']:.1f} MiB "
              f"(ratio {lo['optimizer_state_mib'] / tr['optimizer_state_mib']:.3f})")


if __name__ == "__main__":
    main()
