"""The gateway's FastAPI app: OpenAI chat completions in, one recorded step per request.

Routes:

* ``GET /v1/models``: the served model.
* ``POST /v1/chat/completions``: render the messages + tools into prompt ids (the renderer of
  ``steppo rollout``), sample through the policy (batched with concurrent requests), parse tool calls,
  record the step, answer as ``chat.completion`` (or server-sent ``chat.completion.chunk`` events).
* ``POST /steppo/v1/episodes/{id}/reward`` (or ``POST /steppo/v1/episodes/reward`` with ``episode_id``
  in the body): add a reward to a step (default: the last one).
* ``POST /steppo/v1/episodes/{id}/end`` (or ``POST /steppo/v1/episodes/end`` with ``episode_id`` in the
  body, for any id): end the episode (terminated / truncated, final reward, success, metrics, task id)
  and write it.
* ``GET /steppo/v1/episodes``: the open episodes.

Episodes: the ``X-Steppo-Episode`` header (UTF-8, percent-decoded), else the body's ``episode_id``
(``extra_body``), else ``user``; a request with none is a one-step episode written at once. The group id
(GRPO / GiGPO) is the ``X-Steppo-Group`` header or the body's ``group_id``; by default the episode id.

Faults (docs/gateway.md, "Faults"): a body over ``max_body_bytes`` is a 413 before it is read; parsing,
rendering and tokenising run in a worker thread, never on the event loop; a client that disconnects
abandons its generation (aborted in the engine); a step is recorded only after its response was
produced, so a failed request never adds one; an unexpected error is a JSON 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from steppo_agent.gateway.batcher import Batcher, BatcherStopped
from steppo_agent.gateway.chat import (
    ChatRequest,
    RequestError,
    check_tools,
    completion_body,
    parse_tool_calls,
    sampling_of,
    stream_chunks,
    template_messages,
    without_stop,
)
from steppo_agent.gateway.config import GatewayConfig, default_max_body_bytes
from steppo_agent.gateway.episodes import EpisodeHeader, EpisodeStore, UnknownEpisodeError
from steppo_agent.gateway.http import (
    ClientLeft,
    StepStream,
    encode_id,
    header_text,
    read_body,
    until_client_leaves,
)
from steppo_agent.policies.base import Generation, Policy
from steppo_agent.prompting import render_messages_ids, template_supports_tools
from steppo_agent.records import PolicyInfo, SamplingConfig, Step
from steppo_agent.trajectory_io import TrajectoryWriter
from steppo_envs.actions import clean_action_text

__all__ = ["EndByIdRequest", "EndRequest", "Gateway", "RewardByIdRequest", "RewardRequest", "create_app"]

EPISODE_HEADER = "x-steppo-episode"
GROUP_HEADER = "x-steppo-group"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer (never seen by it)


class RewardRequest(BaseModel):
    """``POST /steppo/v1/episodes/{id}/reward`` body."""

    model_config = ConfigDict(extra="forbid")

    reward: FiniteFloat = Field(description="Added to the step's reward (a finite number).")
    step: int | None = Field(None, description="0-based step index; None = the last completed step.")


class EndRequest(BaseModel):
    """``POST /steppo/v1/episodes/{id}/end`` body."""

    model_config = ConfigDict(extra="forbid")

    terminated: bool = Field(True, description="The task reached an end state (success or failure).")
    truncated: bool = Field(False, description="Cut off before an end state (step limit, time out).")
    truncation_reason: str | None = Field(None, description="Why it was truncated (default 'client').")
    reward: FiniteFloat | None = Field(None, description="Final reward, added to the last step (a finite number).")
    success: bool | None = Field(None, description="Whether the task was solved (None = unknown).")
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict, description="Final task metrics (finite numbers).")
    task_id: str | None = Field(None, description="The task's id (episodes of one task share it).")


class RewardByIdRequest(RewardRequest):
    """``POST /steppo/v1/episodes/reward`` body: the id in the body, so any text works."""

    episode_id: str = Field(description="The episode's id, exactly as its requests sent it.")


class EndByIdRequest(EndRequest):
    """``POST /steppo/v1/episodes/end`` body: the id in the body, so any text works (``/``, line breaks)."""

    episode_id: str = Field(description="The episode's id, exactly as its requests sent it.")


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('msg')}): send a JSON object.", None
    if first.get("type") == "extra_forbidden":
        return f"unknown field {loc!r}: remove it (see the OpenAI chat-completions reference).", loc or None
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    got = f" (got {_shown(first['input'])})" if "input" in first and first.get("type") != "missing" else ""
    return f"{loc or 'body'}: {msg}{got}: send a value the field allows.", loc or None


@dataclass(frozen=True)
class Prepared:
    """A checked chat request and its prompt: what goes to the policy."""

    req: ChatRequest
    messages: list[dict[str, Any]]
    ids: list[int]
    sampling: SamplingConfig


class Gateway:
    """The app's state: policy, batcher, episode store (built when the app starts)."""

    def __init__(self, policy: Policy, config: GatewayConfig) -> None:
        self.policy, self.config = policy, config
        self.model_name = config.served_model_name or policy.model
        self.template_tools = template_supports_tools(policy.tokenizer)
        self.max_body_bytes = config.max_body_bytes or default_max_body_bytes(policy.max_model_len)
        self.batcher = Batcher(policy, config.batch_window_s, config.max_batch, config.batch_max_wait_s)
        self.store: EpisodeStore | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        info = PolicyInfo(backend=self.policy.backend, model=self.policy.model, version=int(self.policy.version))
        self.store = EpisodeStore(TrajectoryWriter(self.config.output), info, self.config.env_id)
        self.batcher.start()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.batcher.stop()
        if self.store is not None:
            self.store.close()

    async def _reap(self) -> None:
        period = min(self.config.idle_timeout_s / 4, 1.0)
        while True:
            await asyncio.sleep(period)
            assert self.store is not None
            self.store.expire(self.config.idle_timeout_s)

    def prepare(self, raw: bytes) -> Prepared:
        """Parse and check the body, render and tokenise the prompt (CPU work: called in a worker thread)."""
        try:
            req = ChatRequest.model_validate_json(raw)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            raise RequestError(400, message, param=param) from None
        req.check_supported()
        if req.model not in (self.model_name, self.policy.model):
            raise RequestError(404, f"the model {req.model!r} does not exist here: use {self.model_name!r} "
                                    "(GET /v1/models).", code="model_not_found", param="model")
        check_tools(req.tools)
        messages, ids, max_tokens = self.prompt_of(req)
        return Prepared(req, messages, ids, sampling_of(req, max_tokens))

    def prompt_of(self, req: ChatRequest) -> tuple[list[dict[str, Any]], list[int], int]:
        """``(template messages, prompt ids, max_tokens)``; 400 when the prompt does not fit the context."""
        messages = template_messages(req.messages, self.template_tools)
        try:
            ids = render_messages_ids(self.policy.tokenizer, messages, req.tools)
        except Exception as exc:  # the chat template refused the conversation (jinja raise_exception)
            raise RequestError(400, f"the chat template cannot render these messages ({exc}).",
                               param="messages") from None
        room = self.policy.max_model_len - len(ids)
        asked = req.max_completion_tokens or req.max_tokens
        max_tokens = asked or min(self.config.default_max_tokens, room)
        if room < 1 or len(ids) + max_tokens > self.policy.max_model_len:
            raise RequestError(400, f"this model's maximum context length is {self.policy.max_model_len} tokens; the "
                                    f"messages take {len(ids)} and max_tokens asks for {max_tokens}: shorten the "
                                    "messages or lower max_tokens.", code="context_length_exceeded", param="messages")
        return messages, ids, max_tokens

    async def sample(self, ids: list[int], sampling: SamplingConfig) -> Generation:
        """One generation through the batcher; 502 when the upstream policy fails, 503 when stopping."""
        try:
            gen = await self.batcher.generate(ids, sampling)
        except BatcherStopped:
            raise RequestError(503, "the gateway is shutting down: retry against a running gateway.",
                               kind="server_error", code="shutting_down") from None
        except Exception as exc:
            raise RequestError(502, f"the policy backend failed ({type(exc).__name__}: {exc}): check the "
                                    "inference server (--base-url).", kind="upstream_error", code="upstream_error") from None
        if gen.finish_reason == "error":
            raise RequestError(502, "the policy backend returned no answer for this prompt: check the inference "
                                    "server (--base-url).", kind="upstream_error", code="upstream_error")
        return gen


