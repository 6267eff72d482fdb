"""The OpenAI chat-completions surface of the gateway: the request schema, messages -> template messages,
the model's tool-call syntax -> OpenAI ``tool_calls``, and the response / stream-chunk bodies.

Assistant turns the client sends back are rendered as their ``content`` (the gateway returns the
model's whole response text as ``content``, tool-call syntax included, so the echoed turn renders to
what the model wrote); an assistant turn with empty content and ``tool_calls`` (built by a framework)
is rendered in the Hermes syntax ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``. With a
chat template that renders ``tools`` itself, ``tool_calls`` are passed to the template and
``content`` holds only the text before the first call.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from steppo_agent.policies import MAX_SEED
from steppo_agent.policies.base import Generation
from steppo_agent.records import SamplingConfig
from steppo_envs.actions import ParsedAction, parse_action
from steppo_envs.tools import ToolSpec

__all__ = ["ChatMessage", "ChatRequest", "RequestError", "check_tools", "completion_body", "parse_tool_calls", "without_stop",
           "sampling_of", "stream_chunks", "template_messages"]


class RequestError(Exception):
    """A request the gateway refuses: answered as an OpenAI error body with ``status``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ChatMessage(BaseModel):
    """One message of the chat (OpenAI shape; ``content`` may be a list of text parts)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` body. Unknown fields are refused (400) so a typo never goes unnoticed;
    accepted-but-unsupported settings (``n > 1``, penalties, ``logit_bias``) are refused when not default.
    Every number is range-checked here, so no value can make the engine fail (400, never a 502)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model's name (GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1, description="The chat so far (at least one message).")
    tools: list[dict[str, Any]] | None = Field(None, description="OpenAI function tools the model may call.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="'auto', 'none' or 'required'.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted; the model's own output is recorded.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0..2 (None = 1); 0 = greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass in (0, 1] (None = 1).")
    max_tokens: int | None = Field(None, ge=1, description="Response tokens (>= 1; prompt + these must fit the context).")
    max_completion_tokens: int | None = Field(None, ge=1, description="The newer name of max_tokens (wins over it).")
    stop: str | list[str] | None = Field(None, description="Stop string(s), each non-empty.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description=(
        f"This request's sampling seed, an integer in 0..{MAX_SEED} (0 <= seed < 2**63, what the engine's "
        "generator takes); None = unseeded."))
    logprobs: bool | None = Field(None, description="Return the sampled tokens' logprobs.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Refused unless 0 (the records keep sampled logprobs).")
    stream: bool = Field(False, description="Answer with server-sent chat.completion.chunk events.")
    stream_options: StreamOptions | None = Field(None, description="include_usage: a last chunk with usage.")
    n: int | None = Field(None, ge=1, le=128, description="Responses per request; only 1 is supported.")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Refused unless 0.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Refused unless 0.")
    logit_bias: dict[str, float] | None = Field(None, description="Refused unless empty.")
    user: str | None = Field(None, description="The episode id when neither the header nor episode_id gives one.")
    metadata: dict[str, str] | None = Field(None, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Accepted and ignored.")
    episode_id: str | None = Field(None, description="steppo: the episode this step belongs to (extra_body).")
    group_id: str | None = Field(None, description="steppo: the episode's group for GRPO / GiGPO (extra_body).")

    @field_validator("stop")
    @classmethod
    def _stop_strings_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and any(not text for text in ([value] if isinstance(value, str) else value)):
            raise ValueError("a stop string is empty: leave it out (the engine refuses empty stop strings)")
        return value

    def check_supported(self) -> None:
        """Raise :class:`RequestError` (400) for settings the gateway cannot honour."""
        if (self.n or 1) > 1:
            raise RequestError(400, f"n={self.n}: the gateway records one response per request; send n "
                                    "requests (e.g. with one X-Steppo-Group) instead.", param="n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise RequestError(400, f"{name} is not supported (it would change the sampled distribution the "
                                        "records claim): leave it unset.", param=name)
        if self.top_logprobs:
            raise RequestError(400, "top_logprobs is not supported (the records keep the sampled tokens' logprobs): "
                                    "use logprobs=true without top_logprobs.", param="top_logprobs")
        if self.logit_bias:
            raise RequestError(400, "logit_bias is not supported: leave it unset.", param="logit_bias")
        if self.tool_choice not in (None, "auto", "none") and self.tool_choice != "required":
            raise RequestError(400, "tool_choice naming a function is not supported (the model's own output is "
                                    "recorded): use 'auto', 'none' or 'required'.", param="tool_choice")


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(400, "only text content parts are supported: send {'type': 'text', 'text': ...}.",
                               param="messages")
        parts.append(part["text"])
    return "".join(parts)


def _hermes(tool_calls: list[dict[str, Any]]) -> str:
    lines = []
    for call in tool_calls:
        fn = call.get("function") or {}
        args = fn.get("arguments", "{}")
        try:
            args_obj = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            args_obj = args
        lines.append("<tool_call>" + json.dumps({"name": fn.get("name", ""), "arguments": args_obj}) + "</tool_call>")
    return "\n".join(lines)


def template_messages(messages: list[ChatMessage], template_tools: bool) -> list[dict[str, Any]]:
    """The client's messages as the chat template takes them (string contents; ``developer`` -> ``system``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role, "content": _text(m.content)}
        if m.role == "assistant" and m.tool_calls:
            if template_tools:
                msg["tool_calls"] = [
                    {**c, "function": {**c.get("function", {}), "arguments": _json_args(c)}} for c in m.tool_calls]
            elif not msg["content"]:
                msg["content"] = _hermes(m.tool_calls)
        if m.role == "tool" and m.tool_call_id is not None and template_tools:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None and template_tools:
            msg["name"] = m.name
        out.append(msg)
    return out


