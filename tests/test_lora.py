"""LoRA through PEFT: only adapters (and the critic's value head) train, the rollout engine gets the merged
weights under the original names, checkpoints keep the adapters and resume exactly, config errors name the
fix; with the real vLLM engine the merged weights reproduce the trainer's logprobs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import toy_env  # noqa: E402  (registers steppotest/Guess-v0)
from tiny_model import make_tiny_llama  # noqa: E402

from steppo_envs.config import ConfigError  # noqa: E402
from steppo_train.config import load_config  # noqa: E402
from steppo_train.lora import ADAPTER_DIR, LLAMA_PROJECTIONS, LoraConfig, rollout_state_dict  # noqa: E402
from steppo_train.models import ModelConfig, load_actor, load_critic, response_logprobs  # noqa: E402
from steppo_train.trainer import TrainResult, init_value_head, train  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None
LORA = {"lora.rank": 4, "lora.alpha": 8}
PROMPTS = [[1, 5, 9, 200, 31], [7, 8, 300, 12, 44, 45, 46]]
RESPONSES = [[11, 12, 13, 14], [400, 401, 2]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def _config(tiny: Path, out: Path, **extra: object) -> Any:
    values: dict[str, object] = dict(
        model=str(tiny), env_id=toy_env.ENV_ID, env_kwargs={"max_steps": 2}, backend="hf", iterations=2,
        tasks_per_iteration=2, group_size=2, max_tokens=8, output_dir=str(out), minibatch_size=64, actor_lr=1e-2,
        critic_lr=1e-2, save_every=1, amp=False, **LORA)
    values.update(extra)
    return load_config("steppo", overrides=values)


class Runs:
    """Two LoRA StepPO iterations straight (``a``), and a copy of that run whose newest checkpoint is
    deleted (``b``: the run stopped after iteration 0's checkpoint), resumed for iteration 1."""

    def __init__(self, tiny: Path, root: Path) -> None:
        import shutil

        from steppo_agent.policies import PolicyConfig, make_policy

        self.root = root
        self.policy: Any = make_policy(PolicyConfig(backend="hf", model=str(tiny)))
        self.straight: TrainResult = train(_config(tiny, root / "a"), policy=self.policy)
        shutil.copytree(root / "a", root / "b")
        shutil.rmtree(root / "b" / "checkpoints" / "iter_000001")
        self.resumed: TrainResult = train(_config(tiny, root / "b", resume=True))


@pytest.fixture(scope="module")
def runs(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tiny, tmp_path_factory.mktemp("lora_runs"))


def _lora_model(path: str, rank: int = 4, alpha: float = 8.0, seed: int = 0, b_std: float = 0.05) -> torch.nn.Module:
    """A LoRA actor whose B matrices are random (a trained adapter), from ``seed``."""
    model = load_actor(ModelConfig(path, lora=LoraConfig(rank=rank, alpha=alpha)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * b_std)
    return model


def test_only_adapters_and_value_head_change_after_stepppo_updates(tiny: Path, runs: Runs) -> None:
    actor0 = load_actor(ModelConfig(str(tiny), lora=LoraConfig(rank=4, alpha=8), seed=0))
    before = {k: v.detach().clone() for k, v in actor0.named_parameters()}
    params = dict(runs.straight.actor.named_parameters())
    trainable = {k for k, p in params.items() if p.requires_grad}
    assert trainable and all(".lora_A." in k or ".lora_B." in k for k in trainable)
    assert {k.split(".")[-4] for k in trainable} == set(LLAMA_PROJECTIONS)
    assert [k for k in trainable if torch.equal(params[k], before[k])] == []  # every adapter moved
    assert [k for k in params if k not in trainable and not torch.equal(params[k], before[k])] == []  # base intact
    critic0 = load_critic(ModelConfig(str(tiny), lora=LoraConfig(rank=4, alpha=8), seed=1))
    init_value_head(critic0, 0)
    c_before = {k: v.detach().clone() for k, v in critic0.named_parameters()}
    assert runs.straight.critic is not None
    c_params = dict(runs.straight.critic.named_parameters())
    c_trainable = {k for k, p in c_params.items() if p.requires_grad}
    assert {k for k in c_trainable if "lora_" not in k} == {"value_head.weight", "value_head.bias"}
    assert [k for k in c_trainable if torch.equal(c_params[k], c_before[k])] == []
    assert [k for k in c_params if k not in c_trainable and not torch.equal(c_params[k], c_before[k])] == []


def test_the_rollout_policy_holds_the_merged_weights(runs: Runs) -> None:
    merged = rollout_state_dict(runs.straight.actor)
    served = runs.policy.hf_model.state_dict()
    assert set(served) == set(merged)
    assert [k for k in served if not torch.equal(served[k], merged[k])] == []
    base = load_actor(ModelConfig(str(runs.policy.model))).state_dict()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_checkpoint_holds_adapters_and_resume_is_exact(runs: Runs) -> None:
    a, b = runs.straight, runs.resumed
    for x, y in ((a.actor, b.actor), (a.critic, b.critic)):
        assert x is not None and y is not None
        ys = dict(y.named_parameters())
        assert [k for k, p in x.named_parameters() if not torch.equal(p, ys[k])] == []
    ckpt = runs.root / "b" / "checkpoints" / "iter_000001"  # written by the resumed run
    assert (ckpt / ADAPTER_DIR / "adapter_model.safetensors").exists()
    assert b.critic is not None
    critic_saved = torch.load(ckpt / "critic.pt", weights_only=True)
    assert set(critic_saved) == {k for k, p in b.critic.named_parameters() if p.requires_grad}
    opt = torch.load(ckpt / "optimizers.pt", weights_only=False)["actor"]
    assert len(opt["state"]) == sum(p.requires_grad for p in b.actor.parameters())
    served = load_actor(ModelConfig(str(ckpt / "actor"))).state_dict()  # `steppo eval --model <ckpt>/actor`
    merged = rollout_state_dict(b.actor)
    assert [k for k in merged if not torch.equal(served[k], merged[k])] == []


def test_merged_state_equals_a_hand_merge_and_reproduces_the_logprobs(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = _lora_model(str(tiny))
    plain = AutoModelForCausalLM.from_pretrained(str(tiny))
    original = {k: v.clone() for k, v in plain.state_dict().items()}
    merged = rollout_state_dict(model)
    assert set(merged) == set(original)
    modules = dict(model.named_modules())
    for key, w in original.items():
        lora = modules.get(f"base_model.model.{key.removesuffix('.weight')}")
        if lora is None or not hasattr(lora, "lora_A"):
            assert torch.equal(merged[key], w), key
            continue
        ref = w + 8 / 4 * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
        assert (merged[key] - ref).abs().max() < 1e-6, key
        assert torch.equal(lora.base_layer.weight, w), key  # the training model is not merged in place
    plain.load_state_dict(merged)
    with torch.no_grad():
        want = response_logprobs(model, PROMPTS, RESPONSES)
        got = response_logprobs(plain, PROMPTS, RESPONSES)
        base = response_logprobs(AutoModelForCausalLM.from_pretrained(str(tiny)), PROMPTS, RESPONSES)
    assert max(float((x - y).abs().max()) for x, y in zip(want, got, strict=True)) < 1e-5
    assert max(float((x - y).abs().max()) for x, y in zip(want, base, strict=True)) > 1e-3  # the adapter matters


@pytest.mark.parametrize(("overrides", "message"), [
    ({"lora.rank": -1}, r"lora.rank must be >= 0 \(got -1\): e.g. --set lora.rank=0"),
    ({"lora.alpha": 0}, r"lora.alpha must be > 0"),
    ({"lora.dropout": 1.0}, r"lora.dropout must be in \[0, 1\)"),
    ({"lora.target_modules": []}, r"lora.target_modules needs one or more module names"),
    ({"lora_rnk": 4}, r"did you mean lora_rank"),
])
def test_config_errors_are_one_line_naming_the_fix(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config("steppo", overrides=overrides)
    assert "\n" not in str(err.value)


def test_flat_aliases_and_comma_separated_targets() -> None:
    config = load_config("steppo", overrides={"lora_rank": "16", "lora_alpha": "32", "lora_dropout": "0.05",
                                              "lora_target_modules": "q_proj, v_proj", "lora.critic": "false"})
    assert config.lora == LoraConfig(rank=16, alpha=32, dropout=0.05, target_modules=["q_proj", "v_proj"], critic=False)
    assert load_config("steppo").lora.rank == 0  # off by default: full fine-tuning


def test_bad_target_module_and_top_layers_with_lora(tiny: Path) -> None:
    with pytest.raises(ConfigError, match=r"lora.target_modules qproj are not linear layers of this model "
                                          r"\(LlamaForCausalLM\): choose from down_proj, gate_proj, k_proj, lm_head"):
        load_actor(ModelConfig(str(tiny), lora=LoraConfig(rank=4, target_modules=["q_proj", "qproj"])))
    with pytest.raises(ConfigError, match=r"trainable_layers must be in 1..2 for this model, not 3"):
        load_actor(ModelConfig(str(tiny), lora=LoraConfig(rank=4), trainable_layers=3))
    top = load_critic(ModelConfig(str(tiny), lora=LoraConfig(rank=4, target_modules=["q_proj"]), trainable_layers=1))
    assert {k for k, p in top.named_parameters() if p.requires_grad} == {
        "backbone.base_model.model.layers.1.self_attn.q_proj.lora_A.default.weight",
        "backbone.base_model.model.layers.1.self_attn.q_proj.lora_B.default.weight",
        "value_head.weight", "value_head.bias"}


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")
def test_vllm_serves_the_merged_lora_weights(vllm_policy: Any, default_model_dir: str) -> None:
    from steppo_agent.prompting import render_prompt_ids
    from steppo_agent.records import SamplingConfig

    model = _lora_model(default_model_dir, rank=8, alpha=16, b_std=0.01)
    plain = load_actor(ModelConfig(default_model_dir))
    prompts = [render_prompt_ids(vllm_policy.tokenizer, "You are a helpful agent. Answer briefly.", o, None)
               for o in ("You are in a kitchen. There is a fridge. What do you do?", "Question: what is 2 + 3?")]
    greedy = SamplingConfig(temperature=0.0, max_tokens=16)
    try:
        vllm_policy.load_weights(rollout_state_dict(model))
        gens = vllm_policy.generate(prompts, greedy)
        with torch.no_grad():
            trainer = response_logprobs(model, prompts, [g.token_ids for g in gens])
            base = response_logprobs(plain, prompts, [g.token_ids for g in gens])
        gaps = [abs(a - b) for t, g in zip(trainer, gens, strict=True) for a, b in zip(t.tolist(), g.logprobs, strict=True)]
        print(f"\nvllm with merged LoRA weights: gap vs the trainer mean {sum(gaps) / len(gaps):.2e} max {max(gaps):.2e}")
        assert max(gaps) < 1e-3  # tolerance of test_vllm_weight_push_matches_transformers
        assert max(float((t - b).abs().max()) for t, b in zip(trainer, base, strict=True)) > 1e-2  # not the base
    finally:
        vllm_policy.load_weights(plain.state_dict())  # the session's engine gets the default model back
