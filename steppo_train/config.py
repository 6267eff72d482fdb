"""The trainer's one config object, with per-algorithm defaults, YAML files and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from steppo_envs.config import ConfigError, did_you_mean, validate_dataclass

__all__ = ["ALGOS", "ALGO_DEFAULTS", "CRITIC_LEVELS", "Algo", "Level", "TrainConfig", "load_config"]

Algo = Literal["steppo", "ppo", "grpo", "rloo", "reinforce_pp", "gspo", "gigpo", "sft"]
ALGOS: tuple[str, ...] = ("steppo", "ppo", "grpo", "rloo", "reinforce_pp", "gspo", "gigpo", "sft")
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


@dataclass
class TrainConfig:
    """Everything one training run needs. Build with :func:`load_config` to get per-algorithm defaults."""

    # -- what to train -----------------------------------------------------------------------------
    algo: Algo = "steppo"
    """Algorithm: steppo, ppo, grpo, rloo, reinforce_pp, gspo, gigpo or sft."""
    advantage_level: Level | None = None
    """Critic algorithms only (steppo, ppo): the timeline GAE runs on. "step" = the critic's value at
    the last prompt token of each step, GAE over steps, one advantage per step broadcast to its
    tokens; "token" = the critic's value at every action token, GAE over the concatenated action
    tokens. None = the algorithm's own (steppo: step, ppo: token). With ``ratio_level`` it gives the
    paper's ablations: StepPO w/o step-GAE = token + step, StepPO w/o step-IS = step + token."""
    ratio_level: Level | None = None
    """Critic algorithms only (steppo, ppo): the importance ratio that is clipped. "step" = one ratio
    per step, the geometric mean of its token ratios (losses averaged per step, then over steps);
    "token" = one ratio per token (losses averaged over all action tokens). None = the algorithm's
    own (steppo: step, ppo: token)."""
    model: str = "smollm2-135m"
    """Actor checkpoint: 'smollm2-135m' (the bundled default), an HF model id or a local folder."""
    critic_model: str | None = None
    """Critic checkpoint (steppo/ppo); defaults to ``model``."""
    env_id: str = "steppo/TextWorld-v0"
    """Environment for on-policy rollouts."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options passed to ``gymnasium.make``."""
    from_trajectories: list[str] = field(default_factory=list)
    """Train offline from these JSONL trajectory files instead of collecting rollouts."""

    # -- rollout -----------------------------------------------------------------------------------
    backend: Literal["vllm", "hf", "openai"] = "vllm"
    """Rollout policy backend."""
    base_urls: list[str] = field(default_factory=list)
    """OpenAI-compatible servers for backend='openai' (several = scale-out)."""
    tasks_per_iteration: int = 8
    """Distinct tasks (reset seeds) per iteration."""
    group_size: int = 4
    """Samples per task (>1 for grpo/rloo/gigpo)."""
    temperature: float = 1.0
    """Rollout sampling temperature."""
    top_p: float = 1.0
    """Rollout nucleus mass."""
    max_tokens: int = 64
    """Maximum response tokens per step."""
    max_model_len: int = 2048
    """Prompt + response token limit of the rollout engine."""
    kv_cache_gib: float = 2.0
    """KV-cache GiB of the in-process vLLM rollout engine on CPU (part of the process's memory): fp32
    SmolLM2-135M needs ~46 KB per token, so 1 GiB holds ~23k prompt+response tokens at once (more
    requests wait their turn)."""
    env_workers: int = 0
    """Worker processes for env steps (0 = in-process)."""
    weights_dir: str | None = None
    """Folder for the weight file pushed to OpenAI-compatible servers after each update (backend
    'openai'; deleted once loaded). None = /dev/shm (servers on this machine); servers elsewhere need a
    folder they can read at the same path, e.g. on a shared filesystem."""

    # -- optimisation ------------------------------------------------------------------------------
    iterations: int = 10
    """Rollout + update iterations."""
    ppo_epochs: int = 1
    """Passes over each batch (K)."""
    minibatch_size: int = 32
    """Step rows per optimizer step."""
    token_budget: int = 4096
    """Padded tokens per micro-batch (gradient accumulation packs rows up to this)."""
    pad_multiple: int = 64
    """Micro-batch widths are padded up to a multiple of this many tokens (1 = to the longest row), so a
    run sees few distinct tensor shapes: on CPU, oneDNN keeps compiled bf16 kernels per shape, and
    ever-new shapes made RSS grow ~0.1 GiB per iteration (benchmarks/bench_shape_memory.py). Padding
    never changes a row's results; it costs ~pad_multiple/2 tokens of compute per micro-batch row."""
    actor_lr: float = 1e-6
    """Actor learning rate."""
    critic_lr: float = 1e-5
    """Critic learning rate."""
    gamma: float = 0.99
    """Discount (per step for steppo/gigpo/reinforce_pp, per token for ppo)."""
    lam: float = 1.0
    """GAE lambda."""
    clip_low: float = 0.2
    """Lower clip: ratio >= 1 - clip_low."""
    clip_high: float = 0.2
    """Upper clip: ratio <= 1 + clip_high."""
    value_clip: float = 0.2
    """Clip range of the value loss."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the reference (initial) policy; 0 = no reference model."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype. Pure bfloat16 weights lose updates smaller than ~1/256 of a weight (small
    learning rates then do nothing): prefer float32 weights with ``amp``."""
    amp: bool | Literal["auto"] = "auto"
    """bfloat16 autocast for forward and backward passes over float32 weights and optimizer state.
    "auto" (default) = on where bf16 is native (a CUDA GPU with bf16; a CPU with AMX or AVX512-BF16:
    1.7x faster there) and off elsewhere (on an AVX2-only CPU bf16 is ~30x slower); the choice is
    printed once. true forces it (with a warning where bf16 is not native), false keeps float32."""
    trainable_layers: int | None = None
    """Train only the top N transformer blocks + final norm of the actor and the critic (embeddings and
    LM head frozen); None = all weights. Cuts the backward pass and optimizer memory on small machines."""
    trim_memory: bool = True
    """Keep RSS flat over a run (glibc): the heap's free pages go back to the OS (malloc_trim) after
    each phase and each optimizer step; without it RSS and its peak grow every iteration (see
    steppo_train/memory.py). Per-phase RSS is logged as memory/rss_<phase>_gib either way."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""
    whiten_advantages: bool = True
    """Whiten advantages over all step rows of the batch (StepPO does)."""
    truncated_bootstrap: Literal["zero", "last_value"] = "zero"
    """Value of the state after a truncated episode: 'zero' (the step limit is part of the task and the
    observation shows the steps left, so nothing follows) or 'last_value' (Gymnasium's time-limit view)."""

    # -- bookkeeping -------------------------------------------------------------------------------
    seed: int = 0
    """Seed for torch and the task seeds (iteration i uses seed + i * tasks_per_iteration)."""
    output_dir: str = "runs/train"
    """Where metrics.jsonl, plots and checkpoints go."""
    save_every: int = 5
    """Checkpoint every N iterations (and at the end); the newest two are kept."""
    eval_every: int = 0
    """Greedy evaluation every N iterations (0 = never)."""
    eval_env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env options for evaluation (e.g. the held-out pool)."""
    eval_tasks: int = 16
    """Tasks per evaluation."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the `tensorboard` extra)."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir (metrics rows and rollouts written after it are
    removed first; with no checkpoint: start from iteration 0)."""

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

    def validate(self) -> TrainConfig:
        """Range and cross-field checks; raise :class:`ConfigError` (a ``ValueError``) naming the fix."""
        _check_ranges(self)
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown algo {self.algo!r}: choose one of {', '.join(ALGOS)}.")
        if not self.uses_critic and (self.advantage_level or self.ratio_level):
            raise ConfigError(f"advantage_level / ratio_level apply to steppo and ppo only, not {self.algo}: "
                              "remove them, or use --algo steppo (e.g. --set advantage_level=token for StepPO w/o step-GAE).")
        if self.algo in ("grpo", "rloo", "gigpo") and self.group_size < 2 and not self.from_trajectories:
            raise ConfigError(f"{self.algo} needs group_size >= 2 (samples per task): pass --group-size 4.")
        if not 0 <= self.clip_low < 1 or self.clip_high <= 0:
            raise ConfigError("clip_low must be in [0, 1) and clip_high > 0: e.g. --set clip_low=0.2 clip_high=0.28.")
        if self.pad_multiple < 1:
            raise ConfigError("pad_multiple must be >= 1 (1 = no rounding): e.g. --set pad_multiple=64.")
        if self.minibatch_size < 1 or self.token_budget < 64:
            raise ConfigError("minibatch_size must be >= 1 and token_budget >= 64: e.g. --set minibatch_size=32 token_budget=4096.")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError("gamma and lam must be in [0, 1]: e.g. --set gamma=0.99 lam=1.0.")
        if self.max_tokens >= self.max_model_len:
            raise ConfigError("max_tokens must be smaller than max_model_len: raise --set max_model_len=... .")
        if self.amp not in (True, False, "auto"):
            raise ConfigError(f"amp must be true, false or \"auto\", not {self.amp!r}: e.g. --set amp=auto.")
        if self.amp is True and self.dtype == "bfloat16":
            raise ConfigError("amp keeps float32 weights and computes in bfloat16: use dtype=float32 with amp=true.")
        if self.kv_cache_gib < 1 or self.kv_cache_gib != int(self.kv_cache_gib):
            raise ConfigError("kv_cache_gib must be a whole number of GiB >= 1 (vLLM's CPU backend takes whole GiB): "
                             "e.g. --set kv_cache_gib=1.")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ConfigError("trainable_layers must be >= 1 (or unset to train every weight).")
        if self.backend == "openai" and not self.base_urls:
            raise ConfigError("backend 'openai' needs at least one server: pass --base-url http://127.0.0.1:8000.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Numeric fields with a lower bound: name -> (bound, whether the bound itself is allowed, an example value).
#: Fields with other ranges (gamma, lam, clip_*, top_p, kv_cache_gib, ...) are checked in ``validate``.
_LOWER_BOUNDS: dict[str, tuple[float, bool, str]] = {
    "tasks_per_iteration": (1, True, "8"),
    "group_size": (1, True, "4"),
    "temperature": (0, True, "1.0"),
    "max_tokens": (1, True, "64"),
    "max_model_len": (2, True, "2048"),
    "env_workers": (0, True, "0"),
    "iterations": (1, True, "10"),
    "ppo_epochs": (1, True, "1"),
    "actor_lr": (0, False, "1e-6"),
    "critic_lr": (0, False, "1e-5"),
    "value_clip": (0, False, "0.2"),
    "kl_coef": (0, True, "0.0"),
    "entropy_coef": (0, True, "0.0"),
    "max_grad_norm": (0, False, "1.0"),
    "weight_decay": (0, True, "0.0"),
    "seed": (0, True, "0"),
    "save_every": (1, True, "5"),
    "eval_every": (0, True, "0"),
    "eval_tasks": (1, True, "16"),
}


def _check_ranges(config: TrainConfig) -> None:
    """Every float finite, every bounded number in range (a ``--set iterations=-3`` fails here, before
    anything loads)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, not {value!r}: e.g. --set {f.name}={f.default!r}.")
    for name, (bound, inclusive, example) in _LOWER_BOUNDS.items():
        value = getattr(config, name)
        if value < bound or (value == bound and not inclusive):
            relation = ">=" if inclusive else ">"
            raise ConfigError(f"{name} must be {relation} {bound:g} (got {value!r}): e.g. --set {name}={example}.")
    if not 0 < config.top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (got {config.top_p!r}): e.g. --set top_p=1.0.")


def _coerce(raw: Any) -> Any:
    """Parse a CLI/YAML value for field ``name`` (JSON first, so lists/dicts/numbers work)."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (or absurdly nested): the string itself
            return raw
    return raw


def load_config(algo: str = "steppo", *, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults for ``algo`` ← YAML file ← ``overrides`` (unknown keys are errors naming valid ones)."""
    if algo not in ALGOS:
        raise ConfigError(f"unknown algo {algo!r}: choose one of {', '.join(ALGOS)}.")
    values: dict[str, Any] = {"algo": algo, **ALGO_DEFAULTS[algo]}
    if yaml_path is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {str(yaml_path)!r} ({exc}): pass a readable YAML mapping.") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(yaml_path)!r} must hold a mapping of field: value.")
        if "algo" in loaded and loaded["algo"] != algo:
            values.update(ALGO_DEFAULTS.get(str(loaded["algo"]), {}))
        values.update(loaded)
    values.update({k: _coerce(v) for k, v in (overrides or {}).items()})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)}{did_you_mean(unknown, names)}: "
                          f"valid options are {', '.join(sorted(names))}.")
    return validate_dataclass(TrainConfig, values).validate()
