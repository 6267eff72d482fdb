"""TrainConfig: nested rollout / sampling / policy configs, dotted keys, flat aliases, one-line errors
that name the fix, and configs stored by older checkpoints (flat mappings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from steppo.cli import main
from steppo_agent.policies import PolicyConfig
from steppo_agent.records import SamplingConfig
from steppo_agent.rollout import EpisodesConfig, RolloutConfig
from steppo_envs.config import ConfigError
from steppo_train.config import (
    ALGO_DEFAULTS,
    ALGOS,
    FLAT_ALIASES,
    ROLLOUT_DEFAULTS,
    Algo,
    TrainConfig,
    load_config,
)
from steppo_train.rollout_side import _eval_config, _rollout_config, preflight

#: The config an iteration-7 checkpoint of an earlier run stored (runs/bench_memory/sft, before the
#: sampling and policy options moved into nested configs).
OLD_FLAT = {
    "algo": "sft", "model": "smollm2-135m", "critic_model": None, "env_id": "steppo/TextWorld-v0", "env_kwargs": {},
    "from_trajectories": ["runs/bench_memory/expert.jsonl"], "backend": "vllm", "base_urls": [],
    "tasks_per_iteration": 16, "group_size": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 64,
    "max_model_len": 2048, "env_workers": 0, "iterations": 8, "ppo_epochs": 1, "minibatch_size": 32,
    "token_budget": 4096, "actor_lr": 2e-05, "critic_lr": 1e-05, "gamma": 0.99, "lam": 1.0, "clip_low": 0.2,
    "clip_high": 0.2, "value_clip": 0.2, "kl_coef": 0.0, "entropy_coef": 0.0, "max_grad_norm": 1.0,
    "weight_decay": 0.0, "dtype": "float32", "amp": "auto", "trainable_layers": None, "trim_memory": True,
    "gradient_checkpointing": False, "whiten_advantages": True, "truncated_bootstrap": "zero", "seed": 0,
    "output_dir": "runs/bench_memory/sft", "save_every": 8, "eval_every": 0, "eval_env_kwargs": {},
    "eval_tasks": 16, "tensorboard": False, "resume": False,
}


def test_one_algorithm_list() -> None:
    assert ALGOS == get_args(Algo) == tuple(ALGO_DEFAULTS)
    assert ALGOS[0] == "steppo" and "sft" in ALGOS


def test_nested_configs_are_the_rollouts_own_types_with_their_defaults() -> None:
    config = load_config("steppo")
    assert isinstance(config.sampling, SamplingConfig) and isinstance(config.policy, PolicyConfig)
    assert config.sampling == SamplingConfig() and config.policy == PolicyConfig()
    assert config.sampling.max_tokens == SamplingConfig.model_fields["max_tokens"].default


def test_dotted_keys_and_flat_aliases_set_the_same_field() -> None:
    dotted = load_config("ppo", overrides={"policy.kv_cache_gib": "1", "sampling.temperature": "0.7",
                                           "policy.max_model_len": 1024, "sampling.max_tokens": 16})
    flat = load_config("ppo", overrides={"kv_cache_gib": "1", "temperature": "0.7", "max_model_len": 1024,
                                         "max_tokens": 16})
    assert dotted == flat
    assert (flat.policy.kv_cache_gib, flat.sampling.temperature, flat.policy.max_model_len, flat.sampling.max_tokens) == (
        1.0, 0.7, 1024, 16)
    assert load_config("ppo", overrides={"policy": '{"cpu_linear": "onednn"}'}).policy.cpu_linear == "onednn"
    assert all(alias.partition(".")[0] in ("rollout", "sampling", "policy", "lora") for alias in FLAT_ALIASES.values())


def test_the_rollout_is_one_episodes_config_set_by_dotted_keys_flat_aliases_and_flags() -> None:
    config = load_config("grpo")
    assert type(config.rollout) is EpisodesConfig
    assert config.rollout == EpisodesConfig(**ROLLOUT_DEFAULTS) == EpisodesConfig(num_tasks=8, group_size=4)
    assert not set(EpisodesConfig.model_fields) & set(TrainConfig.model_fields)  # no field declared twice
    assert set(EpisodesConfig.model_fields) < set(RolloutConfig.model_fields)
    dotted = load_config("grpo", overrides={"rollout.env_id": "a/B-v0", "rollout.env_kwargs": '{"max_steps": 3}',
                                            "rollout.num_tasks": 2, "rollout.group_size": "6", "rollout.env_workers": 1})
    flat = load_config("grpo", overrides={"env_id": "a/B-v0", "env_kwargs": {"max_steps": 3}, "tasks_per_iteration": 2,
                                          "group_size": 6, "env_workers": "1"})
    assert dotted == flat
    assert flat.rollout == EpisodesConfig(env_id="a/B-v0", env_kwargs={"max_steps": 3}, num_tasks=2, group_size=6,
                                          env_workers=1)
    # a partial rollout (dotted key, YAML mapping) keeps the trainer's defaults for the rest
    assert load_config("grpo", overrides={"rollout.group_size": 8}).rollout.num_tasks == 8
    assert load_config("grpo", overrides={"rollout": '{"max_active": 3}'}).rollout == EpisodesConfig(
        num_tasks=8, group_size=4, max_active=3)


def test_the_cli_flags_set_the_rollout_fields() -> None:
    from steppo.cli import build_parser
    from steppo.cli.train import overrides_of

    args = build_parser().parse_args(["train", "--env", "a/B-v0", "--env-arg", "max_steps=3", "--tasks", "2",
                                      "--group-size", "6", "--workers", "1", "--max-active", "5", "--set", "group_size=7"])
    rollout = load_config("grpo", overrides=overrides_of(args)).rollout
    assert rollout == EpisodesConfig(env_id="a/B-v0", env_kwargs={"max_steps": 3}, num_tasks=2, group_size=7,
                                     env_workers=1, max_active=5)  # --set wins over the flag


def test_the_trainer_passes_its_rollout_on_with_each_iterations_seeds(tmp_path: Path) -> None:
    config = load_config("grpo", overrides={"env_kwargs": {"max_steps": 3}, "tasks_per_iteration": 2,
                                            "rollout.max_active": 3, "eval_env_kwargs": {"split": "eval"},
                                            "eval_tasks": 5, "seed": 10, "temperature": 0.7})
    it3 = _rollout_config(config, 3, tmp_path / "r.jsonl")
    assert EpisodesConfig(**it3.model_dump(include=set(EpisodesConfig.model_fields))) == config.rollout
    assert (it3.seed, it3.sampling.seed, it3.sampling.temperature, it3.output, it3.resume, it3.validate_env) == (
        16, 10 * 1_000_003 + 3, 0.7, tmp_path / "r.jsonl", True, False)
    ev = _eval_config(config, tmp_path / "e.jsonl")
    assert (ev.env_id, ev.env_kwargs, ev.num_tasks, ev.group_size, ev.max_active, ev.seed) == (
        config.rollout.env_id, {"max_steps": 3, "split": "eval"}, 5, 1, 3, 1_000_000)
    assert (ev.sampling.temperature, ev.sampling.seed, ev.resume) == (0.0, None, False)
    with pytest.raises(ConfigError, match=r"unknown option sed \(did you mean seed\?\)"):
        RolloutConfig.of(config.rollout, {"sed": 1})


def test_the_rollouts_own_checks_run_before_any_model_loads(tmp_path: Path) -> None:
    config = load_config("grpo", overrides={"temperature": 0.0, "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="group_size=4 with temperature 0 gives identical samples"):
        preflight(config)  # raised before the env is built, and before train() loads a model


def test_yaml_takes_nested_mappings_dotted_keys_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("algo: grpo\npolicy:\n  kv_cache_gib: 1\nsampling.top_p: 0.9\nmax_tokens: 32\nactor_lr: 2.0e-6\n")
    config = load_config("steppo", yaml_path=path, overrides={"sampling.top_p": 0.8})
    assert (config.algo, config.gamma, config.policy.kv_cache_gib, config.sampling.top_p, config.sampling.max_tokens,
            config.actor_lr) == ("grpo", 1.0, 1.0, 0.8, 32, 2e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sampling.temprature": 0.5}, "unknown training option(s) sampling.temprature (did you mean sampling.temperature?)"),
        ({"kv_cache": 1}, "(did you mean kv_cache_gib?)"),
        ({"policy": 5}, "policy is a group of options, not a value (5): set its fields, e.g. --set policy.backend="),
        ({"policy.kv_cache_gib": 1.5}, "kv_cache_gib must be a whole number of GiB >= 1 (got 1.5"),
        ({"sampling.top_p": 2}, "sampling.top_p must be in (0, 1] (got 2): e.g. --set sampling.top_p=1.0"),
        ({"sampling.seed": 3}, "remove sampling.seed (got 3) and set --seed instead"),
        ({"policy.timeout_s": "Infinity"}, "policy.timeout_s must be a finite number, not inf: e.g. --set policy.timeout_s=120.0"),
        ({"amp": "fast"}, "amp: Input should be a valid boolean"),
    ],
)
def test_bad_keys_and_values_are_one_sentence_naming_the_fix(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("steppo", overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_prints_one_line_for_an_unknown_dotted_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "policy.kv_cache=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steppo: error: unknown training option(s) policy.kv_cache (did you mean policy.kv_cache_gib?)")
    assert "\n" not in err


def test_an_old_flat_checkpoint_config_loads_and_round_trips() -> None:
    config = TrainConfig.from_dict(OLD_FLAT)
    assert (config.algo, config.actor_lr, config.policy.model, config.policy.base_urls, config.sampling.max_tokens,
            config.save_every) == ("sft", 2e-05, "smollm2-135m", [], 64, 8)
    assert config.rollout == EpisodesConfig(env_id="steppo/TextWorld-v0", num_tasks=16, group_size=1)
    stored = json.loads(json.dumps(config.to_dict()))  # what state.json holds now
    assert set(stored["policy"]) == set(PolicyConfig.model_fields) and "max_tokens" not in stored
    assert set(stored["rollout"]) == set(EpisodesConfig.model_fields) and "tasks_per_iteration" not in stored
    assert TrainConfig.from_dict(stored) == config



def test_the_docs_name_every_algorithm_in_order() -> None:
    """The algorithm list written out in the docs is checked against the one source (``Algo``)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    row = next(line for line in (docs / "training.md").read_text().splitlines() if line.startswith("| `algo` |"))
    named = row.split("Algorithm:", 1)[1].split(".")[0].replace(" or ", ", ").split(", ")
    assert tuple(n.strip() for n in named) == ALGOS
    help_line = next(line for line in (docs / "cli.md").read_text().splitlines() if line.startswith("  --algo ALGO"))
    assert tuple(help_line.split(None, 2)[2].split(" | ")) == ALGOS


def test_config_model_errors_for_a_missing_field_and_a_validator_name_the_fix(tmp_path: Path) -> None:
    from steppo_agent.gateway.config import GatewayConfig

    with pytest.raises(ConfigError, match=r"^bad value for GatewayConfig: output is required and has no default"):
        GatewayConfig(port=1)
    with pytest.raises(ConfigError, match=r"output .* is a folder: pass a JSONL file path"):
        GatewayConfig(output=tmp_path)
    with pytest.raises(ConfigError, match=r"port must be in \[0, 65535\] \(got -1\): e.g. port=8100"):
        GatewayConfig(output=tmp_path / "gw.jsonl", port=-1)
