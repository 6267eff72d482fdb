"""``steppo inspect FILE``: summarise a trajectory file (and optionally plot it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steppo.cli.common import check_readable_file

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a trajectory file: success, return, steps, actions, tokens")
    p.add_argument("file", type=Path, help="a JSONL file written by `steppo rollout` / `steppo eval`")
    p.add_argument("--plot", type=Path, metavar="DIR", default=None, help="write PNG charts into DIR")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--parquet", type=Path, metavar="OUT", default=None, help="also export the per-step table to Parquet")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steppo_agent.analysis import format_split_table, format_summary, plot_summary, split_table, summarize
    from steppo_agent.trajectory_io import TrajectoryFileError, export_parquet, read_trajectories

    trajs = read_trajectories(check_readable_file(args.file, "trajectory file"))
    if not trajs:
        raise TrajectoryFileError(f"{args.file} holds no trajectories: pass a JSONL file written by "
                                  "`steppo rollout --output` or `steppo eval`.")
    summary = summarize(trajs)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        envs = sorted({t.env_id for t in trajs})
        models = sorted({f"{t.policy.backend}:{t.policy.model}" for t in trajs})
        print(format_summary(summary, title=f"{args.file}  env {', '.join(envs) or '-'}  policy {', '.join(models) or '-'}"))
        print()
        print(format_split_table(split_table(trajs)))
    if args.plot is not None:
        for path in plot_summary(trajs, args.plot):
            print(f"wrote {path}")
    if args.parquet is not None:
        print(f"wrote {export_parquet(args.file, args.parquet)}")
    return 0
