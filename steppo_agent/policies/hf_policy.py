"""transformers policy: a batched, KV-cached sampling loop over ``AutoModelForCausalLM``.

Why not ``model.generate``: it samples from the process-global torch RNG, so per-prompt seeds would
need global seeding and prompt-by-prompt calls. This loop keeps one ``torch.Generator`` per prompt,
so prompt i's sample depends only on its seed (not on the batch it shares), and batches prompts
with left padding. Per step it computes

* the raw log-softmax of the next-token logits -> the sampled token's logprob (vLLM's default
  ``raw_logprobs`` semantic: before temperature / top-p), and
* the sampling distribution: greedy argmax at temperature 0, else softmax(logits / T) restricted to
  the top-p nucleus, sampled with the prompt's generator.

A row stops at an EOS token (kept in ``token_ids``), when its decoded text contains a stop string
(the stop string stays in the text), at ``max_tokens`` or at ``max_model_len``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steppo_agent.default_model import resolve_model
from steppo_agent.policies import error_generation, resolve_seeds
from steppo_agent.policies.base import Generation
from steppo_agent.records import SamplingConfig

__all__ = ["HFPolicy"]


class HFPolicy:
    """A :class:`~steppo_agent.policies.base.Policy` running transformers in this process.

    Args:
        model: model name or path (``"smollm2-135m"`` = the bundled default).
        dtype: torch dtype name; ``None`` = float32.
        max_model_len: prompt + response tokens per prompt.
        batch_size: prompts per forward batch.
        device: torch device (``None``: cuda when available, else cpu).
    """

    backend = "hf"
    wants_infos = False

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        dtype: str | None = None,
        max_model_len: int = 2048,
        batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model
        self.model_path = resolve_model(model)
        self.version = 0
        self.max_model_len = max_model_len
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        loaded: Any = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, dtype or "float32"))
        self.hf_model: Any = loaded.to(self.device)
        self.hf_model.eval()
        eos: set[int] = set()
        for value in (self.tokenizer.eos_token_id, getattr(self.hf_model.generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list):
                eos.update(int(v) for v in value)
        self.eos_ids = eos
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(eos), 0))

    def load_weights(self, state_dict: Any) -> int:
        """Load a state dict (HF names) into the model; return the new ``version``."""
        self.hf_model.load_state_dict(dict(state_dict), strict=False)
        self.version += 1
        return self.version

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int | None] | None = None,
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt (see :class:`~steppo_agent.policies.base.Policy`)."""
        per_prompt_seeds = resolve_seeds(len(prompts), sampling, seeds)
        results: list[Generation] = [error_generation() for _ in prompts]
        valid = [i for i, p in enumerate(prompts) if 0 < len(p) < self.max_model_len]
        for start in range(0, len(valid), self.batch_size):
            chunk = valid[start : start + self.batch_size]
            outs = self._generate_batch([list(prompts[i]) for i in chunk], sampling, [per_prompt_seeds[i] for i in chunk])
            for i, gen in zip(chunk, outs, strict=True):
                results[i] = gen
        return results

    def _sample(self, logits: Any, sampling: SamplingConfig, generators: list[Any]) -> Any:
        """Next token per row from float32 ``logits`` [B, V] (greedy / temperature + top-p)."""
        import torch

        if sampling.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        rows = [torch.multinomial(probs[b], 1, generator=generators[b]) for b in range(probs.shape[0])]
        return torch.cat(rows)

    def _hit_stop(self, ids: list[int], stop: Sequence[str]) -> bool:
        """Whether the decoded response contains one of the stop strings."""
        if not stop:
            return False
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in stop)

    def _generate_batch(
        self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int | None]
    ) -> list[Generation]:
        import torch

        batch = len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for b, prompt in enumerate(prompts):
            input_ids[b, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[b, width - len(prompt) :] = 1
        generators = []
        for seed in seeds:
            g = torch.Generator(device=self.device)
            if seed is None:
                g.seed()
            else:
                g.manual_seed(int(seed) % (2**63))
            generators.append(g)
        budgets = [min(sampling.max_tokens, self.max_model_len - len(p)) for p in prompts]
        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        reasons: list[str | None] = [None] * batch
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        past = None
        step_ids = input_ids
        with torch.inference_mode():
            for _ in range(max(budgets)):
                out = self.hf_model(
                    input_ids=step_ids, attention_mask=attention, position_ids=positions,
                    past_key_values=past, use_cache=True,
                )
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()
                raw = torch.log_softmax(logits, dim=-1)
                chosen = self._sample(logits, sampling, generators)
                for b in range(batch):
                    if reasons[b] is not None:
                        continue
                    token = int(chosen[b])
                    tokens[b].append(token)
                    logprobs[b].append(float(raw[b, token]))
                    if token in self.eos_ids or self._hit_stop(tokens[b], sampling.stop):
                        reasons[b] = "stop"
                    elif len(tokens[b]) >= budgets[b]:
                        reasons[b] = "length"
                if all(r is not None for r in reasons):
                    break
                step_ids = chosen.view(batch, 1).to(self.device)
                attention = torch.cat([attention, torch.ones((batch, 1), dtype=attention.dtype, device=self.device)], 1)
                positions = positions[:, -1:] + 1
        return [
            Generation(
                token_ids=ids,
                logprobs=lps,
                text=str(self.tokenizer.decode(ids, skip_special_tokens=True)),
                finish_reason=reason or "length",
            )
            for ids, lps, reason in zip(tokens, logprobs, reasons, strict=True)
        ]

    def close(self) -> None:
        """Drop the model."""
        self.hf_model = None
