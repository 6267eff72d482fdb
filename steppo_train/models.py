"""Actor and critic models, micro-batch packing and memory-frugal log-probabilities.

* The **actor** is a Hugging Face causal LM (:func:`load_actor`).
* The **critic** (:class:`Critic`, :func:`load_critic`) is a separate copy of the same checkpoint's
  base transformer (no LM head) with a scalar value head ``nn.Linear(hidden, 1)``.
* With ``ModelConfig.lora`` (rank > 0) either is wrapped by PEFT (:mod:`steppo_train.lora`): only the
  adapters (and the critic's value head) train; the functions below work on the wrapped model as is.
* :func:`response_logprobs` computes the log-probability of each response token given the prompt
  and the earlier response tokens. It never builds full-vocabulary logits for prompt positions:
  it runs the base transformer, keeps the hidden states of the positions that predict response
  tokens, and applies the LM head + ``log_softmax`` to those in chunks (each chunk recomputed in
  the backward pass when gradients are on, so at most one ``[chunk, vocab]`` block is alive).
* Batches are **right-padded** with an attention mask: real tokens sit at positions ``0 .. n-1``
  and padding only follows them, so a sample's results do not depend on what it is batched with.

Position convention: the token at position ``p`` is predicted by the hidden state at ``p - 1``.
For a prompt of length ``P`` and response token ``j``, the "state" in which token ``j`` is chosen
is position ``P - 1 + j``; :func:`values_at_action_tokens` reads the critic there, and
:func:`values_at_last_prompt_token` (StepPO's per-step value) reads it at ``P - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from steppo_envs.config import ConfigError
from steppo_train.lora import LoraConfig, apply_lora

__all__ = [
    "Critic",
    "ModelConfig",
    "TokenStats",
    "load_actor",
    "load_critic",
    "pack_microbatches",
    "padded_width",
    "response_logprobs",
    "response_token_stats",
    "values_at_action_tokens",
    "values_at_last_prompt_token",
    "freeze_lower_layers",
    "init_value_head",
]

Dtype = Literal["fp32", "bf16", "float32", "bfloat16"]
_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class ModelConfig:
    """How to load the actor or the critic.

    Attributes:
        path: a local HF model folder or hub id (e.g. ``steppo_agent.default_model.resolve_model(name)``).
        dtype: parameter dtype, ``"fp32"`` or ``"bf16"`` (``"float32"`` / ``"bfloat16"`` are
            accepted too); the critic's value head stays fp32.
        gradient_checkpointing: recompute layer activations in the backward pass (less memory,
            ~10-20% slower); active only while the model is in ``train()`` mode.
    """

    path: str
    dtype: Dtype = "fp32"
    gradient_checkpointing: bool = False
    trainable_layers: int | None = None
    """Train only the top N transformer blocks and the final norm (and the critic's value head);
    embeddings and the LM head stay frozen. ``None`` trains every weight. With LoRA: adapters only
    in the top N blocks (every base weight frozen)."""
    lora: LoraConfig | None = None
    """LoRA adapters (:func:`steppo_train.lora.apply_lora`) when ``lora.rank > 0``: only they train."""
    seed: int = 0
    """Seed of the adapters' initialisation (LoRA only)."""


def _torch_dtype(dtype: Dtype) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be 'fp32' or 'bf16' (or 'float32' / 'bfloat16'), not {dtype!r}.")
    return _DTYPES[dtype]


def _enable_checkpointing(model: nn.Module) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]  # a transformers PreTrainedModel method; nn.Module's __getattr__ types it as Tensor | Module
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False