class StepSlot:
    """One request's reserved step: recorded once its response is produced, dropped otherwise (a
    one-step episode is then ended: written if its step was recorded)."""

    def __init__(self, store: EpisodeStore, episode_id: str, one_step: bool, header: EpisodeHeader) -> None:
        self.store, self.episode_id, self.one_step, self.header = store, episode_id, one_step, header
        self.seq = store.begin_step(episode_id, header)
        self.settled = False

    def record(self, step: Step, messages: list[dict[str, Any]]) -> None:
        if not self.settled:
            self.settled = True
            self.store.record_step(self.episode_id, self.seq, step, self.header, messages)
            self._end_one_step()

    def drop(self) -> None:
        if not self.settled:
            self.settled = True
            self.store.drop_step(self.episode_id, self.seq)
            self._end_one_step()

    def _end_one_step(self) -> None:
        if self.one_step and self.episode_id in self.store.open:
            self.store.end(self.episode_id)


def _episode_ids(request: Request, req: ChatRequest) -> tuple[str | None, str | None]:
    episode = header_text(request, EPISODE_HEADER) or req.episode_id or req.user
    return episode, header_text(request, GROUP_HEADER) or req.group_id


def _system_prompt(messages: list[dict[str, Any]]) -> str:
    return str(messages[0]["content"]) if messages and messages[0]["role"] == "system" else ""


