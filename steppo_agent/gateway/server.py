"""Run the gateway: blocking (:func:`serve`, the ``steppo gateway`` command) or in a background thread
(:func:`start_gateway`, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import FrameType

import uvicorn

from steppo_agent.gateway.app import Gateway, create_app
from steppo_agent.gateway.config import GatewayConfig
from steppo_agent.policies.base import Policy

__all__ = ["RunningGateway", "serve", "start_gateway"]


class _Server(uvicorn.Server):
    """uvicorn's server; Ctrl-C / SIGTERM (or :meth:`RunningGateway.stop`) first abandons the generations
    in flight (aborted in the engine, answered 503, no step recorded), so the graceful shutdown does not
    wait for them, and open episodes are written at once."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gateway.batcher.abandon_all()
        super().handle_exit(sig, frame)


def _server(policy: Policy, config: GatewayConfig) -> tuple[_Server, Gateway]:
    app = create_app(policy, config)
    gateway: Gateway = app.state.gateway
    server = _Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                    access_log=False, timeout_graceful_shutdown=5), gateway)
    return server, gateway


def serve(policy: Policy, config: GatewayConfig) -> None:
    """Serve until Ctrl-C / SIGTERM; generations in flight are then aborted and open episodes written as
    truncated (``shutdown``)."""
    _server(policy, config)[0].run()


@dataclass
class RunningGateway:
    """A gateway serving in a background thread of this process."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int
    gateway: Gateway  # the app's state: batcher stats, episode store

    @property
    def url(self) -> str:
        """The OpenAI base URL (``http://host:port/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        """Shut down (generations in flight are abandoned, open episodes written as truncated) and wait for
        the thread."""
        self.gateway.batcher.abandon_all()
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_gateway(policy: Policy, config: GatewayConfig, timeout_s: float = 30.0) -> RunningGateway:
    """Start the gateway in a daemon thread and return once it accepts connections (``port=0``: a free port)."""
    server, gateway = _server(policy, config)
    thread = threading.Thread(target=server.run, name="steppo-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start on {config.host}:{config.port}: is the port free?")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningGateway(server, thread, config.host, int(port), gateway)
