"""``steppo games make``: pre-generate a pool of TextWorld games into the cache."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("games", help="generate and cache TextWorld game pools")
    games_sub = p.add_subparsers(dest="games_command", metavar="ACTION")
    make = games_sub.add_parser("make", help="generate the games of a pool (skips cached ones)")
    make.add_argument("--preset", default="simple", help="simple, coin_collector, treasure_hunter or cooking")
    make.add_argument("--level", type=int, default=1, help="difficulty level of the preset")
    make.add_argument("--pool", choices=["train", "eval"], default="train", help="train (seeds 0..) or eval (seeds 100000..)")
    make.add_argument("--size", type=int, default=16, help="number of games in the pool")
    make.add_argument("--cache-dir", default=None, help="cache folder (default: $STEPPO_CACHE_DIR or ~/.cache/steppo)")
    make.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from steppo_envs.textworld_env.games import ensure_games, pool_refs

    refs = pool_refs(args.preset, args.level, args.pool, args.size, root=args.cache_dir)
    ensure_games(refs, desc=f"{args.preset} L{args.level} {args.pool}")
    print(f"{len(refs)} games ready in {refs[0].path.parent}")
    return 0