def freeze_lower_layers(decoder: nn.Module, trainable_layers: int) -> None:
    """Freeze every parameter of ``decoder`` (an HF base transformer with ``.layers``) except the top
    ``trainable_layers`` blocks and the final ``norm``. Frozen lower blocks need no backward pass, so a
    step costs about ``forward + (N / L) * backward`` of the full model."""
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"trainable_layers needs a decoder with a `.layers` ModuleList ({type(decoder).__name__} has none): "
            "leave trainable_layers unset to train every weight."
        )
    if not 1 <= trainable_layers <= len(layers):
        raise ConfigError(f"trainable_layers must be in 1..{len(layers)} for this model, not {trainable_layers}.")
    for p in decoder.parameters():
        p.requires_grad_(False)
    for block in list(layers)[len(layers) - trainable_layers :]:
        for p in block.parameters():
            p.requires_grad_(True)
    norm = getattr(decoder, "norm", None)
    if isinstance(norm, nn.Module):
        for p in norm.parameters():
            p.requires_grad_(True)


def load_actor(config: ModelConfig) -> nn.Module:
    """Load the actor: ``AutoModelForCausalLM.from_pretrained(config.path, dtype=...)``; with ``config.lora``
    (rank > 0) wrapped by PEFT so that only its adapters train (:func:`steppo_train.lora.apply_lora`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config.path, dtype=_torch_dtype(config.dtype))
    if config.gradient_checkpointing:
        _enable_checkpointing(model)
    if config.lora is not None and config.lora.enabled:
        return apply_lora(model, config.lora, trainable_layers=config.trainable_layers, seed=config.seed)
    if config.trainable_layers is not None:
        for p in model.parameters():
            p.requires_grad_(False)
        freeze_lower_layers(model.get_decoder(), config.trainable_layers)
    return model


class Critic(nn.Module):
    """A base transformer (no LM head) with a scalar value head on every position's hidden state.

    The head reads **layer-normalised** hidden states (``F.layer_norm`` without weights: zero mean,
    unit variance per position, in fp32), so its scale does not depend on the backbone's hidden-state
    norm (~58 for SmolLM2's last layer, where an unnormalised head with weights ``N(0, 0.01^2)`` started
    at ``|V| ~ 0.5``). The head is ``nn.Linear(hidden, 1)`` in fp32 with weights
    ``N(0, (init_std / sqrt(hidden))^2)`` and bias 0, so the values start at about ``N(0, init_std^2)``.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, init_std: float = 1e-3) -> None:
        super().__init__()
        self.backbone = backbone
        self.hidden_size = hidden_size
        self.value_head = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.normal_(self.value_head.weight, std=init_std / hidden_size**0.5)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Values ``[batch, seq]`` for every position (padding positions hold meaningless values)."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        features = torch.nn.functional.layer_norm(hidden.float(), (self.hidden_size,))
        return self.value_head(features).squeeze(-1)


def init_value_head(critic: Critic, seed: int, std: float = 1e-3) -> None:
    """Initialise the critic's value head from ``seed`` (no global RNG), so runs are reproducible: weights
    ``N(0, (std / sqrt(hidden))^2)`` over the head's unit-scale features, bias 0, so ``V`` starts at about
    ``N(0, std^2)`` (:class:`~steppo_train.models.Critic`)."""
    g = torch.Generator().manual_seed(seed)
    head = critic.value_head
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * (std / head.in_features**0.5))
        head.bias.zero_()


