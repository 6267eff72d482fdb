"""The gateway's FastAPI app: OpenAI chat completions in, one recorded step per request.

Routes:

* ``GET /v1/models``: the served model.
* ``POST /v1/chat/completions``: render the messages + tools into prompt ids (the renderer of
  ``steppo rollout``), sample through the policy (batched with concurrent requests), parse tool calls,
  record the step, answer as ``chat.completion`` (or server-sent ``chat.completion.chunk`` events).
* ``POST /steppo/v1/episodes/{id}/reward``: add a reward to a step (default: the last one).
* ``POST /steppo/v1/episodes/{id}/end``: end the episode (terminated / truncated, final reward,
  success, metrics, task id) and write it.
* ``GET /steppo/v1/episodes``: the open episodes.

Episodes: the ``X-Steppo-Episode`` header, else the body's ``episode_id`` (``extra_body``), else
``user``; a request with none is a one-step episode written at once. The group id (GRPO / GiGPO) is the
``X-Steppo-Group`` header or the body's ``group_id``; by default the episode id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from steppo_agent.gateway.batcher import Batcher
from steppo_agent.gateway.chat import (
    ChatRequest,
    RequestError,
    completion_body,
    parse_tool_calls,
    sampling_of,
    stream_chunks,
    template_messages,
)
from steppo_agent.gateway.config import GatewayConfig
from steppo_agent.gateway.episodes import EpisodeStore, UnknownEpisodeError
from steppo_agent.policies.base import Generation, Policy
from steppo_agent.prompting import render_messages_ids, template_supports_tools
from steppo_agent.records import PolicyInfo, SamplingConfig, Step
from steppo_agent.trajectory_io import TrajectoryWriter
from steppo_envs.actions import clean_action_text

__all__ = ["EndRequest", "Gateway", "RewardRequest", "create_app"]

EPISODE_HEADER = "x-steppo-episode"
GROUP_HEADER = "x-steppo-group"


class RewardRequest(BaseModel):
    """``POST /steppo/v1/episodes/{id}/reward`` body."""

    model_config = ConfigDict(extra="forbid")

    reward: float = Field(description="Added to the step's reward.")
    step: int | None = Field(None, description="0-based step index; None = the last completed step.")


class EndRequest(BaseModel):
    """``POST /steppo/v1/episodes/{id}/end`` body."""

    model_config = ConfigDict(extra="forbid")

    terminated: bool = Field(True, description="The task reached an end state (success or failure).")
    truncated: bool = Field(False, description="Cut off before an end state (step limit, time out).")
    truncation_reason: str | None = Field(None, description="Why it was truncated (default 'client').")
    reward: float | None = Field(None, description="Final reward, added to the last step.")
    success: bool | None = Field(None, description="Whether the task was solved (None = unknown).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final task metrics.")
    task_id: str | None = Field(None, description="The task's id (episodes of one task share it).")


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('msg')}): send a JSON object.", None
    if first.get("type") == "extra_forbidden":
        return f"unknown field {loc!r}: remove it (see the OpenAI chat-completions reference).", loc or None
    return f"{loc or 'body'}: {first.get('msg')}", loc or None


class Gateway:
    """The app's state: policy, batcher, episode store (built when the app starts)."""

    def __init__(self, policy: Policy, config: GatewayConfig) -> None:
        self.policy, self.config = policy, config
        self.model_name = config.served_model_name or policy.model
        self.template_tools = template_supports_tools(policy.tokenizer)
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
        """One generation through the batcher; 502 when the upstream policy fails."""
        try:
            gen = await self.batcher.generate(ids, sampling)
        except Exception as exc:
            raise RequestError(502, f"the policy backend failed ({type(exc).__name__}: {exc}): check the "
                                    "inference server (--base-url).", kind="upstream_error", code="upstream_error") from None
        if gen.finish_reason == "error":
            raise RequestError(502, "the policy backend returned no answer for this prompt: check the inference "
                                    "server (--base-url).", kind="upstream_error", code="upstream_error")
        return gen


def _episode_ids(request: Request, req: ChatRequest) -> tuple[str | None, str | None]:
    episode = request.headers.get(EPISODE_HEADER) or req.episode_id or req.user
    return episode, request.headers.get(GROUP_HEADER) or req.group_id


def _system_prompt(messages: list[dict[str, Any]]) -> str:
    return str(messages[0]["content"]) if messages and messages[0]["role"] == "system" else ""


