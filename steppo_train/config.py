"""The trainer's one config object, with per-algorithm defaults, YAML files and ``key=value`` overrides.

:class:`TrainConfig` holds the trainer's own options and *contains* the rollout's configs: the
episodes it plays (``rollout``: a :class:`~steppo_agent.rollout.EpisodesConfig`), its sampling
settings (``sampling``: a :class:`~steppo_agent.records.SamplingConfig`) and its policy (``policy``:
a :class:`~steppo_agent.policies.PolicyConfig`); the trainer passes them on as they are. A nested
option is set with a dotted key (``--set rollout.group_size=8 policy.kv_cache_gib=1``, or a nested
mapping in YAML); the options that were flat before they moved keep their flat name as an alias
(:data:`FLAT_ALIASES`: ``--set tasks_per_iteration=4 kv_cache_gib=1`` still works, with no warning).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, Field, model_validator

from steppo_agent.policies import PolicyConfig
from steppo_agent.records import SamplingConfig
from steppo_agent.rollout import EpisodesConfig
from steppo_envs.config import ConfigError, did_you_mean
from steppo_envs.config_model import ConfigModel
from steppo_train.lora import LoraConfig

__all__ = ["ALGOS", "ALGO_DEFAULTS", "CRITIC_LEVELS", "FLAT_ALIASES", "NESTED", "ROLLOUT_DEFAULTS", "Algo", "Level",
           "TrainConfig", "canonical_values", "load_config", "option_names"]

Algo = Literal["steppo", "ppo", "grpo", "rloo", "reinforce_pp", "gspo", "gigpo", "sft"]
#: The algorithm names, in order (the one list: CLI help, docs and checks derive from :data:`Algo`).
ALGOS: tuple[str, ...] = get_args(Algo)
Level = Literal["step", "token"]
#: Each critic algorithm's own (advantage_level, ratio_level).
CRITIC_LEVELS: dict[str, tuple[str, str]] = {"steppo": ("step", "step"), "ppo": ("token", "token")}

# The paper's defaults (actor lr 1e-6, critic lr 1e-5, lam 1.0, clip 0.2) and each baseline's usual gamma.
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "steppo": {"gamma": 0.99, "lam": 1.0},
    "ppo": {"gamma": 1.0, "lam": 1.0},
    "grpo": {"gamma": 1.0},
    "rloo": {"gamma": 1.0},
    "reinforce_pp": {"gamma": 0.99},
    "gspo": {"gamma": 1.0, "clip_low": 3e-4, "clip_high": 4e-4},
    "gigpo": {"gamma": 0.95},
    "sft": {"actor_lr": 1e-5, "ppo_epochs": 1},
}
assert tuple(ALGO_DEFAULTS) == ALGOS, "ALGO_DEFAULTS needs one entry per Algo, in order"

#: The trainer's own defaults for ``rollout`` where they differ from :class:`EpisodesConfig`'s (one task,
#: one sample); a partial ``rollout`` mapping (``--set rollout.group_size=8``) is completed from them.
ROLLOUT_DEFAULTS: dict[str, Any] = {"num_tasks": 8, "group_size": 4}

#: Flat names of options that moved into a nested config (accepted everywhere a key is: ``--set``,
#: YAML, old checkpoints' configs) -> their dotted name.
FLAT_ALIASES: dict[str, str] = {
    "env_id": "rollout.env_id",
    "env_kwargs": "rollout.env_kwargs",
    "tasks_per_iteration": "rollout.num_tasks",
    "group_size": "rollout.group_size",
    "env_workers": "rollout.env_workers",
    "temperature": "sampling.temperature",
    "top_p": "sampling.top_p",
    "max_tokens": "sampling.max_tokens",
    "backend": "policy.backend",
    "model": "policy.model",
    "base_urls": "policy.base_urls",
    "max_model_len": "policy.max_model_len",
    "kv_cache_gib": "policy.kv_cache_gib",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
}


class TrainConfig(ConfigModel):
    """Everything one training run needs. Build with :func:`load_config` to get per-algorithm defaults."""

    fix_prefix: ClassVar[str] = "--set "
    fix_hints: ClassVar[dict[str, str]] = {
        "rollout.num_tasks": "pass --tasks 1 or more", "rollout.group_size": "pass --group-size 1 or more",
        "rollout.env_workers": "pass --workers 0 to step envs in this process",
        "rollout.max_active": "pass --max-active 1 or more, or leave it out (all episodes at once)",
    }

    # -- what to train -----------------------------------------------------------------------------
    algo: Algo = Field("steppo", description="Algorithm: " + ", ".join(ALGOS) + ".")
    advantage_level: Level | None = Field(None, description=(
        'Critic algorithms only (steppo, ppo): the timeline GAE runs on. "step" = the critic\'s value at the last '
        "prompt token of each step, GAE over steps, one advantage per step broadcast to its tokens; \"token\" = the "
        "critic's value at every action token, GAE over the concatenated action tokens. None = the algorithm's own "
        "(steppo: step, ppo: token). With ratio_level it gives the paper's ablations: StepPO w/o step-GAE = token + "
        "step, StepPO w/o step-IS = step + token."))
    ratio_level: Level | None = Field(None, description=(
        'Critic algorithms only (steppo, ppo): the importance ratio that is clipped. "step" = one ratio per step, the '
        'geometric mean of its token ratios (losses averaged per step, then over steps); "token" = one ratio per token '
        "(losses averaged over all action tokens). None = the algorithm's own (steppo: step, ppo: token)."))
    critic_model: str | None = Field(None, description="Critic checkpoint (steppo/ppo); defaults to policy.model (the actor).")
    from_trajectories: list[str] = Field(default_factory=list, description=(
        "Train offline from these JSONL trajectory files instead of collecting rollouts."))

    # -- rollout -----------------------------------------------------------------------------------
    rollout: EpisodesConfig = Field(default_factory=lambda: EpisodesConfig(**ROLLOUT_DEFAULTS), description=(
        "The on-policy episodes of each iteration (env, options, tasks, samples per task, env workers); evaluation "
        "plays the same env with eval_env_kwargs, eval_tasks tasks and one sample each."))
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description=(
        "The rollout policy; policy.model is also the actor checkpoint that is trained."))
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description=(
        "Rollout sampling (evaluation is greedy with the same max_tokens); the trainer sets each iteration's "
        "sampling seed from seed, so sampling.seed stays None."))
    weights_dir: str | None = Field(None, description=(
        "Folder for the weight file pushed to OpenAI-compatible servers after each update (backend 'openai'; deleted "
        "once loaded). None = /dev/shm (servers on this machine); servers elsewhere need a folder they can read at "
        "the same path, e.g. on a shared filesystem."))

    async_rollout: bool = Field(False, description=(
        "Overlap rollout with training: the next iteration's batch is sampled (in a background thread, with the "
        "weights the rollout policy has when its collection starts) while the trainer updates on the current one. "
        "Weights are pushed only after the in-flight collection has finished. See max_staleness."))
    max_staleness: int = Field(1, ge=0, description=(
        "With async_rollout: how many policy versions a batch may lag behind the weights it updates (the collector "
        "runs up to this many batches ahead; one collection at a time). 0 = exactly the synchronous loop."))
    behaviour_weight_cap: float = Field(2.0, gt=0.0, description=(
        "Stale batches (async_rollout) are trained with decoupled PPO: the clip is centred on the trainer's "
        "recomputed logprobs and each step (per token for token ratios) is weighted by min(pi_prox / mu, cap), mu "
        "the recorded rollout logprobs; this is the cap. Fresh rows get weight 1."))

    # -- optimisation ------------------------------------------------------------------------------
    iterations: int = Field(10, ge=1, description="Rollout + update iterations.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each batch (K).")
    minibatch_size: int = Field(32, ge=1, description="Step rows per optimizer step.")
    token_budget: int = Field(4096, ge=64, description="Padded tokens per micro-batch (gradient accumulation packs rows up to this).")
    pad_multiple: int = Field(64, ge=1, description=(
        "Micro-batch widths are padded up to a multiple of this many tokens (1 = to the longest row), so a run sees "
        "few distinct tensor shapes: on CPU, oneDNN keeps compiled bf16 kernels per shape, and ever-new shapes made "
        "RSS grow ~0.1 GiB per iteration (benchmarks/bench_shape_memory.py). Padding never changes a row's results; "
        "it costs ~pad_multiple/2 tokens of compute per micro-batch row."))
    actor_lr: float = Field(1e-6, gt=0.0, description="Actor learning rate.")
    critic_lr: float = Field(1e-5, gt=0.0, description="Critic learning rate.")
    gamma: float = Field(0.99, ge=0.0, le=1.0, description="Discount (per step for steppo/gigpo/reinforce_pp, per token for ppo).")
    lam: float = Field(1.0, ge=0.0, le=1.0, description="GAE lambda.")
    clip_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower clip: ratio >= 1 - clip_low.")
    clip_high: float = Field(0.2, gt=0.0, description="Upper clip: ratio <= 1 + clip_high.")
    value_clip: float | None = Field(None, gt=0.0, description=(
        "Clip range of the value loss around the values of the rollout (PPO's pessimistic clipped value loss); None = "
        "plain squared error. Off by default: with 0.2 a critic that starts far from the returns moves at most 0.2 per "
        "iteration and the clip zeroes the gradient of most entries (17-70% in the first iteration of the 2026-12 "
        "coin_collector runs, whose critics never learned: docs/training.md, 'The critic')."))
    value_head_init_std: float = Field(1e-3, ge=0.0, description=(
        "Standard deviation of the critic's values at the start: the value head reads layer-normalised hidden states "
        "(unit scale whatever the backbone's hidden-state norm) with weights N(0, (this / sqrt(hidden))^2) and bias 0, "
        "so V starts near 0 for every model. Small but not 0, so the backbone gets a gradient from the first step."))
    critic_warmup: int = Field(0, ge=0, description=(
        "Critic warm-up: the first N iterations update only the critic (the actor and the rollout weights stay as "
        "they are), so the advantages of the first actor update come from a critic that has seen N batches."))
    kl_coef: float = Field(0.0, ge=0.0, description="Weight of the k3 KL to the reference (initial) policy; 0 = no reference model.")
    entropy_coef: float = Field(0.0, ge=0.0, description="Weight of the entropy bonus.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description=(
        "Parameter dtype. Pure bfloat16 weights lose updates smaller than ~1/256 of a weight (small learning rates "
        "then do nothing): prefer float32 weights with amp."))
    amp: bool | Literal["auto"] = Field("auto", description=(
        'bfloat16 autocast for forward and backward passes over float32 weights and optimizer state. "auto" = on '
        "where bf16 is native (a CUDA GPU with bf16; a CPU with AMX or AVX512-BF16: 1.7x faster there) and off "
        "elsewhere (on an AVX2-only CPU bf16 is ~30x slower); the choice is printed once. true forces it (with a "
        "warning where bf16 is not native), false keeps float32."))
    trainable_layers: int | None = Field(None, ge=1, description=(
        "Train only the top N transformer blocks + final norm of the actor and the critic (embeddings and LM head "
        "frozen); None = all weights. Cuts the backward pass and optimizer memory on small machines."))
    lora: LoraConfig = Field(default_factory=LoraConfig, description=(
        "LoRA adapters (PEFT) on the actor (and the critic, lora.critic) instead of full fine-tuning: lora.rank > 0 "
        "freezes the base weights; the rollout engine gets the merged weights; checkpoints keep the adapters."))
    trim_memory: bool = Field(True, description=(
        "Keep RSS flat over a run (glibc): the heap's free pages go back to the OS (malloc_trim) after each phase and "
        "each optimizer step; without it RSS and its peak grow every iteration (see steppo_train/memory.py). "
        "Per-phase RSS is logged as memory/rss_<phase>_gib either way."))
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    parallel: Literal["none", "ddp", "fsdp"] = Field("none", description=(
        "Training across processes launched by torchrun (docs/scale-out.md). 'none' = one process (torchrun with "
        "WORLD_SIZE > 1 is then an error naming the fix); 'ddp' = torch DistributedDataParallel, every rank holds the "
        "whole actor, critic and optimizer state; 'fsdp' = torch FSDP2 (fully_shard per decoder block): each rank "
        "holds 1/N of the weights, gradients and AdamW state, full weights are gathered only to push them to the "
        "rollout engine and to write checkpoints (same format in every mode, so a run resumes under any). Each rank "
        "trains on its share of every minibatch's micro-batches; the reference model (kl_coef > 0) stays whole."))
    whiten_advantages: bool = Field(True, description=(
        "Critic algorithms: whiten advantages over all step rows (token rows for token GAE) of the batch (StepPO does), "
        "with the floor whiten_floor."))
    whiten_floor: float = Field(0.1, ge=0.0, description=(
        "Whitening floor: the whitened advantages are multiplied by min(1, std(G) / whiten_floor), G the Monte-Carlo "
        "returns-to-go of the batch's steps, so a batch whose returns barely vary (no reward at all: std 0) gets small "
        "advantages (exactly 0) instead of critic noise rescaled to unit size. 0 = plain whitening. 0.1 is below the "
        "spread of any batch with one success in 64 episodes of 15 steps (0/1 rewards: std 0.12)."))
    measure_update: bool = Field(True, description=(
        "After each update, one no-grad pass of the actor (and the critic) over the batch measures how far the update "
        "moved: update/approx_kl and update/clip_fraction (ratios outside the clip range) against the old logprobs, "
        "and critic/explained_variance_after. Costs about one old-logprob pass per iteration."))
    truncated_bootstrap: Literal["zero", "last_value"] = Field("zero", description=(
        "Value of the state after a truncated episode: 'zero' (the step limit is part of the task and the observation "
        "shows the steps left, so nothing follows) or 'last_value' (Gymnasium's time-limit view)."))

    # -- bookkeeping -------------------------------------------------------------------------------
    seed: int = Field(0, ge=0, description=(
        "Seed for torch and the task seeds (iteration i uses reset seeds from seed + i * rollout.num_tasks)."))
    output_dir: str = Field("runs/train", description="Where metrics.jsonl, plots and checkpoints go.")
    save_every: int = Field(5, ge=1, description="Checkpoint every N iterations (and at the end); the newest two are kept.")
    eval_every: int = Field(0, ge=0, description="Greedy evaluation every N iterations (0 = never).")
    eval_env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Env options for evaluation (e.g. the held-out pool).")
    eval_tasks: int = Field(16, ge=1, description="Tasks per evaluation.")
    tensorboard: bool = Field(False, description="Also write TensorBoard event files (needs the tensorboard extra).")
    resume: bool = Field(False, description=(
        "Continue from the latest checkpoint in output_dir (metrics rows and rollouts written after it are removed "
        "first; with no checkpoint: start from iteration 0)."))

    @property
    def uses_critic(self) -> bool:
        return self.algo in CRITIC_LEVELS

    @property
    def step_advantages(self) -> bool:
        """True when GAE runs over steps with the critic at the last prompt token (see ``advantage_level``)."""
        own = CRITIC_LEVELS.get(self.algo, ("", ""))[0]
        return (self.advantage_level or own) == "step"

    @property
    def step_ratio(self) -> bool:
        """True when the clipped ratio is one per step (see ``ratio_level``)."""
        own = CRITIC_LEVELS.get(self.algo, ("", ""))[1]
        return (self.ratio_level or own) == "step"

    @model_validator(mode="before")
    @classmethod
    def _trainer_rollout_defaults(cls, data: Any) -> Any:
        """A ``rollout`` given as a mapping starts from the trainer's defaults (:data:`ROLLOUT_DEFAULTS`)."""
        if isinstance(data, Mapping) and isinstance(data.get("rollout"), Mapping):
            data = {**data, "rollout": {**ROLLOUT_DEFAULTS, **data["rollout"]}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        """Checks that involve several fields; each message names the fix."""
        if self.lora.rank > 0 and self.parallel == "fsdp":
            raise ConfigError("LoRA (lora.rank > 0) is not sharded yet: use --set parallel=ddp (the adapters and their "
                              "optimizer state are small; every rank holds the frozen base) or lora.rank=0 with fsdp.")
        if not self.uses_critic and (self.advantage_level or self.ratio_level):
            raise ConfigError(f"advantage_level / ratio_level apply to steppo and ppo only, not {self.algo}: remove them, "
                              "or use --algo steppo (e.g. --set advantage_level=token for StepPO w/o step-GAE).")
        if self.algo in ("grpo", "rloo", "gigpo") and self.rollout.group_size < 2 and not self.from_trajectories:
            raise ConfigError(f"{self.algo} needs group_size >= 2 (samples per task): pass --group-size 4.")
        for name, value in (("sampling.temperature", self.sampling.temperature), ("sampling.top_p", self.sampling.top_p)):
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, not {value!r}: e.g. --set {name}=1.0.")
        if self.sampling.seed is not None:
            raise ConfigError("the trainer derives each iteration's sampling seed from seed: remove sampling.seed "
                              f"(got {self.sampling.seed}) and set --seed instead.")
        if self.sampling.max_tokens >= self.policy.max_model_len:
            raise ConfigError(f"max_tokens ({self.sampling.max_tokens}) must be smaller than max_model_len "
                              f"({self.policy.max_model_len}): raise --set max_model_len=... or lower --max-tokens.")
        if self.amp is True and self.dtype == "bfloat16":
            raise ConfigError("amp keeps float32 weights and computes in bfloat16: use dtype=float32 with amp=true.")
        if self.policy.backend == "openai" and "base_urls" not in self.policy.model_fields_set:
            raise ConfigError("backend 'openai' needs at least one server: pass --base-url http://127.0.0.1:8000.")
        return self

    # pydantic v1's deprecated classmethod ``BaseModel.validate`` has this name; ours checks this instance
    def validate(self) -> TrainConfig:  # type: ignore[override]  # see the comment above
        """Check the config again (after fields were assigned); raise :class:`ConfigError` naming the fix."""
        return self.checked()

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (nested configs as mappings): what checkpoints store."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from :meth:`to_dict`'s output, or from an older checkpoint's flat mapping."""
        return cls.build(nest(canonical_values(values)))


# -- keys: flat, dotted, aliases -------------------------------------------------------------------
#: The nested configs of :class:`TrainConfig` (field name -> model), read from its fields.
NESTED: dict[str, type[BaseModel]] = {
    name: f.annotation for name, f in TrainConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
assert set(NESTED) == {"rollout", "sampling", "policy", "lora"}, NESTED


def option_names() -> set[str]:
    """Every key :func:`load_config` accepts: trainer options, ``group.field`` of the nested configs, aliases."""
    names = {n for n in TrainConfig.model_fields if n not in NESTED}
    names |= {f"{group}.{n}" for group, model in NESTED.items() for n in model.model_fields}
    return names | set(FLAT_ALIASES)


def _flat_items(values: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        key = str(key)
        if key in NESTED:
            if isinstance(value, BaseModel):
                value = value.model_dump()
            if not isinstance(value, Mapping):
                example = next(iter(NESTED[key].model_fields))
                raise ConfigError(f"{key} is a group of options, not a value ({value!r}): set its fields, "
                                  f"e.g. --set {key}.{example}=... .")
            yield from ((f"{key}.{k}", v) for k, v in value.items())
        else:
            yield FLAT_ALIASES.get(key, key), value


def canonical_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with nested mappings flattened to dotted keys and aliases resolved; unknown keys are
    a :class:`ConfigError` naming close matches."""
    out = dict(_flat_items(values))
    names = option_names()
    unknown = sorted(set(out) - names)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)}{did_you_mean(unknown, names)}: "
                          f"valid options are {', '.join(sorted(names - set(FLAT_ALIASES)))} (flat aliases: "
                          f"{', '.join(sorted(FLAT_ALIASES))}).")
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested mappings (``{"policy.model": m}`` -> ``{"policy": {"model": m}}``)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        group, dot, name = key.partition(".")
        if dot:
            out.setdefault(group, {})[name] = value
        else:
            out[key] = value
    return out


def _coerce(raw: Any) -> Any:
    """Parse a CLI value (JSON first, so lists/dicts/numbers work; otherwise the string itself)."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (or absurdly nested): the string itself
            return raw
    return raw


def _read_yaml(yaml_path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
    except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {str(yaml_path)!r} ({exc}): pass a readable YAML mapping.") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(yaml_path)!r} must hold a mapping of field: value.")
    return loaded


def load_config(algo: str = "steppo", *, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults for ``algo`` ← YAML file ← ``overrides``. Keys are trainer options, dotted options of the
    nested configs (``policy.kv_cache_gib``) or flat aliases (:data:`FLAT_ALIASES`); unknown keys are
    errors naming close matches."""
    if algo not in ALGOS:
        raise ConfigError(f"unknown algo {algo!r}: choose one of {', '.join(ALGOS)}.")
    values: dict[str, Any] = {"algo": algo, **ALGO_DEFAULTS[algo]}
    if yaml_path is not None:
        loaded = canonical_values(_read_yaml(yaml_path))
        if "algo" in loaded and loaded["algo"] != algo:
            values.update(ALGO_DEFAULTS.get(str(loaded["algo"]), {}))
        values.update(loaded)
    values.update(canonical_values({k: _coerce(v) for k, v in (overrides or {}).items()}))
    return TrainConfig.build(nest(values))
