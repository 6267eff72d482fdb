"""Rollout and update throughput of a larger configuration, for machines with a GPU.

Builds a randomly initialised model of a real architecture (Llama, default ~1.2B parameters: hidden
2048, 16 layers, SmolLM2's tokenizer) — random weights are fine for speed — saves it once, then
measures in one run:

* rollout: vLLM ``generate`` tokens/s for ``--prompts`` token-id prompts x ``--new-tokens`` (ignore EOS),
  through steppo's ``VLLMPolicy`` (the rollout engine's policy);
* update: steppo's StepPO actor update (micro-batches by token budget, AdamW step) tokens/s on
  ``--rows`` step rows, bf16, on the same device;
* weight push: seconds to push the updated weights into the live vLLM engine.

    python benchmarks/bench_gpu.py                      # on a GPU machine (bash scripts/setup.sh installs vllm)
    python benchmarks/bench_gpu.py --tiny               # a 2-layer model: checks the script on a CPU

Prints one table with the device name; copy it into docs/results.md with the machine's name.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build_model(path: Path, tiny: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steppo_agent.default_model import resolve_model

    if (path / "config.json").exists():
        return path
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1) if tiny else \
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--token-budget", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "steppo-bench-gpu-model")
    args = ap.parse_args()

    import torch
    from vllm import SamplingParams, TokensPrompt

    from steppo_agent.policies.vllm_policy import VLLMPolicy
    from steppo_train.batch import StepBatch
    from steppo_train.config import load_config
    from steppo_train.models import ModelConfig, load_actor
    from steppo_train.targets import RowTargets
    from steppo_train.update import IterationData, actor_loss, make_units, pack_units

    model_dir = build_model(args.model_dir / ("tiny-hd64" if args.tiny else "llama-1b"), args.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.prompts)]

    policy = VLLMPolicy(str(model_dir), dtype="bfloat16", max_model_len=args.prompt_tokens + args.new_tokens + 16)
    params = SamplingParams(temperature=1.0, max_tokens=args.new_tokens, ignore_eos=True, logprobs=0)
    rollout = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = policy._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        dt = time.perf_counter() - t0
        rollout.append(sum(len(o.outputs[0].token_ids) for o in out) / dt)
        policy._llm.reset_prefix_cache()

    actor = load_actor(ModelConfig(str(model_dir), dtype="bf16", gradient_checkpointing=True)).to(device)
    opt = torch.optim.AdamW(actor.parameters(), lr=1e-6)
    rows = args.rows
    p_ids = prompts[:rows] if rows <= len(prompts) else (prompts * (rows // len(prompts) + 1))[:rows]
    r_ids = [torch.randint(100, 40000, (args.new_tokens,), generator=g).tolist() for _ in range(rows)]
    batch = StepBatch.from_rows(p_ids, r_ids)
    adv = torch.linspace(-1, 1, rows)
    config = load_config("steppo", overrides={"token_budget": args.token_budget})
    data = IterationData(batch, [torch.full((len(r),), -5.0, device=device) for r in r_ids],
                         RowTargets([adv[i].expand(len(r)).clone() for i, r in enumerate(r_ids)], adv.to(device), None, None),
                         None, make_units(config, batch))
    n_tokens = sum(len(p) + len(r) for p, r in zip(p_ids, r_ids, strict=True))
    update = []
    for _ in range(args.repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for pack in pack_units(data.units, batch, config.token_budget):
            loss, _ = actor_loss(config, actor, data, pack, len(data.units), sum(len(r) for r in r_ids))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        update.append(n_tokens / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    policy.load_weights({k: v.detach().to("cpu", torch.bfloat16) for k, v in actor.state_dict().items()})
    push = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    n_params = sum(p.numel() for p in actor.parameters()) / 1e6
    print(f"device: {device_name}; model: random Llama {n_params:.0f}M params, bf16")
    print(f"rollout  (vLLM, {args.prompts} prompts x {args.prompt_tokens} + {args.new_tokens} new): median {statistics.median(rollout):,.0f} tokens/s")
    print(f"update   (StepPO actor, {rows} rows, grad checkpointing): median {statistics.median(update):,.0f} tokens/s; peak training memory {peak:.1f} GiB")
    print(f"weight push into the live engine: {push:.2f} s")
    policy.close()


if __name__ == "__main__":
    main()
