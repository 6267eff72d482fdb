"""Gateway settings (a :class:`~steppo_envs.config_model.ConfigModel`, like every agent config): where records go, how requests are batched, when episodes time out, how large a request may be."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from steppo_envs.config_model import ConfigModel

__all__ = ["BODY_BYTES_PER_TOKEN", "MIN_BODY_BYTES", "GatewayConfig", "default_max_body_bytes"]

#: Request-body bytes allowed per token of the model's context (``max_body_bytes=None``): a body that
#: fits the context is far smaller (a token is at most ~80 bytes of text, JSON escaping at most 6x).
BODY_BYTES_PER_TOKEN = 1024
#: The smallest default body limit, whatever the context (1 MiB).
MIN_BODY_BYTES = 1 << 20


def default_max_body_bytes(max_model_len: int) -> int:
    """The body limit when ``max_body_bytes`` is None: 1 KiB per context token, at least 1 MiB
    (2 MiB for the default 2048-token context)."""
    return max(MIN_BODY_BYTES, BODY_BYTES_PER_TOKEN * max_model_len)


class GatewayConfig(ConfigModel):
    """How the step gateway serves, batches and records (the policy is built and passed separately)."""

    output: Path = Field(description="JSONL file that receives each ended episode (appended, flushed, fsync'ed).")
    served_model_name: str | None = Field(
        None, description="Model name shown by GET /v1/models and accepted in requests; None = the policy's model.")
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 exposes the gateway to the network).")
    port: int = Field(8100, ge=0, le=65535, description="TCP port; 0 = any free port.")
    batch_window_s: float = Field(
        0.005, ge=0.0, le=1.0,
        description="How long the batcher waits after each queued request for another to join the same policy call "
                    "(a burst of concurrent clients becomes one call).")
    batch_max_wait_s: float = Field(
        0.25, ge=0.0, le=10.0,
        description="Longest a policy call waits for its batch to fill, counted from its first request (bounds the "
                    "delay a steady stream of requests adds).")
    max_batch: int = Field(64, ge=1, description="Most requests in one policy.generate call.")
    default_max_tokens: int = Field(
        256, ge=1, description="Response tokens when a request sets neither max_tokens nor max_completion_tokens "
                               "(capped by the room left in the context).")
    idle_timeout_s: float = Field(
        600.0, gt=0.0, description="An open episode without a request for this long is written as truncated "
                                   "(truncation_reason='idle_timeout').")
    max_body_bytes: int | None = Field(
        None, ge=1024,
        description="Largest request body in bytes; a larger one is refused with 413 before it is read or parsed. "
                    "None = 1 KiB per token of the model's context, at least 1 MiB (2 MiB for 2048 tokens): a "
                    "request that fits the context is far smaller.")
    env_id: str = Field("gateway", description="env_id stored on every record (names the agent in `steppo inspect`).")

    @field_validator("output")
    @classmethod
    def _output_is_a_file(cls, value: Path) -> Path:
        if value.exists() and value.is_dir():
            raise ValueError(f"output {value} is a folder: pass a JSONL file path such as runs/gw.jsonl.")
        return value
