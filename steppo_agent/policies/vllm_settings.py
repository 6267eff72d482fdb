"""vLLM engine settings shared by the in-process policy and the local OpenAI-compatible server.

* :func:`cpu_scheduler_settings`: the scheduler settings that keep per-request seeds working on
  the CPU backend (chunked prefill off, a step budget that holds the longest prompt).
* :func:`quiet_vllm_environment`: vLLM logs at WARNING unless the user asks for more
  (``VLLM_LOGGING_LEVEL``, or ``STEPPO_LOG_LEVEL`` / ``steppo --log-level`` for both), without the
  start-up notices nobody can act on (:data:`BENIGN_VLLM_NOTICES`).
* :func:`vllm_is_cpu_build`: whether the installed vLLM is the CPU build (without importing it).
* :func:`use_torch_linear`: vLLM's CPU dense layers through torch's ``F.linear`` instead of vLLM's
  per-batch-size oneDNN kernels, whose cache kept growing over a training run.
* :func:`vllm_plugin`: the same switch in the processes of a vLLM server that steppo starts (a vLLM
  general plugin, read from :data:`CPU_LINEAR_ENV`; it does nothing where that variable is unset).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

__all__ = [
    "BENIGN_VLLM_NOTICES", "CPU_LINEAR_ENV", "CPU_LINEAR_PLUGIN", "BenignNoticeFilter", "cpu_scheduler_settings",
    "quiet_vllm_environment", "use_torch_linear", "vllm_is_cpu_build", "vllm_plugin",
]

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


_ONEDNN_SUPPORTED: bool | None = None


def use_torch_linear(enabled: bool = True) -> bool:
    """Make vLLM's CPU backend run dense layers with torch's ``F.linear`` (``enabled``) or with its own
    oneDNN GEMM handlers (vLLM's default); applies to models loaded afterwards in this process.
    Returns whether the torch path is now in use.

    vLLM's oneDNN handlers compile and keep a kernel per batch size (tokens in an engine step). A
    rollout meets ever-new sizes, and the live heap grew ~5 MiB per 80 requests with no end in sight
    (flat when the same batch was sent again); with ``F.linear`` (MKL on CPU) it stayed flat at the
    same speed (``benchmarks/bench_vllm_linear.py``). A vLLM without the switch is left as it is.
    """
    global _ONEDNN_SUPPORTED
    import vllm._custom_ops as ops

    if not hasattr(ops, "_supports_onednn"):
        return False
    if _ONEDNN_SUPPORTED is None:
        _ONEDNN_SUPPORTED = bool(ops._supports_onednn)
    ops._supports_onednn = _ONEDNN_SUPPORTED and not enabled
    return not ops._supports_onednn


CPU_LINEAR_ENV = "STEPPO_VLLM_CPU_LINEAR"
CPU_LINEAR_PLUGIN = "steppo_cpu_linear"  # the entry point's name in pyproject.toml (vllm.general_plugins)


def vllm_plugin() -> None:
    """vLLM general plugin (entry point ``steppo_cpu_linear`` of group ``vllm.general_plugins``):
    apply :func:`use_torch_linear` in every process of a vLLM server that steppo starts.

    vLLM calls general plugins in each process it runs (API server, engine core, workers) before a
    model loads. Without :data:`CPU_LINEAR_ENV` (``"torch"`` or ``"onednn"``, set by
    :func:`~steppo_agent.policies.server.start_vllm_server`) it does nothing, so other vLLM
    processes of the same environment are left as they are.
    """
    choice = os.environ.get(CPU_LINEAR_ENV)
    if not choice:
        return
    if choice not in ("torch", "onednn"):
        raise ValueError(f"{CPU_LINEAR_ENV}={choice!r} is not a cpu_linear choice: set it to 'torch' or 'onednn', "
                         "or unset it to keep vLLM's default.")
    use_torch_linear(choice == "torch")


def vllm_is_cpu_build() -> bool:
    """True when the installed vLLM distribution is ``vllm-cpu`` (checked without importing vLLM)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class BenignNoticeFilter(logging.Filter):
    """Drops :data:`BENIGN_VLLM_NOTICES` below ERROR unless vLLM logs at INFO or lower."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING or logging.getLogger("vllm").isEnabledFor(logging.INFO):
            return True
        return not record.getMessage().startswith(BENIGN_VLLM_NOTICES)


def _logging_config_file(level: str, stream: str) -> str:
    """A logging config for vLLM (``VLLM_LOGGING_CONFIG_PATH``): vLLM's handler at ``level`` with
    :class:`BenignNoticeFilter`. vLLM re-applies its logging config when an engine starts, so a
    filter added to its handlers by hand would be dropped; one named in the config stays."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"steppo_benign": {"()": f"{__name__}.BenignNoticeFilter"}},
        "formatters": {"vllm": {"format": "vllm %(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": level,
                              "stream": stream, "filters": ["steppo_benign"]}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }
    text = json.dumps(config, indent=1, sort_keys=True)
    path = Path(tempfile.gettempdir()) / f"steppo-vllm-logging-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return str(path)


def quiet_vllm_environment(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Set vLLM's log level in ``env`` (``os.environ`` or a server's environment) and return it.

    ``VLLM_LOGGING_LEVEL`` wins when the user set it; else ``STEPPO_LOG_LEVEL`` (what
    ``steppo --log-level`` sets); else WARNING, so engine config dumps and per-request INFO lines stay
    out of the main job's output while warnings and errors still show, minus the notices in
    :data:`BENIGN_VLLM_NOTICES` (through a logging config file, ``VLLM_LOGGING_CONFIG_PATH``, unless
    the user set one). When vLLM is already imported in this process its logger is set to the same level.
    """
    level = env.get("VLLM_LOGGING_LEVEL") or env.get("STEPPO_LOG_LEVEL", "WARNING").upper()
    env["VLLM_LOGGING_LEVEL"] = level
    if "VLLM_LOGGING_CONFIG_PATH" not in env and env.get("VLLM_CONFIGURE_LOGGING", "1") != "0":
        env["VLLM_LOGGING_CONFIG_PATH"] = _logging_config_file(level, env.get("VLLM_LOGGING_STREAM", "ext://sys.stdout"))
    if env is os.environ:
        logging.getLogger("vllm").setLevel(level)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")  # vLLM's own deprecation notices of torch
    return env
