"""HTTP plumbing of the gateway that keeps one request from hurting the server or the records: a
request-body limit checked before the body is read, episode ids that are any UTF-8 text in headers,
the client's disconnect noticed while its step is generated, and a streamed response whose step is
recorded only once every chunk went out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from steppo_agent.gateway.chat import RequestError

__all__ = ["ClientLeft", "StepStream", "encode_id", "header_text", "read_body", "until_client_leaves"]

T = TypeVar("T")


class ClientLeft(Exception):
    """The client closed its connection before its answer was ready."""


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(413, f"the request body has {size} bytes, more than this gateway's limit of {limit}: send "
                             "a shorter conversation (or start the gateway with a larger max_body_bytes).",
                        code="request_too_large")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 once it is known to exceed ``limit`` bytes: from its
    ``Content-Length`` before anything is read, else while it streams in (chunked uploads)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _too_large(size, limit)
        parts.append(part)
    return b"".join(parts)


def header_text(request: Request, name: str) -> str | None:
    """The text of a steppo header (``X-Steppo-Episode`` / ``X-Steppo-Group``), or None when absent or
    empty. HTTP headers carry bytes; the value is read as UTF-8 and then percent-decoded, so an id that
    is any text arrives intact when the client sends ``urllib.parse.quote(id, safe="")`` (a literal
    ``%`` is then ``%25``); raw UTF-8 bytes work too."""
    value = request.headers.get(name)
    if not value:
        return None
    try:
        return unquote(value.encode("latin-1").decode("utf-8"), errors="strict")
    except UnicodeError:
        raise RequestError(400, f"the {name} header is not UTF-8 text: send the id percent-encoded "
                                "(urllib.parse.quote(id, safe='')) or in the body (episode_id / group_id).",
                           param=name) from None


def encode_id(text: str) -> str:
    """``text`` as a header value: percent-encoded UTF-8 (ASCII letters, digits and ``-_.~`` kept), so
    an id with non-Latin-1 letters, line breaks or NUL never breaks the response."""
    return quote(text, safe="")


async def _disconnected(request: Request) -> None:
    """Return when the client closes its connection (the body has been read already); never returns
    when the server cannot tell."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - no disconnect news: wait for the work alone
        await asyncio.Event().wait()


async def until_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelling it and raising :class:`ClientLeft` if the client disconnects first
    (a cancelled batcher request is abandoned: skipped, or aborted in the engine)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this request is cancelled (server shutdown): the work is abandoned
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
    if watcher.done() and not watcher.cancelled():
        if task.done() and not task.cancelled():
            task.exception()  # retrieved (and dropped): nobody is left to answer
        raise ClientLeft
    return task.result()


class StepStream(StreamingResponse):
    """Server-sent ``chat.completion.chunk`` events of one step. ``on_sent`` (record the step) runs once
    every chunk has been sent, just before ``data: [DONE]``; ``on_close`` (drop the step when it was not
    recorded) runs however the response ends: finished, client gone, or never started."""

    def __init__(self, chunks: list[dict[str, Any]], headers: dict[str, str], on_sent: Callable[[], None],
                 on_close: Callable[[], None]) -> None:
        self._on_sent, self._on_close = on_sent, on_close
        super().__init__(self._events(chunks), media_type="text/event-stream", headers=headers)

    async def _events(self, chunks: list[dict[str, Any]]) -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        self._on_sent()
        yield "data: [DONE]\n\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
