"""A tiny randomly initialised Llama with the default model's tokenizer, for fast trainer tests."""

from __future__ import annotations

from pathlib import Path


def make_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steppo_agent.default_model import resolve_model

    if (path / "config.json").exists():
        return path
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    g = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
