"""Policy backends on real engines with the default model: token exactness, logprobs, seeds, errors.

Every backend's logprobs are compared with a transformers forward pass over prompt + response
(fp32, same weights): measured gaps are ~1e-5; the asserted tolerance is 1e-3 (max abs).
Run with ``-s`` to see the measured mean / max gaps.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from steppo_agent.policies import PolicyConfig, make_policy, resolve_seeds
from steppo_agent.records import SamplingConfig

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
HAS_VLLM = importlib.util.find_spec("vllm") is not None
TOLERANCE = 1e-3  # fp32 max abs logprob gap vs a transformers forward pass

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch and transformers")
BACKENDS = [
    pytest.param("vllm_policy", marks=[pytest.mark.vllm, pytest.mark.slow,
                                       pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")]),
    pytest.param("openai_policy", marks=[pytest.mark.vllm, pytest.mark.slow,
                                         pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")]),
    pytest.param("hf_policy", marks=[pytest.mark.slow, needs_torch]),
]
OBSERVATIONS = ["You are in a kitchen. There is a fridge. What do you do?", "Question: what is 2 + 3?"]


def _prompts(tokenizer: Any) -> list[list[int]]:
    from steppo_agent.prompting import render_prompt_ids

    return [render_prompt_ids(tokenizer, "You are a helpful agent. Answer briefly.", o, None) for o in OBSERVATIONS]


def reference_logprobs(model: Any, prompt: list[int], response: list[int]) -> list[float]:
    """Logprobs of ``response`` under ``model`` (one transformers forward pass, fp32)."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0].tolist()


def _gaps(model: Any, prompts: list[list[int]], generations: list[Any]) -> tuple[float, float]:
    gaps: list[float] = []
    for prompt, gen in zip(prompts, generations, strict=True):
        ref = reference_logprobs(model, prompt, gen.token_ids)
        gaps += [abs(a - b) for a, b in zip(ref, gen.logprobs, strict=True)]
    return sum(gaps) / len(gaps), max(gaps)


# ----------------------------------------------------------------------------- pure helpers


def test_resolve_seeds() -> None:
    assert resolve_seeds(3, SamplingConfig(seed=10)) == [10, 11, 12]
    assert resolve_seeds(2, SamplingConfig()) == [None, None]
    assert resolve_seeds(2, SamplingConfig(seed=1), [7, None]) == [7, None]
    with pytest.raises(ValueError, match="one seed"):
        resolve_seeds(2, SamplingConfig(), [1])


def test_weight_reload_hides_only_the_expected_layer_notices() -> None:
    import logging

    from steppo_agent.policies.weight_sync import _ExpectedReloadNotices

    def record(layer: str) -> logging.LogRecord:
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, "%s: Failed to load weights", (layer,), None)

    tied, untied = _ExpectedReloadNotices(tied=True), _ExpectedReloadNotices(tied=False)
    assert not tied.filter(record("RotaryEmbedding")) and not untied.filter(record("RotaryEmbedding"))
    assert not tied.filter(record("ParallelLMHead")) and untied.filter(record("ParallelLMHead"))
    assert tied.filter(record("QKVParallelLinear"))  # a real failure still shows


