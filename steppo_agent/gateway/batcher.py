"""Requests that arrive together are generated together: a small asyncio batcher in front of a Policy.

The first queued request opens a window of ``window_s``, and each request that arrives in it opens
another, for at most ``max_wait_s`` after the first; everything queued by then (up to ``max_batch``)
goes to one ``policy.generate`` call per distinct sampling setting, run in a worker
thread so the event loop keeps accepting requests (which queue up for the next call, as the rollout
engine's rounds do). Each request carries its own seed, so its sample does not depend on its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from steppo_agent.policies.base import Generation, Policy
from steppo_agent.records import SamplingConfig

__all__ = ["Batcher", "BatchStats"]


@dataclass
class _Item:
    prompt: list[int]
    sampling: SamplingConfig
    future: asyncio.Future[Generation]


@dataclass
class BatchStats:
    """How many policy calls served how many requests."""

    calls: int = 0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)


class Batcher:
    """Queue single prompts, generate them in batches (one worker thread, one call at a time)."""

    def __init__(self, policy: Policy, window_s: float = 0.005, max_batch: int = 64, max_wait_s: float = 0.25) -> None:
        self.policy, self.window_s, self.max_batch, self.max_wait_s = policy, window_s, max_batch, max_wait_s
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.stats = BatchStats()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def generate(self, prompt: list[int], sampling: SamplingConfig) -> Generation:
        """Sample one response for ``prompt`` (``sampling.seed`` is this prompt's own seed)."""
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Item(prompt, sampling, future))
        return await future

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
            items = await self._collect()
            groups: dict[str, list[_Item]] = {}
            for item in items:
                key = item.sampling.model_copy(update={"seed": None}).model_dump_json()
                groups.setdefault(key, []).append(item)
            for group in groups.values():
                await self._call(group)

    async def _call(self, group: list[_Item]) -> None:
        sampling = group[0].sampling.model_copy(update={"seed": None})
        seeds = [item.sampling.seed for item in group]
        prompts = [item.prompt for item in group]
        self.stats.calls += 1
        self.stats.requests += len(group)
        self.stats.sizes.append(len(group))
        try:
            gens = await asyncio.to_thread(self.policy.generate, prompts, sampling, seeds)
            if len(gens) != len(group):
                raise RuntimeError(f"the policy returned {len(gens)} generations for {len(group)} prompts")
        except Exception as exc:  # the upstream failed: every request of the call gets the error
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, gen in zip(group, gens, strict=True):
            if not item.future.done():
                item.future.set_result(gen)