def _step(gw: Gateway, prep: Prepared, gen: Generation, completion_id: str) -> tuple[Step, str, list[dict[str, Any]]]:
    """``(step, content, tool_calls)`` of a generation."""
    text = clean_action_text(gen.text)
    req = prep.req
    action, tool_calls = parse_tool_calls(text, req.tools if req.tool_choice != "none" else None, completion_id[9:])
    content = action.reasoning if (gw.template_tools and tool_calls and action is not None) else \
        without_stop(text, req.stop, gen.finish_reason)
    step = Step(index=0, observation=str(prep.messages[-1]["content"]), prompt_ids=prep.ids,
                response_ids=list(gen.token_ids), response_logprobs=list(gen.logprobs), response_text=text,
                finish_reason=gen.finish_reason, action=action.to_dict() if action is not None else None,
                valid=action.valid if action is not None else True, info={"completion_id": completion_id})
    return step, content, tool_calls


async def _chat(gw: Gateway, request: Request) -> Response:
    raw = await read_body(request, gw.max_body_bytes)
    prep = await run_in_threadpool(gw.prepare, raw)  # parsing, rendering, tokenising: off the event loop
    episode, group = _episode_ids(request, prep.req)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    episode_id = episode or completion_id
    assert gw.store is not None
    header = EpisodeHeader(group, _system_prompt(prep.messages), list(prep.req.tools or []), prep.sampling)
    slot = StepSlot(gw.store, episode_id, episode is None, header)
    try:
        gen = await until_client_leaves(request, gw.sample(prep.ids, prep.sampling))
        step, content, tool_calls = _step(gw, prep, gen, completion_id)
        args = (completion_id, gw.model_name, gen, content, tool_calls, len(prep.ids), gw.policy.tokenizer,
                bool(prep.req.logprobs))
        headers = {"X-Steppo-Episode": encode_id(episode_id)}
        if prep.req.stream:
            include_usage = bool(prep.req.stream_options and prep.req.stream_options.include_usage)
            chunks = stream_chunks(*args, include_usage=include_usage)
            return StepStream(chunks, headers, on_sent=lambda: slot.record(step, prep.messages), on_close=slot.drop)
        response = JSONResponse(completion_body(*args), headers=headers)  # the body is encoded here
        slot.record(step, prep.messages)
        return response
    except ClientLeft:
        slot.drop()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except BaseException:
        slot.drop()
        raise