def test_vllm_logs_at_warning_without_benign_notices_unless_asked() -> None:
    import logging

    from steppo_agent.policies.vllm_settings import BenignNoticeFilter, quiet_vllm_environment

    env: dict[str, str] = {}
    quiet_vllm_environment(env)
    assert env["VLLM_LOGGING_LEVEL"] == "WARNING"
    config = json.loads(Path(env["VLLM_LOGGING_CONFIG_PATH"]).read_text())
    assert config["handlers"]["vllm"]["filters"] == ["steppo_benign"] and config["loggers"]["vllm"]["level"] == "WARNING"
    assert quiet_vllm_environment({"STEPPO_LOG_LEVEL": "info"})["VLLM_LOGGING_LEVEL"] == "INFO"
    mine = {"VLLM_LOGGING_LEVEL": "DEBUG", "VLLM_LOGGING_CONFIG_PATH": "/my/config.json"}
    assert quiet_vllm_environment(dict(mine)) == mine  # the user's own settings win

    def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("vllm.x", level, __file__, 1, msg, args, None)

    drop = BenignNoticeFilter()
    vllm_logger = logging.getLogger("vllm")
    old_level = vllm_logger.level
    vllm_logger.setLevel(logging.WARNING)
    try:
        assert not drop.filter(record("%s is not found in LD_PRELOAD. For best performance ...", "libtcmalloc"))
        assert drop.filter(record("KV cache is full"))  # any other warning shows
        assert drop.filter(record("Triton is not installed.", level=logging.ERROR))  # errors always show
        vllm_logger.setLevel(logging.INFO)
        assert drop.filter(record("Triton is not installed."))  # --log-level INFO shows everything
    finally:
        vllm_logger.setLevel(old_level)


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'vllm', 'openai' or 'hf'"):
        make_policy(PolicyConfig(backend="nope"))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- every backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_generations_are_token_exact(backend: str, request: pytest.FixtureRequest, hf_policy: Any) -> None:
    policy = request.getfixturevalue(backend)
    tok = policy.tokenizer
    prompts = _prompts(tok)
    for sampling in (SamplingConfig(temperature=0.0, max_tokens=16), SamplingConfig(temperature=1.0, max_tokens=16, seed=5)):
        gens = policy.generate(prompts, sampling)
        assert len(gens) == len(prompts)
        for gen in gens:
            assert gen.finish_reason in ("stop", "length")
            assert 0 < len(gen.token_ids) == len(gen.logprobs) <= 16
            assert gen.text == tok.decode(gen.token_ids, skip_special_tokens=True)
            assert all(lp <= 1e-6 for lp in gen.logprobs)
            if gen.finish_reason == "stop":
                assert gen.token_ids[-1] == tok.eos_token_id
        mean, worst = _gaps(hf_policy.hf_model, prompts, gens)
        print(f"\n{policy.backend} T={sampling.temperature}: logprob gap vs transformers mean {mean:.2e} max {worst:.2e}")
        assert worst < TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_is_reproducible_and_seeds_are_per_prompt(backend: str, request: pytest.FixtureRequest) -> None:
    policy = request.getfixturevalue(backend)
    prompts = _prompts(policy.tokenizer)
    greedy = SamplingConfig(temperature=0.0, max_tokens=16)
    first, second = policy.generate(prompts, greedy), policy.generate(prompts, greedy)
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    assert [g.text for g in first] == [g.text for g in second]
    # logprobs may differ in the last bits (a server's batching / prefix cache changes the kernels' shapes)
    assert max(abs(a - b) for f, s in zip(first, second, strict=True) for a, b in zip(f.logprobs, s.logprobs, strict=True)) < 1e-4

    same = [prompts[0]] * 3
    sampled = policy.generate(same, SamplingConfig(temperature=1.0, max_tokens=16), seeds=[11, 12, 11])
    assert sampled[0].token_ids == sampled[2].token_ids  # same seed -> same sample
    assert sampled[0].token_ids != sampled[1].token_ids  # other seed -> other sample
    by_base = policy.generate(same, SamplingConfig(temperature=1.0, max_tokens=16, seed=11))
    assert by_base[0].token_ids == sampled[0].token_ids and by_base[1].token_ids == sampled[1].token_ids


VLLM_BACKENDS = BACKENDS[:2]


