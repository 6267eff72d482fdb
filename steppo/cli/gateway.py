"""``steppo gateway``: an OpenAI-compatible server that records every chat-completion request of any
agent as one token-exact step (see docs/gateway.md).

Point the agent's OpenAI client at ``http://HOST:PORT/v1``; give each episode an ``X-Steppo-Episode``
header; end it with ``POST /steppo/v1/episodes/{id}/end``. Ended episodes are appended to ``--output``;
Ctrl-C / SIGTERM writes the open ones as truncated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steppo.cli.common import UsageError, check_writable_dir

__all__ = ["add_parser"]

DEFAULT_MODEL = "smollm2-135m"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``gateway``."""
    p = sub.add_parser("gateway", help="serve an OpenAI-compatible API that records every request as a step (JSONL)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or path (default {DEFAULT_MODEL})")
    p.add_argument("--backend", choices=("vllm", "openai", "hf"), default="vllm",
                   help="policy backend (default vllm in-process); 'openai' forwards token ids to --base-url")
    p.add_argument("--base-url", action="append", metavar="URL", help="OpenAI-compatible server root for --backend openai (repeatable)")
    p.add_argument("--dtype", default=None, help="model dtype (float32, bfloat16); default float32 on CPU")
    p.add_argument("--max-model-len", type=int, default=2048, help="prompt + response tokens per request (default 2048)")
    p.add_argument("--output", "-o", type=Path, required=True, help="JSONL file the ended episodes are appended to")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8100, help="TCP port (default 8100)")
    p.add_argument("--served-model-name", default=None, help="model name clients send (default: --model)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="response tokens when a request sets no max_tokens (default 256)")
    p.add_argument("--idle-timeout", type=float, default=600.0,
                   help="seconds without a request after which an open episode is written as truncated (default 600)")
    p.add_argument("--batch-window", type=float, default=0.005,
                   help="seconds the batcher waits after each request for another to join the same policy call "
                        "(default 0.005)")
    p.add_argument("--batch-max-wait", type=float, default=0.25,
                   help="longest a policy call waits for its batch to fill, from its first request (default 0.25)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body in bytes, larger ones get 413 before they are read (default: 1 KiB per "
                        "token of --max-model-len, at least 1 MiB)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steppo_envs.contract import optional_import

    for module in ("fastapi", "uvicorn"):  # before a model loads
        optional_import(module, "agent")
    from steppo_agent.gateway import GatewayConfig
    from steppo_agent.gateway.server import serve
    from steppo_agent.policies import PolicyConfig, make_policy

    if args.backend == "openai" and not args.base_url:
        raise UsageError("--backend openai needs --base-url URL: the root of the OpenAI-compatible inference server.")
    check_writable_dir(args.output.expanduser().parent, "--output")
    config = GatewayConfig(output=args.output, host=args.host, port=args.port, served_model_name=args.served_model_name,
                           default_max_tokens=args.max_tokens, idle_timeout_s=args.idle_timeout,
                           batch_window_s=args.batch_window, batch_max_wait_s=args.batch_max_wait,
                           max_body_bytes=args.max_body_bytes)
    policy = make_policy(PolicyConfig(backend=args.backend, model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
                                      **({"base_urls": list(args.base_url)} if args.base_url else {})))
    print(f"steppo gateway: http://{config.host}:{config.port}/v1 ({policy.backend} {policy.model}) -> {config.output}",
          flush=True)
    try:
        serve(policy, config)
    finally:
        policy.close()
    return 0
