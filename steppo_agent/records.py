"""Token-exact step trajectory records (pydantic; they cross process boundaries and live in JSONL files).

A :class:`Trajectory` is one episode; each :class:`Step` holds exactly what the policy saw and sampled:
the prompt token ids (rendered from the observation by :mod:`steppo_agent.prompting`), the response
token ids, their sampled logprobs, and the environment's reward / terminated / truncated / info.
Training consumes these ids directly; text is kept for people, never re-tokenised.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SCHEMA_VERSION", "PolicyInfo", "SamplingConfig", "Step", "Trajectory"]

SCHEMA_VERSION: Final = 1  # Final: its type is Literal[1], the field's type


class SamplingConfig(BaseModel):
    """Sampling settings for one policy call (one step of every active episode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=1.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(default=64, ge=1, description="Maximum response tokens per step (rollout, eval and train default).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (the stop string is kept in the text).")
    seed: int | None = Field(default=None, description="Base seed; sample i of a batch uses seed + i (never one seed for all).")


class PolicyInfo(BaseModel):
    """Which policy produced a trajectory."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(description="'vllm', 'openai', 'hf', 'expert', 'scripted', ...")
    model: str = Field(description="Model name or path as given by the user.")
    version: int = Field(default=0, description="Weight version: incremented by every trainer push.")


class Step(BaseModel):
    """One agent decision: the state shown, the response sampled, and the environment's answer."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="0-based step index within the episode.")
    observation: str = Field(description="The rendered state (user message) the prompt was built from.")
    prompt_ids: list[int] = Field(description="Exact prompt token ids sent to the policy.")
    response_ids: list[int] = Field(description="Exact sampled response token ids (including a sampled EOS).")
    response_logprobs: list[float] = Field(description="Sampled-token logprobs, one per response id.")
    response_text: str = Field(description="Detokenised response (for people; training uses the ids).")
    finish_reason: str = Field(default="stop", description="'stop' (EOS / stop string), 'length', or 'error'.")
    action: dict[str, Any] | None = Field(default=None, description="The parsed action (ParsedAction.to_dict()).")
    valid: bool = Field(default=True, description="Whether the environment accepted the action.")
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = Field(default_factory=dict, description="The env's info after this step (minus bulky static keys).")
    policy_version: int | None = Field(default=None, description=(
        "The policy's weight version (its `version`) when this step was sampled; None in records written before "
        "the field existed (or by writers that do not know it). The trainer's staleness is its own version minus this."))


class Trajectory(BaseModel):
    """One episode, as written to a JSONL line."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(description="Unique id: '{task_seed}-{sample}' style, stable for --resume.")
    env_id: str
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    task_id: str = Field(description="The env's task id (info['task_id']).")
    seed: int = Field(description="The reset seed (shared by all samples of a group).")
    group_id: str = Field(description="Episodes with the same group_id share a task (for GRPO/RLOO/GiGPO).")
    system_prompt: str = Field(default="", description="The system prompt (constant within an episode).")
    tools: list[dict[str, Any]] = Field(default_factory=list, description="Tool schemas given to the chat template.")
    policy: PolicyInfo
    sampling: SamplingConfig
    steps: list[Step] = Field(default_factory=list)
    return_: float = Field(default=0.0, alias="return", description="Sum of step rewards.")
    success: bool | None = None
    terminated: bool = False
    truncated: bool = False
    truncation_reason: str | None = Field(default=None, description=(
        "None unless truncated. The rollout engine writes 'max_steps' (the env truncated the episode), "
        "'context_length' (the next prompt + max_tokens did not fit the policy's max_model_len; no step "
        "recorded for that prompt) "
        "or 'env_error' (the env raised; a warning names the error); another writer of records names its own."))
    metrics: dict[str, float] = Field(default_factory=dict, description="Final task metrics (info['metrics']).")

    def to_json_line(self) -> str:
        return self.model_dump_json(by_alias=True)
