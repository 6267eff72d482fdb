"""``steppo play ENV_ID``: play an episode in the terminal."""

from __future__ import annotations

import argparse
import sys

from steppo.cli.common import ENV_ARG_HELP, parse_env_kwargs, seed_value

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("play", help="play an episode yourself: type actions, see observations and rewards")
    p.add_argument("env_id", help="a registered id, e.g. steppo/MultiHopQA-v0 (see `steppo envs`); 'module:id' imports module first")
    p.add_argument("--seed", type=seed_value, default=0, help="task seed (0 <= seed < 2**63; default 0)")
    p.add_argument("--env-arg", action="append", metavar="KEY=VALUE", help=ENV_ARG_HELP)
    p.set_defaults(func=run)


def _read_action() -> str | None:
    """The next typed action, or None at the end of input (EOF, or no stdin at all: ``steppo play <&-``)."""
    if sys.stdin is None or sys.stdin.closed:
        print("action> ", end="", flush=True)
        return None
    try:
        return input("action> ")
    except EOFError:
        return None


def run(args: argparse.Namespace) -> int:
    from steppo_agent.rollout import make_checked_env

    env, obs, info = make_checked_env(args.env_id, parse_env_kwargs(args.env_arg), seed=args.seed)
    print(f"== system ==\n{info['system_prompt']}\n")
    total = 0.0
    while True:
        print(f"== observation (step {info['step']}/{info['max_steps']}) ==\n{obs}\n")
        action = _read_action()
        if action is None:
            print("\n(end of input)")
            break
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        status = "valid" if info["valid"] else f"invalid: {info.get('feedback')}"
        print(f"-- reward {float(reward):+.3f} (return {total:+.3f}) [{status}] metrics={info['metrics']}")
        if terminated or truncated:
            print(f"\n== episode {'terminated' if terminated else 'truncated'}; return {total:+.3f}; success={info.get('success')} ==")
            print(obs)
            break
    env.close()
    sys.stdout.flush()
    return 0
