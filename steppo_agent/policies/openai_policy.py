"""Policy over OpenAI-compatible HTTP servers (vLLM's first), token ids in and out.

Each prompt is one ``POST {base}/v1/completions`` with ``prompt`` = the token-id list,
``logprobs: 0`` and ``return_tokens_as_token_ids: true`` (tokens come back as ``"token_id:123"``,
so nothing is re-tokenised; vLLM's ``token_ids`` field is used when present). The batch runs
concurrently (``asyncio.gather``) on a background event loop that owns one pooled
``httpx.AsyncClient``, behind the synchronous :meth:`OpenAIPolicy.generate`.

* Several ``base_urls``: each request goes to the server with the fewest requests in flight
  (ties: round-robin); a retry moves to the next server.
* Connection errors, timeouts, HTTP 429 and 5xx are retried ``max_retries`` times with exponential
  backoff; if no server answers, :class:`PolicyServerError` names the URLs and the fix.
* A malformed answer (bad JSON, missing fields, other 4xx such as a too-long prompt) gives a
  ``Generation`` with ``finish_reason="error"`` and no ids, never an exception.
* Weight push: :meth:`OpenAIPolicy.load_weights_from_path` (vLLM with ``VLLM_SERVER_DEV_MODE=1``).
* Prefix-cache counters: :meth:`OpenAIPolicy.cache_stats` scrapes each server's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from steppo_agent.default_model import resolve_model
from steppo_agent.policies import error_generation, resolve_seeds
from steppo_agent.policies.base import Generation
from steppo_agent.policies.vllm_metrics import parse_prometheus_text, prometheus_prefix_cache
from steppo_agent.policies.weight_sync import WEIGHT_SYNC_EXTENSION
from steppo_agent.records import SamplingConfig
from steppo_envs.config import ConfigError, UserError

__all__ = ["OpenAIPolicy", "PolicyServerError", "parse_completion"]

T = TypeVar("T")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class PolicyServerError(UserError, ConnectionError):
    """No OpenAI-compatible server answered; the message names the URLs and the fix."""


class _Transient(Exception):
    """A retryable failure (connection error, timeout, 429/5xx)."""


def _normalise(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def parse_completion(body: Any, tokenizer: Any) -> Generation:
    """Turn one ``/v1/completions`` JSON body into a :class:`Generation` (``"error"`` if malformed)."""
    try:
        choice = body["choices"][0]
        lp = choice["logprobs"]
        token_logprobs = [float(x) for x in lp["token_logprobs"]]
        ids_field = choice.get("token_ids")
        if ids_field is not None:
            ids = [int(t) for t in ids_field]
        else:
            ids = [int(str(t).removeprefix("token_id:")) for t in lp["tokens"]]
        if len(ids) != len(token_logprobs):
            return error_generation()
        reason = choice.get("finish_reason")
        return Generation(
            token_ids=ids,
            logprobs=token_logprobs,
            text=tokenizer.decode(ids, skip_special_tokens=True),
            finish_reason=reason if reason in ("stop", "length") else "error",
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return error_generation()


class OpenAIPolicy:
    """A :class:`~steppo_agent.policies.base.Policy` over one or more OpenAI-compatible servers.

    Args:
        model: model name or path; its tokenizer (loaded locally via ``resolve_model``) renders
            prompts and decodes responses.
        base_urls: server roots (``http://host:port`` or ``.../v1``).
        served_model_name: the ``model`` field of requests; ``None`` asks ``/v1/models`` once.
        api_key: bearer token, if the server wants one.
        max_model_len: prompt + response tokens (prompts at or above it get an ``"error"`` result).
        timeout_s: per-request timeout.
        max_retries: retries per request after transient failures.
        retry_backoff_s: first backoff delay (doubles, capped at 8 s).
        max_concurrency: simultaneous requests (and pooled connections).
    """

    backend = "openai"
    wants_infos = False

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        base_urls: Sequence[str] = ("http://127.0.0.1:8000",),
        served_model_name: str | None = None,
        api_key: str | None = None,
        max_model_len: int = 2048,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.5,
        max_concurrency: int = 64,
    ) -> None:
        import httpx
        from transformers import AutoTokenizer

        if not base_urls:
            raise ConfigError("OpenAIPolicy needs at least one base URL: pass base_urls=['http://127.0.0.1:8000'].")
        self.model = model
        self.model_path = resolve_model(model)
        self.version = 0
        self.max_model_len = max_model_len
        self.base_urls = list(dict.fromkeys(_normalise(u) for u in base_urls))
        self.served_model_name = served_model_name
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._in_flight = dict.fromkeys(self.base_urls, 0)
        self._round_robin = itertools.count()
        self._max_concurrency = max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="steppo-openai-policy", daemon=True)
        self._thread.start()

        async def make_client() -> tuple[Any, asyncio.Semaphore]:
            limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
            client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s), limits=limits)
            return client, asyncio.Semaphore(max_concurrency)

        self._client, self._semaphore = self._run(make_client())

    # -- plumbing --------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _pick(self, attempt: int, previous: str | None) -> str:
        """The least-loaded server (round-robin among ties); a retry avoids ``previous`` if it can."""
        candidates = [u for u in self.base_urls if u != previous] or self.base_urls
        low = min(self._in_flight[u] for u in candidates)
        ties = [u for u in candidates if self._in_flight[u] == low]
        return ties[(next(self._round_robin) + attempt) % len(ties)]

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None, url: str | None = None) -> Any:
        """Send one request with retries; return the ``httpx.Response`` of a non-transient answer."""
        import httpx

        failures: list[str] = []
        previous: str | None = None
        for attempt in range(self.max_retries + 1):
            base = url or self._pick(attempt, previous)
            previous = base
            self._in_flight[base] = self._in_flight.get(base, 0) + 1
            try:
                async with self._semaphore:
                    response = await self._client.request(method, f"{base}{path}", json=payload)
                if response.status_code in _RETRY_STATUS:
                    raise _Transient(f"HTTP {response.status_code} from {base}")
                return response
            except (httpx.TransportError, _Transient) as exc:
                failures.append(f"{base}: {type(exc).__name__} {exc}".strip())
            finally:
                self._in_flight[base] -= 1
            if attempt < self.max_retries:
                await asyncio.sleep(min(self.retry_backoff_s * 2**attempt, 8.0))
        targets = url or ", ".join(self.base_urls)
        raise PolicyServerError(
            f"no OpenAI-compatible server answered at {targets} after {self.max_retries + 1} attempts "
            f"(last: {failures[-1] if failures else 'none'}): start one (e.g. python -m "
            "vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000 --enforce-eager) "
            "or fix base_urls."
        )

    async def _served_name(self) -> str:
        if self.served_model_name is None:
            response = await self._request("GET", "/models", None)
            try:
                self.served_model_name = str(response.json()["data"][0]["id"])
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise PolicyServerError(
                    f"could not read the model name from {response.url}: pass served_model_name=... explicitly."
                ) from exc
        return self.served_model_name

    # -- sampling --------------------------------------------------------------------------------

    async def _one(self, prompt: Sequence[int], sampling: SamplingConfig, seed: int | None, name: str) -> Generation:
        room = self.max_model_len - len(prompt)
        if room < 1 or not prompt:
            return error_generation()
        payload: dict[str, Any] = {
            "model": name,
            "prompt": [int(t) for t in prompt],
            "max_tokens": min(sampling.max_tokens, room),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "include_stop_str_in_output": True,
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if seed is not None and sampling.temperature > 0:
            payload["seed"] = int(seed)
        response = await self._request("POST", "/completions", payload)
        if response.status_code != 200:
            return error_generation()
        try:
            body = response.json()
        except ValueError:
            return error_generation()
        return parse_completion(body, self.tokenizer)

    async def _generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, seeds: list[int | None]
    ) -> list[Generation]:
        name = await self._served_name()
        return list(await asyncio.gather(*(self._one(p, sampling, s, name) for p, s in zip(prompts, seeds, strict=True))))

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int | None] | None = None,
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt, all requests concurrently (see ``Policy.generate``)."""
        per_prompt_seeds = resolve_seeds(len(prompts), sampling, seeds)
        return self._run(self._generate(prompts, sampling, per_prompt_seeds))

    # -- engine statistics --------------------------------------------------------------------------

    async def _scrape(self, root: str) -> tuple[int, int] | None:
        import httpx

        try:
            response = await self._client.get(f"{root}/metrics")
        except httpx.HTTPError:
            return None
        return prometheus_prefix_cache(parse_prometheus_text(response.text)) if response.status_code == 200 else None

    def cache_stats(self) -> tuple[int, int] | None:
        """``(queries, hits)``: the prefix-cache counters (prompt tokens) summed over every server, scraped
        from each server's Prometheus ``/metrics`` (``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits``);
        None when any server does not expose them (another server kind, or metrics off). One attempt, no
        retries. See :func:`~steppo_agent.policies.base.prefix_cache_stats`."""
        async def scrape_all() -> list[tuple[int, int] | None]:
            return list(await asyncio.gather(*(self._scrape(b.removesuffix("/v1")) for b in self.base_urls)))

        readings = self._run(scrape_all())
        if any(r is None for r in readings):
            return None
        return (sum(r[0] for r in readings if r), sum(r[1] for r in readings if r))

    # -- weights ---------------------------------------------------------------------------------

    async def _push(self, path: str) -> None:
        for base in self.base_urls:
            root = base.removesuffix("/v1")
            for body in (
                {"method": "steppo_reload_weights", "kwargs": {"path": path}},
                None,  # then drop cached prompt blocks of the old weights
            ):
                if body is None:
                    response = await self._request("POST", "/reset_prefix_cache", None, url=root)
                else:
                    response = await self._request("POST", "/collective_rpc", body, url=root)
                if response.status_code != 200:
                    raise RuntimeError(
                        f"weight push to {root} failed (HTTP {response.status_code}: {response.text[:200]}): "
                        f"start the server with VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls {WEIGHT_SYNC_EXTENSION} "
                        "(steppo_agent.policies.server.start_vllm_server does both)."
                    )

    def load_weights_from_path(self, path: str) -> int:
        """Reload every server's weights from a safetensors file / folder readable by the servers.

        Needs vLLM servers started with ``VLLM_SERVER_DEV_MODE=1`` and the steppo worker extension
        (see :func:`steppo_agent.policies.server.start_vllm_server`). Returns the new ``version``.
        """
        self._run(self._push(str(path)))
        self.version += 1
        return self.version

    def close(self) -> None:
        """Close the HTTP client and stop the background event loop."""
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