def _json_args(call: dict[str, Any]) -> Any:
    args = (call.get("function") or {}).get("arguments", "{}")
    try:
        return json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        return args


def sampling_of(request: ChatRequest, max_tokens: int) -> SamplingConfig:
    """The request's sampling settings (OpenAI defaults: temperature 1, top_p 1)."""
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return SamplingConfig(temperature=1.0 if request.temperature is None else request.temperature,
                          top_p=1.0 if request.top_p is None else request.top_p, max_tokens=max_tokens, stop=stop,
                          seed=request.seed)


def check_tools(tools: list[dict[str, Any]] | None) -> None:
    """400 for a malformed tool list, before anything is generated."""
    _tool_specs(tools or [])


def _tool_specs(tools: list[dict[str, Any]]) -> list[ToolSpec]:
    specs = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError(400, "each tool must be {'type': 'function', 'function': {'name': ..., 'parameters': "
                                    "...}}.", param="tools")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise RequestError(400, f"the parameters of tool {fn['name']!r} must be a JSON schema object, e.g. "
                                    "{'type': 'object', 'properties': {...}}.", param="tools")
        specs.append(ToolSpec(name=fn["name"], description=str(fn.get("description", "")), parameters=params))
    return specs


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None, step_id: str) -> tuple[ParsedAction | None,
                                                                                           list[dict[str, Any]]]:
    """``(parsed action, OpenAI tool_calls)`` of a response (no tools -> ``(None, [])``). Calls use the
    shared action parser (:func:`steppo_envs.actions.parse_action`, Hermes ``<tool_call>`` syntax);
    ids are ``call_<step id>_<i>``."""
    if not tools:
        return None, []
    action = parse_action(text, _tool_specs(tools), allow_answer=True, max_tool_calls=16)
    calls = [{"id": f"call_{step_id}_{i}", "type": "function",
              "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
             for i, c in enumerate(action.tool_calls)]
    return action, calls


def without_stop(text: str, stop: str | list[str] | None, finish_reason: str) -> str:
    """``text`` without the stop string it ends with, as OpenAI's ``content`` has it. The engine keeps the stop
    string in the output (the record's ``response_ids`` / ``response_text`` hold exactly what was sampled); only
    what the client sees loses it. Nothing changes unless the generation finished by a stop (``"stop"``)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if finish_reason != "stop":
        return text
    for s in sorted(stops, key=len, reverse=True):
        if s and text.endswith(s):
            return text[: -len(s)]
    return text


def _finish(gen: Generation, tool_calls: list[dict[str, Any]]) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if gen.finish_reason == "length" else "stop"


def _logprobs(gen: Generation, tokenizer: Any) -> dict[str, Any]:
    tokens = tokenizer.convert_ids_to_tokens(gen.token_ids)
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                        for t, lp in zip(tokens, gen.logprobs, strict=True)], "refusal": None}


def completion_body(completion_id: str, model: str, gen: Generation, content: str, tool_calls: list[dict[str, Any]],
                    prompt_tokens: int, tokenizer: Any, want_logprobs: bool) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(gen, tool_calls),
                     "logprobs": _logprobs(gen, tokenizer) if want_logprobs else None}],
        "usage": _usage(prompt_tokens, gen),
    }


def _usage(prompt_tokens: int, gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(gen.token_ids),
            "total_tokens": prompt_tokens + len(gen.token_ids)}


def stream_chunks(completion_id: str, model: str, gen: Generation, content: str, tool_calls: list[dict[str, Any]],
                  prompt_tokens: int, tokenizer: Any, want_logprobs: bool, include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of one response: role, content, tool calls, finish (+ usage)."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}

    out = [chunk({"role": "assistant", "content": ""})]
    if content:
        out.append(chunk({"content": content}, logprobs=_logprobs(gen, tokenizer) if want_logprobs else None))
    if tool_calls:
        out.append(chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(tool_calls)]}))
    out.append(chunk({}, _finish(gen, tool_calls)))
    if include_usage:
        out.append({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": _usage(prompt_tokens, gen)})
    return out
