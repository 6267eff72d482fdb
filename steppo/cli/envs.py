"""``steppo envs``: list the registered environment ids (bundled, then those of installed plugins)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "envs", help="list registered environments",
        description="Lists the bundled ids and those registered by installed packages through Gymnasium's "
        "'gymnasium.envs' entry point (docs/environments.md, 'Make it discoverable'). An id your own module "
        "registers works in every --env as 'module:namespace/Name-v0'.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import steppo_envs

    ids = steppo_envs.registered_ids()
    width = max(len(i) for i in ids)
    for env_id in ids:
        print(f"{env_id:<{width}}  {steppo_envs.describe(env_id)}")
    return 0
