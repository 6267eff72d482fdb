"""The step gateway: an OpenAI-compatible server in front of any steppo Policy that records every
chat-completion request as one token-exact step (prompt ids rendered by the rollout's renderer,
sampled response ids and logprobs) of an episode, written with the rollout's record schema and writer.

Modules: :mod:`~steppo_agent.gateway.config` (settings), :mod:`~steppo_agent.gateway.chat` (request
schema, rendering, tool-call parsing, response bodies), :mod:`~steppo_agent.gateway.episodes`
(episode store), :mod:`~steppo_agent.gateway.batcher` (concurrent requests -> one policy call),
:mod:`~steppo_agent.gateway.http` (body limit, id headers, disconnects, streamed steps),
:mod:`~steppo_agent.gateway.app` (FastAPI routes), :mod:`~steppo_agent.gateway.server` (uvicorn).
See docs/gateway.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steppo_agent.gateway.config import GatewayConfig

if TYPE_CHECKING:  # the real types for type checkers; at run time they load on first use (__getattr__)
    from steppo_agent.gateway.app import create_app
    from steppo_agent.gateway.server import RunningGateway, serve, start_gateway

__all__ = ["GatewayConfig", "RunningGateway", "create_app", "serve", "start_gateway"]


def __getattr__(name: str) -> Any:
    """FastAPI / uvicorn load only when the app or server is asked for."""
    if name == "create_app":
        from steppo_agent.gateway.app import create_app

        return create_app
    if name in ("RunningGateway", "serve", "start_gateway"):
        from steppo_agent.gateway import server

        return getattr(server, name)
    raise AttributeError(name)
