"""Requests that arrive together are generated together: a small asyncio batcher in front of a Policy.

The first queued request opens a window of ``window_s``, and each request that arrives in it opens
another, for at most ``max_wait_s`` after the first; everything queued by then (up to ``max_batch``)
goes to one ``policy.generate`` call per distinct sampling setting, run in a worker
thread so the event loop keeps accepting requests (which queue up for the next call, as the rollout
engine's rounds do). Each request carries its own seed, so its sample does not depend on its batch.

A request whose caller stops waiting (the client disconnected, the server is stopping) is
*abandoned*: skipped if it is still queued, aborted midway by a policy that can
(:func:`~steppo_agent.policies.base.generate_abortable`; the in-process vLLM engine), otherwise
generated and dropped. Policy calls run in daemon threads, so a call that never returns cannot keep
the process alive; :meth:`Batcher.stop` abandons everything and waits (a bounded time) for the call
in flight to finish, so the policy can be closed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from steppo_agent.policies.base import Generation, Policy, generate_abortable
from steppo_agent.records import SamplingConfig

__all__ = ["BatchStats", "Batcher", "BatcherStopped"]

T = TypeVar("T")


class BatcherStopped(RuntimeError):
    """The batcher stopped (the server is shutting down) before this request was generated."""


@dataclass
class _Item:
    prompt: list[int]
    sampling: SamplingConfig
    future: asyncio.Future[Generation]
    abandoned: bool = False  # set on the event loop, read by the policy thread (a plain bool: atomic)


@dataclass
class BatchStats:
    """How many policy calls served how many requests, and how many requests were abandoned."""

    calls: int = 0
    requests: int = 0
    abandoned: int = 0
    sizes: list[int] = field(default_factory=list)


class Batcher:
    """Queue single prompts, generate them in batches (one worker thread, one call at a time)."""

    def __init__(self, policy: Policy, window_s: float = 0.005, max_batch: int = 64, max_wait_s: float = 0.25) -> None:
        self.policy, self.window_s, self.max_batch, self.max_wait_s = policy, window_s, max_batch, max_wait_s
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.stats = BatchStats()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[_Item] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def abandon_all(self) -> None:
        """Take no more requests and abandon those in flight: they fail with :class:`BatcherStopped` once an
        abortable policy returns (at its next decoding step). Only sets flags, so it is safe from a signal
        handler or another thread (the server calls it on Ctrl-C / SIGTERM)."""
        self._stopping = True
        for item in list(self._in_flight):
            item.abandoned = True

    async def stop(self, wait_s: float = 5.0) -> None:
        """Abandon every request (queued ones fail with :class:`BatcherStopped`), stop, and wait up to
        ``wait_s`` for the policy call in flight to return (an abortable policy returns at its next step)."""
        in_flight = list(self._in_flight)
        self.abandon_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self.queue.empty():
            _fail(self.queue.get_nowait(), BatcherStopped("the gateway is shutting down"))
        for item in in_flight:
            _fail(item, BatcherStopped("the gateway is shutting down"))
        deadline = time.monotonic() + wait_s
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def generate(self, prompt: list[int], sampling: SamplingConfig) -> Generation:
        """Sample one response for ``prompt`` (``sampling.seed`` is this prompt's own seed). Cancelling
        the awaiting task abandons the request (skipped, or aborted in the engine)."""
        if self._stopping:
            raise BatcherStopped("the gateway is shutting down")
        item = _Item(prompt, sampling, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(item)
        try:
            return await item.future
        except asyncio.CancelledError:
            item.abandoned = True
            self.stats.abandoned += 1
            raise

    async def _collect(self) -> list[_Item]:
        """The next batch: the first queued request, then every request that arrives within ``window_s``
        of the previous one (a burst of clients joins one call, however long the burst takes to arrive),
        for at most ``max_wait_s`` after the first (a steady stream cannot hold a call back for longer)."""
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        last_call = loop.time() + max(self.max_wait_s, self.window_s)
        while len(items) < self.max_batch:
            timeout = min(self.window_s, last_call - loop.time())
            if timeout <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), timeout))
            except TimeoutError:
                break
        while len(items) < self.max_batch and not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def _run(self) -> None:
        while True:
            items = [item for item in await self._collect() if not item.abandoned]  # left while queued: skipped
            if self._stopping:
                for item in items:
                    _fail(item, BatcherStopped("the gateway is shutting down"))
                continue
            groups: dict[str, list[_Item]] = {}
            for item in items:
                key = item.sampling.model_copy(update={"seed": None}).model_dump_json()
                groups.setdefault(key, []).append(item)
            for group in groups.values():
                await self._call([item for item in group if not item.abandoned])

    async def _call(self, group: list[_Item]) -> None:
        if not group:
            return
        sampling = group[0].sampling.model_copy(update={"seed": None})
        seeds = [item.sampling.seed for item in group]
        prompts = [item.prompt for item in group]
        self.stats.calls += 1
        self.stats.requests += len(group)
        self.stats.sizes.append(len(group))
        self._in_flight = group
        try:
            gens = await self._in_thread(generate_abortable, self.policy, prompts, sampling, seeds,
                                         lambda i: group[i].abandoned)
            if len(gens) != len(group):
                raise RuntimeError(f"the policy returned {len(gens)} generations for {len(group)} prompts")
        except Exception as exc:  # the upstream failed: every request of the call gets the error
            for item in group:
                _fail(item, exc)
            return
        finally:
            self._in_flight = []
        for item, gen in zip(group, gens, strict=True):
            if item.abandoned and self._stopping:  # aborted by the shutdown, not finished
                _fail(item, BatcherStopped("the gateway is shutting down"))
            elif not item.future.done():
                item.future.set_result(gen)

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a daemon thread (``asyncio.to_thread`` uses non-daemon threads that the
        interpreter waits for at exit: a policy call that does not return would keep the process up)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def deliver(setter: Callable[[], None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while the call ran
                loop.call_soon_threadsafe(setter)

        def work() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                error = exc
                deliver(lambda: None if done.done() else done.set_exception(error))
            else:
                deliver(lambda: None if done.done() else done.set_result(result))

        self._thread = threading.Thread(target=work, name="steppo-gateway-policy", daemon=True)
        self._thread.start()
        return await done


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
