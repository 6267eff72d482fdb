"""Actor / critic utilities on a tiny randomly initialised Llama (seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel  # noqa: E402

from steppo_train.losses import entropy_from_logits  # noqa: E402
from steppo_train.models import (  # noqa: E402
    Critic,
    ModelConfig,
    load_actor,
    load_critic,
    pack_microbatches,
    padded_width,
    response_logprobs,
    response_token_stats,
    values_at_action_tokens,
    values_at_last_prompt_token,
)

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13]]
RESPONSES = [[20, 21], [22, 23, 24], [25, 26, 27, 28, 29], []]


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="module")
def actor() -> LlamaForCausalLM:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_config())
    return model.eval()


@pytest.fixture(scope="module")
def critic() -> Critic:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        backbone = LlamaModel(tiny_config())
        model = Critic(backbone, 64, init_std=0.1)
    return model.eval()


def naive_logprobs(model: LlamaForCausalLM, prompt: list[int], response: list[int], temperature: float = 1.0):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    logp = torch.log_softmax(logits, -1)
    pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
    return logp[pos, torch.tensor(response, dtype=torch.long)], logits[pos]


@pytest.mark.parametrize("chunk_size", [2, 512])
def test_response_logprobs_equal_naive_full_logits(actor: LlamaForCausalLM, chunk_size: int) -> None:
    with torch.no_grad():
        got = response_logprobs(actor, PROMPTS, RESPONSES, chunk_size=chunk_size)
    assert [len(g) for g in got] == [len(r) for r in RESPONSES]
    for p, r, g in zip(PROMPTS, RESPONSES, got, strict=True):
        expected, _ = naive_logprobs(actor, p, r)
        torch.testing.assert_close(g, expected, atol=1e-6, rtol=0)


def test_entropy_and_temperature_match_naive(actor: LlamaForCausalLM) -> None:
    with torch.no_grad():
        stats = response_token_stats(
            actor, PROMPTS, RESPONSES, temperature=0.7, chunk_size=3, with_entropy=True
        )
    assert stats.entropies is not None
    for p, r, lp, ent in zip(PROMPTS, RESPONSES, stats.logprobs, stats.entropies, strict=True):
        expected, logits = naive_logprobs(actor, p, r, temperature=0.7)
        torch.testing.assert_close(lp, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(ent, entropy_from_logits(logits), atol=1e-5, rtol=0)


def test_padding_invariance(actor: LlamaForCausalLM) -> None:
    with torch.no_grad():
        batched = response_logprobs(actor, PROMPTS, RESPONSES)
        for i in range(len(PROMPTS)):
            alone = response_logprobs(actor, [PROMPTS[i]], [RESPONSES[i]])[0]
            torch.testing.assert_close(alone, batched[i], atol=1e-5, rtol=0)


def test_empty_prompt_is_an_error(actor: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="prompt"):
        response_logprobs(actor, [[]], [[1]])


def test_actor_gradient_reaches_every_parameter_and_matches_naive() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = LlamaForCausalLM(tiny_config())
    model.train()
    logps = response_logprobs(model, PROMPTS, RESPONSES, chunk_size=3)  # checkpointed chunks
    loss = -torch.cat(logps).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    model.zero_grad()
    naive = 0.0
    for p, r in zip(PROMPTS, RESPONSES, strict=True):
        if not r:
            continue
        logits = model(input_ids=torch.tensor([p + r])).logits[0]
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        naive = naive - torch.log_softmax(logits[pos], -1)[torch.arange(len(r)), torch.tensor(r)].sum()
    naive.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-5, rtol=1e-4)


def test_critic_values_shapes_positions_and_padding(critic: Critic) -> None:
    with torch.no_grad():
        last = values_at_last_prompt_token(critic, PROMPTS)
        per_token = values_at_action_tokens(critic, PROMPTS, RESPONSES)
        assert last.shape == (len(PROMPTS),) and last.dtype == torch.float32
        assert [v.shape[0] for v in per_token] == [len(r) for r in RESPONSES]
        for i, p in enumerate(PROMPTS):
            seq = p + RESPONSES[i]
            full = critic(torch.tensor([seq]))[0]
            torch.testing.assert_close(last[i], full[len(p) - 1], atol=1e-5, rtol=0)
            if RESPONSES[i]:
                torch.testing.assert_close(per_token[i][0], last[i], atol=1e-5, rtol=0)
                torch.testing.assert_close(per_token[i], full[len(p) - 1 : len(seq) - 1], atol=1e-5, rtol=0)


def test_critic_gradient_reaches_every_parameter() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = Critic(LlamaModel(tiny_config()), 64)  # default (small) head init
    model.train()
    values = values_at_last_prompt_token(model, PROMPTS)
    per_token = values_at_action_tokens(model, PROMPTS, RESPONSES)
    ((values - 1.0) ** 2).sum().add(torch.cat(per_token).sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_load_actor_and_critic_from_checkpoint(tmp_path: Path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(4)
        LlamaForCausalLM(tiny_config()).save_pretrained(tmp_path)
    actor = load_actor(ModelConfig(str(tmp_path), dtype="bf16", gradient_checkpointing=True))
    assert next(actor.parameters()).dtype == torch.bfloat16
    assert actor.is_gradient_checkpointing
    critic = load_critic(ModelConfig(str(tmp_path), gradient_checkpointing=True))
    assert critic.value_head.weight.dtype == torch.float32
    assert critic.backbone.is_gradient_checkpointing
    fp32_actor = load_actor(ModelConfig(str(tmp_path), dtype="float32"))
    with torch.no_grad():  # bf16 weights, fp32 log-probs close to the fp32 model's
        lp16 = response_logprobs(actor, PROMPTS, RESPONSES)
        lp32 = response_logprobs(fp32_actor, PROMPTS, RESPONSES)
    for a, b in zip(lp16, lp32, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=0.1, rtol=0)
    # the critic is a separate copy of the same base transformer
    for name, param in critic.backbone.state_dict().items():
        assert torch.equal(param, fp32_actor.model.state_dict()[name]), name
        assert param.data_ptr() != fp32_actor.model.state_dict()[name].data_ptr()
    # gradient checkpointing in train mode still gives gradients to every parameter
    critic.train()
    values_at_last_prompt_token(critic, PROMPTS).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())
    with pytest.raises(ValueError, match="dtype"):
        load_actor(ModelConfig(str(tmp_path), dtype="fp16"))  # type: ignore[arg-type]


def test_pack_microbatches_hand_example() -> None:
    samples = [([1] * 3, [2] * 2), ([1] * 8, [2] * 2), ([1], [2]), ([1] * 4, [2] * 4), ([1] * 30, [2] * 2)]
    # lengths 5, 10, 2, 8, 32; budget 20: [32] alone (over budget), [10, 8], [5, 2]
    assert pack_microbatches(samples, 20) == [[4], [1, 3], [0, 2]]
    assert pack_microbatches([], 10) == []
    with pytest.raises(ValueError, match="token_budget"):
        pack_microbatches(samples, 0)


def test_padded_width_and_packing_with_a_pad_multiple() -> None:
    assert [padded_width(n, 64) for n in (0, 1, 64, 65, 128)] == [0, 64, 64, 128, 128]
    assert padded_width(37, 1) == 37 and padded_width(37, 0) == 37
    samples = [([1] * 3, [2] * 2), ([1] * 8, [2] * 2), ([1], [2]), ([1] * 4, [2] * 4), ([1] * 30, [2] * 2)]
    # lengths 5, 10, 2, 8, 32 padded to multiples of 8: 8, 16, 8, 8, 32; budget 20:
    # [32] alone, [10] alone (2 x 16 > 20), [8, 5] (2 x 8), [2] (3 x 8 > 20)
    assert pack_microbatches(samples, 20, pad_multiple=8) == [[4], [1], [3, 0], [2]]


def test_pad_multiple_never_changes_results(actor: LlamaForCausalLM, critic: Critic) -> None:
    with torch.no_grad():
        plain = response_logprobs(actor, PROMPTS, RESPONSES)
        padded = response_logprobs(actor, PROMPTS, RESPONSES, pad_multiple=16)
        for a, b in zip(plain, padded, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        torch.testing.assert_close(values_at_last_prompt_token(critic, PROMPTS),
                                   values_at_last_prompt_token(critic, PROMPTS, pad_multiple=16), atol=1e-5, rtol=0)
        for a, b in zip(values_at_action_tokens(critic, PROMPTS, RESPONSES),
                        values_at_action_tokens(critic, PROMPTS, RESPONSES, pad_multiple=16), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40)), max_size=30), st.integers(1, 200), st.integers(1, 16))
def test_padded_packing_respects_budget(lengths: list[tuple[int, int]], budget: int, multiple: int) -> None:
    samples = [([0] * p, [1] * r) for p, r in lengths]
    batches = pack_microbatches(samples, budget, pad_multiple=multiple)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for batch in batches:
        width = padded_width(max(sum(lengths[i]) for i in batch), multiple)
        assert len(batch) * width <= budget or len(batch) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40)), max_size=30), st.integers(1, 200))
def test_pack_microbatches_respects_budget(lengths: list[tuple[int, int]], budget: int) -> None:
    samples = [([0] * p, [1] * r) for p, r in lengths]
    batches = pack_microbatches(samples, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for batch in batches:
        sizes = [sum(lengths[i]) for i in batch]
        assert len(batch) * max(sizes) <= budget or len(batch) == 1