@pytest.mark.parametrize("backend", VLLM_BACKENDS)
def test_seeded_batch_over_the_engine_token_budget(backend: str, request: pytest.FixtureRequest) -> None:
    """Regression: 10 seeded prompts of ~600 tokens (> vLLM's 4096-token step budget) in one call.
    With chunked prefill on the CPU backend this raised ``CPU Generator does not use offset`` and
    killed the engine; now every request completes and seeded samples are reproducible whatever
    the batch order."""
    policy = request.getfixturevalue(backend)
    tok = policy.tokenizer
    from steppo_agent.prompting import render_prompt_ids

    rooms = " ".join(f"Room {k} has a door to the north and a lamp on a table." for k in range(45))
    prompts = [render_prompt_ids(tok, "You are an agent.", f"Game {i}. {rooms} What do you do?", None) for i in range(10)]
    assert sum(map(len, prompts)) > 4096 and all(500 < len(p) < 800 for p in prompts)
    sampling = SamplingConfig(temperature=1.0, max_tokens=8)
    seeds = [1000 + i for i in range(10)]
    first = policy.generate(prompts, sampling, seeds=seeds)
    assert all(g.finish_reason in ("stop", "length") for g in first), [g.finish_reason for g in first]
    assert all(len(g.token_ids) == len(g.logprobs) > 0 for g in first)
    order = list(reversed(range(10)))
    again = policy.generate([prompts[i] for i in order], sampling, seeds=[seeds[i] for i in order])
    assert [g.token_ids for g in again] == [first[i].token_ids for i in order]
    # the engine is still alive and serves a small request
    assert policy.generate(prompts[:1], SamplingConfig(temperature=0.0, max_tokens=4))[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_strings_and_over_long_prompts(backend: str, request: pytest.FixtureRequest) -> None:
    policy = request.getfixturevalue(backend)
    tok = policy.tokenizer
    prompt = _prompts(tok)[1]
    free = policy.generate([prompt], SamplingConfig(temperature=0.0, max_tokens=24))[0]
    assert " " in free.text
    stop = free.text.split(" ")[1][:2]  # a piece of the greedy answer
    gens = policy.generate([prompt, [1] * policy.max_model_len], SamplingConfig(temperature=0.0, max_tokens=24, stop=[stop]))
    assert gens[0].finish_reason == "stop" and stop in gens[0].text
    assert gens[0].text == tok.decode(gens[0].token_ids, skip_special_tokens=True)
    assert gens[0].token_ids == free.token_ids[: len(gens[0].token_ids)]
    assert gens[1].finish_reason == "error" and gens[1].token_ids == []


# ----------------------------------------------------------------------------- weight push


def _perturbed_state(model: Any, scale: float = 0.02) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    return {k: v + torch.randn(v.shape, generator=gen) * scale * v.float().std() for k, v in model.state_dict().items()}


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")
def test_vllm_on_cpu_runs_dense_layers_with_torch_linear(vllm_policy: Any) -> None:
    """vLLM's per-batch-size oneDNN kernels grew the heap without bound (benchmarks/bench_vllm_linear.py):
    the in-process CPU engine uses torch's F.linear, and the switch can be turned back."""
    import vllm._custom_ops as ops

    from steppo_agent.policies import vllm_settings
    from steppo_agent.policies.vllm_settings import use_torch_linear

    if not vllm_policy.on_cpu or not vllm_settings._ONEDNN_SUPPORTED:
        pytest.skip("a CPU vLLM build with oneDNN linear layers only")
    assert ops._supports_onednn is False
    try:
        assert use_torch_linear(False) is False and ops._supports_onednn is True
    finally:
        assert use_torch_linear(True) is True and ops._supports_onednn is False


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")
def test_vllm_plugin_switches_linear_only_when_steppo_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vLLM general plugin steppo registers (pyproject.toml) is what vLLM finds, and it flips the
    dense-layer path only under STEPPO_VLLM_CPU_LINEAR: other vLLM processes keep their default."""
    import vllm._custom_ops as ops
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

    from steppo_agent.policies import vllm_settings
    from steppo_agent.policies.vllm_settings import (
        CPU_LINEAR_ENV,
        CPU_LINEAR_PLUGIN,
        use_torch_linear,
        vllm_plugin,
    )

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    found = load_plugins_by_group(DEFAULT_PLUGINS_GROUP).get(CPU_LINEAR_PLUGIN)
    assert found is vllm_plugin, "entry point not registered: reinstall steppo (pip install -e . --no-deps)"
    before = use_torch_linear(not ops._supports_onednn)  # unchanged; records vLLM's own setting
    if not vllm_settings._ONEDNN_SUPPORTED:
        pytest.skip("a CPU vLLM build with oneDNN linear layers only")
    try:
        for state in (False, True):  # either path stays as it is without steppo's variable
            use_torch_linear(state)
            monkeypatch.delenv(CPU_LINEAR_ENV, raising=False)
            vllm_plugin()
            assert ops._supports_onednn is not state
        monkeypatch.setenv(CPU_LINEAR_ENV, "torch")
        vllm_plugin()
        assert ops._supports_onednn is False
        monkeypatch.setenv(CPU_LINEAR_ENV, "onednn")
        vllm_plugin()
        assert ops._supports_onednn is True
        monkeypatch.setenv(CPU_LINEAR_ENV, "mkl")
        with pytest.raises(ValueError, match="STEPPO_VLLM_CPU_LINEAR='mkl'"):
            vllm_plugin()
    finally:
        use_torch_linear(before)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")
def test_vllm_server_on_cpu_runs_dense_layers_with_torch_linear(vllm_server: Any) -> None:
    """start_vllm_server's cpu_linear="torch" reaches the server's worker process (steppo's vLLM plugin):
    every dense layer of the served model calls F.linear, none vLLM's oneDNN handlers."""
    import httpx

    from steppo_agent.policies.vllm_settings import vllm_is_cpu_build

    if not vllm_is_cpu_build():
        pytest.skip("the CPU vLLM build only")
    response = httpx.post(f"{vllm_server.base_url}/collective_rpc", json={"method": "steppo_dense_layer_kernels"},
                          timeout=30.0)
    assert response.status_code == 200, response.text
    kernels = response.json()["results"]  # one entry per worker
    # SmolLM2-135M: 30 blocks x (qkv, o, gate_up, down) + the embedding and output layers; with vLLM's
    # default (or without steppo's plugin) all 122 are {"onednn_mm": 122}
    assert kernels == [{"linear": 122}], f"dense kernels of the server: {kernels} (steppo's vLLM plugin not loaded?)"


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")
def test_vllm_weight_push_matches_transformers(vllm_policy: Any, hf_policy: Any) -> None:
    import copy

    prompts = _prompts(vllm_policy.tokenizer)
    greedy = SamplingConfig(temperature=0.0, max_tokens=16)
    before = vllm_policy.generate(prompts, greedy)
    original = {k: v.clone() for k, v in hf_policy.hf_model.state_dict().items()}
    perturbed_model = copy.deepcopy(hf_policy.hf_model)
    perturbed_model.load_state_dict(_perturbed_state(hf_policy.hf_model))
    version = vllm_policy.version
    try:
        assert vllm_policy.load_weights(perturbed_model.state_dict()) == version + 1
        print(f"\nvllm weight push: {vllm_policy.last_push_seconds:.2f} s")
        after = vllm_policy.generate(prompts, greedy)
        old = [reference_logprobs(hf_policy.hf_model, p, g.token_ids) for p, g in zip(prompts, after, strict=True)]
        assert max(abs(a - b) for o, g in zip(old, after, strict=True) for a, b in zip(o, g.logprobs, strict=True)) > 1e-2
        mean, worst = _gaps(perturbed_model, prompts, after)
        print(f"vllm after push: gap vs perturbed transformers mean {mean:.2e} max {worst:.2e}")
        assert worst < TOLERANCE
    finally:
        vllm_policy.load_weights(original)
    restored = vllm_policy.generate(prompts, greedy)
    assert [g.token_ids for g in restored] == [g.token_ids for g in before]
    assert _gaps(hf_policy.hf_model, prompts, restored)[1] < TOLERANCE


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm")
def test_server_weight_push_matches_transformers(openai_policy: Any, hf_policy: Any) -> None:
    import copy

    from steppo_agent.policies.weight_sync import write_weights

    prompts = _prompts(openai_policy.tokenizer)
    greedy = SamplingConfig(temperature=0.0, max_tokens=16)
    perturbed_model = copy.deepcopy(hf_policy.hf_model)
    perturbed_model.load_state_dict(_perturbed_state(hf_policy.hf_model))
    pushed = write_weights(perturbed_model.state_dict())
    original = write_weights(hf_policy.hf_model.state_dict())
    try:
        openai_policy.load_weights_from_path(str(pushed))
        mean, worst = _gaps(perturbed_model, prompts, openai_policy.generate(prompts, greedy))
        print(f"\nserver after push: gap vs perturbed transformers mean {mean:.2e} max {worst:.2e}")
        assert worst < TOLERANCE
    finally:
        openai_policy.load_weights_from_path(str(original))
        pushed.unlink()
        original.unlink()
    assert _gaps(hf_policy.hf_model, prompts, openai_policy.generate(prompts, greedy))[1] < TOLERANCE


# ----------------------------------------------------------------------------- HTTP failure modes


@needs_torch
def test_unreachable_server_is_a_clear_error(default_model_dir: str) -> None:
    from steppo_agent.policies.openai_policy import OpenAIPolicy, PolicyServerError
    from steppo_agent.policies.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    policy = OpenAIPolicy(base_urls=[url], max_retries=2, retry_backoff_s=0.01, timeout_s=5)
    try:
        with pytest.raises(PolicyServerError, match=r"127\.0\.0\.1.*after 3 attempts.*base_urls"):
            policy.generate([[1, 2, 3]], SamplingConfig(max_tokens=4))
    finally:
        policy.close()


class _FakeServer(BaseHTTPRequestHandler):
    """Answers /v1/completions according to the prompt's first token (0: good, 1-4: malformed)."""

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        good = {"choices": [{"text": "", "finish_reason": "length",
                             "logprobs": {"tokens": ["token_id:28", "token_id:29"], "token_logprobs": [-0.5, -1.5]}}]}
        kind = request["prompt"][0]
        bodies = {
            0: json.dumps(good).encode(),
            1: b"{not json",
            2: json.dumps({"choices": [{"text": "hi", "finish_reason": "stop"}]}).encode(),
            3: json.dumps({"choices": [{"finish_reason": "stop", "logprobs": {"tokens": ["token_id:5"], "token_logprobs": []}}]}).encode(),
            4: json.dumps({"error": "prompt too long"}).encode(),
        }
        self._send(400 if kind == 4 else 200, bodies[kind])


@pytest.fixture()
def fake_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@needs_torch
def test_malformed_answers_become_error_generations(default_model_dir: str, fake_server: str) -> None:
    from steppo_agent.policies.openai_policy import OpenAIPolicy

    policy = OpenAIPolicy(base_urls=[fake_server], max_retries=0)
    try:
        gens = policy.generate([[k, 9] for k in range(5)], SamplingConfig(max_tokens=2))
    finally:
        policy.close()
    assert policy.served_model_name == "fake-model"
    assert gens[0].token_ids == [28, 29] and gens[0].logprobs == [-0.5, -1.5] and gens[0].finish_reason == "length"
    assert gens[0].text == policy.tokenizer.decode([28, 29], skip_special_tokens=True)
    for gen in gens[1:]:
        assert gen.finish_reason == "error" and gen.token_ids == [] and gen.logprobs == []


@pytest.mark.vllm
def test_vllm_engine_starts_after_numba_is_imported(default_model_dir: str) -> None:
    """Regression: ``import bm25s`` loads numba/llvmlite, whose ffi object broke vLLM's start-up module scan."""
    import subprocess
    import sys

    code = (
        "import bm25s, sys\n"
        "from steppo_agent.policies import PolicyConfig, make_policy\n"
        "from steppo_agent.records import SamplingConfig\n"
        f"p = make_policy(PolicyConfig(backend='vllm', model={default_model_dir!r}))\n"
        "assert 'llvmlite.binding.ffi' in sys.modules\n"
        "g = p.generate([p.tokenizer.encode('Hello')], SamplingConfig(temperature=0, max_tokens=4))\n"
        "assert g[0].finish_reason in ('stop', 'length'), g\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