async def _body(gw: Gateway, request: Request, model: type[BaseModel]) -> Any:
    raw = await read_body(request, gw.max_body_bytes)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise RequestError(400, message, param=param) from None


def _not_open(exc: UnknownEpisodeError) -> RequestError:
    return RequestError(404, str(exc.args[0]) + ": send the X-Steppo-Episode id of an open episode.",
                        code="episode_not_found")


def _reward(gw: Gateway, episode_id: str, body: RewardRequest) -> dict[str, Any]:
    assert gw.store is not None
    try:
        step = gw.store.add_reward(episode_id, body.reward, body.step)
    except UnknownEpisodeError as exc:
        raise _not_open(exc) from None
    except IndexError as exc:
        raise RequestError(400, str(exc), param="step") from None
    return {"episode_id": episode_id, "step": step.index, "reward": step.reward}


def _end(gw: Gateway, episode_id: str, body: EndRequest) -> dict[str, Any]:
    assert gw.store is not None
    try:
        traj = gw.store.end(episode_id, **body.model_dump(include=set(EndRequest.model_fields)))
    except UnknownEpisodeError as exc:
        raise _not_open(exc) from None
    return {"episode_id": episode_id, "steps": len(traj.steps), "return": traj.return_, "written": bool(traj.steps)}


def _routes(app: FastAPI, gw: Gateway) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": gw.model_name, "object": "model", "created": 0, "owned_by": "steppo",
                                            "max_model_len": gw.policy.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _chat(gw, request)

    @app.post("/steppo/v1/episodes/reward")
    async def reward_by_body(request: Request) -> dict[str, Any]:
        body: RewardByIdRequest = await _body(gw, request, RewardByIdRequest)
        return _reward(gw, body.episode_id, body)

    @app.post("/steppo/v1/episodes/end")
    async def end_by_body(request: Request) -> dict[str, Any]:
        body: EndByIdRequest = await _body(gw, request, EndByIdRequest)
        return _end(gw, body.episode_id, body)

    @app.post("/steppo/v1/episodes/{episode_id:path}/reward")
    async def reward(episode_id: str, request: Request) -> dict[str, Any]:
        return _reward(gw, episode_id, await _body(gw, request, RewardRequest))

    @app.post("/steppo/v1/episodes/{episode_id:path}/end")
    async def end(episode_id: str, request: Request) -> dict[str, Any]:
        return _end(gw, episode_id, await _body(gw, request, EndRequest))

    @app.get("/steppo/v1/episodes")
    async def episodes() -> dict[str, Any]:
        assert gw.store is not None
        return {"open": [{"id": k, "steps": len(ep.done), "pending": len(ep.pending)} for k, ep in gw.store.open.items()],
                "written": gw.store.written, "policy_calls": gw.batcher.stats.calls,
                "requests": gw.batcher.stats.requests, "abandoned": gw.batcher.stats.abandoned}


def create_app(policy: Policy, config: GatewayConfig) -> FastAPI:
    """The gateway app for ``policy`` (the caller owns the policy and closes it after the server stops)."""
    gw = Gateway(policy, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(title="steppo gateway", lifespan=lifespan)
    app.state.gateway = gw

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(RequestError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(RequestError(exc.status_code, str(exc.detail), kind=kind))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:  # a bug: logged with its traceback too
        return _error(RequestError(500, f"internal gateway error ({type(exc).__name__}: {exc}): please report it "
                                        "(the request added no step).", kind="server_error", code="internal_error"))

    _routes(app, gw)
    return app