def load_critic(config: ModelConfig) -> Critic:
    """Load the critic: ``AutoModel.from_pretrained(config.path)`` (the base transformer) + a value head;
    with ``config.lora`` (rank > 0) the transformer is wrapped by PEFT (adapters train, the head too)."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(config.path, dtype=_torch_dtype(config.dtype))
    hidden_size = int(backbone.config.hidden_size)
    if config.gradient_checkpointing:
        _enable_checkpointing(backbone)
    if config.lora is not None and config.lora.enabled:
        backbone = apply_lora(backbone, config.lora, trainable_layers=config.trainable_layers, seed=config.seed)
    elif config.trainable_layers is not None:
        freeze_lower_layers(backbone, config.trainable_layers)
    return Critic(backbone, hidden_size)


def padded_width(longest: int, pad_multiple: int = 1) -> int:
    """``longest`` rounded up to a multiple of ``pad_multiple``: ``ceil(longest / m) * m``.

    Rounding widths keeps the number of distinct tensor shapes of a run small. That matters on CPU
    with bf16: oneDNN compiles and caches kernels per shape, so ever-new shapes (variable-length step
    batches) make resident memory grow every iteration (benchmarks/bench_shape_memory.py).
    """
    m = max(1, int(pad_multiple))
    return -(-int(longest) // m) * m


def pack_microbatches(
    samples: Sequence[tuple[Sequence[int], Sequence[int]]], token_budget: int, pad_multiple: int = 1
) -> list[list[int]]:
    """Group ``(prompt_ids, response_ids)`` samples into micro-batches that fit ``token_budget``.

    The padded token count of a micro-batch is ``len(batch) * padded_width(max(len(prompt) +
    len(response)), pad_multiple)``.
    Samples are taken longest first (ties in input order) and greedily appended to the current
    micro-batch while the padded count stays ``<= token_budget``; a sample longer than the budget
    on its own gets a micro-batch of its own (the only case that exceeds the budget).

    Returns:
        Lists of sample indices (into ``samples``); every index appears exactly once.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}.")
    lengths = [len(p) + len(r) for p, r in samples]
    order = sorted(range(len(samples)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and (len(current) + 1) * padded_width(max(longest, lengths[i]), pad_multiple) > token_budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    if current:
        batches.append(current)
    return batches


def _right_pad(
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    device: torch.device,
    pad_id: int = 0,
    pad_multiple: int = 1,
) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` of ``prompt + response`` sequences, right-padded to the longest
    length rounded up to a multiple of ``pad_multiple`` (:func:`padded_width`)."""
    if len(prompt_ids_list) != len(response_ids_list):
        raise ValueError("prompt_ids_list and response_ids_list must have the same length.")
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids_list, response_ids_list, strict=True)]
    if any(len(p) == 0 for p in prompt_ids_list):
        raise ValueError(
            "every prompt needs at least one token (the first response token is predicted from it)."
        )
    width = padded_width(max((len(s) for s in seqs), default=0), pad_multiple)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
        attn[i, : len(s)] = 1
    return ids, attn


def _predicting_positions(
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    width: int,
    device: torch.device,
) -> Tensor:
    """Bool ``[batch, width]``: true at the positions whose hidden state predicts a response token."""
    sel = torch.zeros((len(prompt_ids_list), width), dtype=torch.bool, device=device)
    for i, (p, r) in enumerate(zip(prompt_ids_list, response_ids_list, strict=True)):
        sel[i, len(p) - 1 : len(p) - 1 + len(r)] = True
    return sel


def _param_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class TokenStats:
    """Per-response token statistics: ``logprobs[i]`` / ``entropies[i]`` have ``len(response_i)`` entries."""

    logprobs: list[Tensor]
    entropies: list[Tensor] | None


def _head_chunk(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    temperature: float,
    softcap: float | None,
    with_entropy: bool,
) -> tuple[Tensor, Tensor]:
    logits = nn.functional.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    if with_entropy:
        probs = logp_all.exp()
        entropy = -torch.where(probs > 0, probs * logp_all, torch.zeros_like(logp_all)).sum(-1)
    else:
        entropy = logp.new_zeros(logp.shape)
    return logp, entropy


def response_token_stats(
    model: nn.Module,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
    pad_multiple: int = 1,
) -> TokenStats:
    """Log-probabilities (and optionally entropies) of each response token under a causal LM.

    ``logprobs[i][j] = log softmax(head(h[P_i - 1 + j]) / temperature)[response_i[j]]`` where ``h``
    are the base transformer's final hidden states over the right-padded ``prompt_i + response_i``.
    Only the ``sum_i len(response_i)`` predicting positions go through the LM head, ``chunk_size``
    rows at a time; with gradients on, each chunk is checkpointed (its logits are recomputed in
    the backward pass). ``temperature`` must match the sampler's if its logprobs were taken after
    temperature scaling. Gemma-style ``final_logit_softcapping`` in the config is applied. The
    head matmul runs in the model's dtype; softcap, temperature and ``log_softmax`` in fp32.

    The model must expose ``get_decoder()`` (the base transformer, final norm included) and
    ``get_output_embeddings()`` (the LM head), as HF causal LMs do (a PEFT-wrapped LoRA model forwards
    both to its base model, whose linear layers carry the adapters). ``pad_multiple`` rounds the
    padded width up (see :func:`padded_width`); padding never changes a sample's results.
    """
    device = _param_device(model)
    ids, attn = _right_pad(prompt_ids_list, response_ids_list, device, pad_multiple=pad_multiple)
    counts = [len(r) for r in response_ids_list]
    total = sum(counts)
    if total == 0:
        empty = [torch.zeros(0, device=device) for _ in counts]
        return TokenStats(empty, [e.clone() for e in empty] if with_entropy else None)
    # PreTrainedModel methods; nn.Module's __getattr__ types them as Tensor | Module
    decoder = model.get_decoder()  # type: ignore[operator]  # see above
    head = model.get_output_embeddings()  # type: ignore[operator]  # see above
    hidden = decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
    sel = _predicting_positions(prompt_ids_list, response_ids_list, ids.shape[1], device)
    h = hidden[sel]  # [total, hidden], row-major: sample by sample, token by token
    targets = torch.cat(
        [torch.tensor(list(r), dtype=torch.long, device=device) for r in response_ids_list if len(r)]
    )
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    logps: list[Tensor] = []
    ents: list[Tensor] = []
    for start in range(0, total, chunk_size):
        args = (
            h[start : start + chunk_size],
            targets[start : start + chunk_size],
            head.weight,
            head.bias,
            temperature,
            softcap,
            with_entropy,
        )
        if torch.is_grad_enabled() and h.requires_grad:
            logp, ent = checkpoint(_head_chunk, *args, use_reentrant=False)
        else:
            logp, ent = _head_chunk(*args)
        logps.append(logp)
        ents.append(ent)
    logp_flat = torch.cat(logps)
    ent_flat = torch.cat(ents) if with_entropy else None
    logprobs = list(torch.split(logp_flat, counts))
    entropies = list(torch.split(ent_flat, counts)) if ent_flat is not None else None
    return TokenStats(logprobs, entropies)


def response_logprobs(
    model: nn.Module,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    pad_multiple: int = 1,
) -> list[Tensor]:
    """Log-probability of each response token (fp32), one 1-D tensor per sample.

    See :func:`response_token_stats` (this is its ``logprobs`` without entropies).
    """
    stats = response_token_stats(
        model, prompt_ids_list, response_ids_list, temperature=temperature, chunk_size=chunk_size,
        pad_multiple=pad_multiple,
    )
    return stats.logprobs


def values_at_last_prompt_token(
    critic: Critic, prompt_ids_list: Sequence[Sequence[int]], *, pad_multiple: int = 1
) -> Tensor:
    """StepPO's step values: the critic's value at the last prompt token of each step, ``[N]`` fp32.

    Only the prompts are run (the value of a state does not look at the response).
    """
    device = _param_device(critic)
    ids, attn = _right_pad(prompt_ids_list, [[] for _ in prompt_ids_list], device, pad_multiple=pad_multiple)
    values = critic(ids, attn)
    last = torch.tensor([len(p) - 1 for p in prompt_ids_list], dtype=torch.long, device=device)
    return values[torch.arange(len(prompt_ids_list), device=device), last]


def values_at_action_tokens(
    critic: Critic,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
    *,
    pad_multiple: int = 1,
) -> list[Tensor]:
    """Token-PPO values: for response token ``j`` the critic's value at position ``P - 1 + j``.

    That is the state in which token ``j`` is chosen (the last prompt token for ``j = 0``, so the
    first entry equals :func:`values_at_last_prompt_token`). One 1-D fp32 tensor per sample.
    """
    device = _param_device(critic)
    ids, attn = _right_pad(prompt_ids_list, response_ids_list, device, pad_multiple=pad_multiple)
    values = critic(ids, attn)
    sel = _predicting_positions(prompt_ids_list, response_ids_list, ids.shape[1], device)
    return list(torch.split(values[sel], [len(r) for r in response_ids_list]))