async def _chat(gw: Gateway, request: Request) -> Any:
    raw = await request.body()
    try:
        req = ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise RequestError(400, message, param=param) from None
    req.check_supported()
    if req.model not in (gw.model_name, gw.policy.model):
        raise RequestError(404, f"the model {req.model!r} does not exist here: use {gw.model_name!r} (GET /v1/models).",
                           code="model_not_found", param="model")
    messages, ids, max_tokens = gw.prompt_of(req)
    sampling = sampling_of(req, max_tokens)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    episode, group = _episode_ids(request, req)
    one_step = episode is None
    episode_id = episode or completion_id
    store = gw.store
    assert store is not None
    seq = store.begin_step(episode_id, group, _system_prompt(messages), list(req.tools or []), sampling)
    new = store.new_messages(episode_id, messages)
    try:
        gen = await gw.sample(ids, sampling)
    except RequestError:
        store.finish_step(episode_id, seq, None)
        if one_step:
            store.end(episode_id)
        raise
    text = clean_action_text(gen.text)
    action, tool_calls = parse_tool_calls(text, req.tools if req.tool_choice != "none" else None, completion_id[9:])
    content = action.reasoning if (gw.template_tools and tool_calls and action is not None) else text
    open_episode = store.open.get(episode_id)  # None: the client ended it while this step was generated
    info: dict[str, Any] = {"completion_id": completion_id, "messages": new}
    if open_episode is not None and sampling != open_episode.traj.sampling:
        info["sampling"] = sampling.model_dump()
    step = Step(index=seq, observation=str(messages[-1]["content"]), prompt_ids=ids, response_ids=list(gen.token_ids),
                response_logprobs=list(gen.logprobs), response_text=text, finish_reason=gen.finish_reason,
                action=action.to_dict() if action is not None else None,
                valid=action.valid if action is not None else True, info=info)
    store.finish_step(episode_id, seq, step)
    if one_step:
        store.end(episode_id)
    args = (completion_id, gw.model_name, gen, content, tool_calls, len(ids), gw.policy.tokenizer, bool(req.logprobs))
    if not req.stream:
        return JSONResponse(completion_body(*args), headers={"X-Steppo-Episode": episode_id})
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chunks = stream_chunks(*args, include_usage=include_usage)

    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Steppo-Episode": episode_id})


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise RequestError(400, message, param=param) from None


def _routes(app: FastAPI, gw: Gateway) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": gw.model_name, "object": "model", "created": 0, "owned_by": "steppo",
                                            "max_model_len": gw.policy.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await _chat(gw, request)

    @app.post("/steppo/v1/episodes/{episode_id}/reward")
    async def reward(episode_id: str, request: Request) -> dict[str, Any]:
        body: RewardRequest = await _body(request, RewardRequest)
        assert gw.store is not None
        try:
            step = gw.store.add_reward(episode_id, body.reward, body.step)
        except UnknownEpisodeError as exc:
            raise RequestError(404, str(exc.args[0]) + ": send the X-Steppo-Episode id of an open episode.",
                               code="episode_not_found") from None
        except IndexError as exc:
            raise RequestError(400, str(exc), param="step") from None
        return {"episode_id": episode_id, "step": step.index, "reward": step.reward}

    @app.post("/steppo/v1/episodes/{episode_id}/end")
    async def end(episode_id: str, request: Request) -> dict[str, Any]:
        body: EndRequest = await _body(request, EndRequest)
        assert gw.store is not None
        try:
            traj = gw.store.end(episode_id, **body.model_dump())
        except UnknownEpisodeError as exc:
            raise RequestError(404, str(exc.args[0]) + ": send the X-Steppo-Episode id of an open episode.",
                               code="episode_not_found") from None
        return {"episode_id": episode_id, "steps": len(traj.steps), "return": traj.return_, "written": bool(traj.steps)}

    @app.get("/steppo/v1/episodes")
    async def episodes() -> dict[str, Any]:
        assert gw.store is not None
        return {"open": [{"id": k, "steps": len(ep.done), "pending": len(ep.pending)} for k, ep in gw.store.open.items()],
                "written": gw.store.written, "policy_calls": gw.batcher.stats.calls,
                "requests": gw.batcher.stats.requests}


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

    _routes(app, gw)
    return app
