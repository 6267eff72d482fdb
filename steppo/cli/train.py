"""``steppo train``: StepPO or a baseline, on-policy on an env or offline from trajectory files."""

from __future__ import annotations

import argparse
from typing import get_args

from steppo.cli.common import (
    ENV_ARG_HELP,
    check_readable_file,
    check_writable_dir,
    parse_env_kwargs,
    seed_value,
)
from steppo_agent.policies import Backend
from steppo_agent.rollout import DEFAULT_ENV
from steppo_train.config import ALGOS, ROLLOUT_DEFAULTS

__all__ = ["add_parser", "overrides_of"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=f"train a policy ({', '.join(ALGOS)})",
        description="Every TrainConfig field can be set with --set key=value (JSON values) or a YAML --config file; "
        "fields of the nested configs (rollout, sampling, policy) with dotted keys (--set rollout.group_size=8 "
        "sampling.temperature=0.7 policy.kv_cache_gib=1; their old flat names work too). The flags below are shortcuts. "
        "Precedence: algorithm defaults < --config < flags < --set.",
    )
    p.add_argument("--algo", default=ALGOS[0], help=" | ".join(ALGOS))
    p.add_argument("--config", help="YAML file of TrainConfig fields (nested mappings or dotted keys)")
    p.add_argument("--env", dest="env_id", help=f"environment id (rollout.env_id; default {DEFAULT_ENV})")
    p.add_argument("--env-arg", action="append", metavar="KEY=VALUE", help=ENV_ARG_HELP)
    p.add_argument("--eval-env-arg", action="append", metavar="KEY=VALUE",
                   help="evaluation environment option (repeatable; values as for --env-arg)")
    p.add_argument("--model", help="smollm2-135m (default), an HF model id or a local folder")
    p.add_argument("--backend", choices=get_args(Backend), help="rollout backend (policy.backend)")
    p.add_argument("--base-url", action="append", dest="base_urls", help="OpenAI-compatible server (repeatable)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--tasks", dest="num_tasks", metavar="N", type=int,
                   help=f"tasks per iteration (rollout.num_tasks; default {ROLLOUT_DEFAULTS['num_tasks']})")
    p.add_argument("--group-size", metavar="N", type=int,
                   help=f"samples per task (rollout.group_size; default {ROLLOUT_DEFAULTS['group_size']})")
    p.add_argument("--workers", dest="env_workers", metavar="N", type=int,
                   help="env worker processes (rollout.env_workers; default 0: envs step in this process)")
    p.add_argument("--max-active", metavar="N", type=int, help="most episodes in flight at once (rollout.max_active; default: all)")
    p.add_argument("--max-tokens", type=int, help="response tokens per step")
    p.add_argument("--output-dir", help="where metrics, plots and checkpoints go")
    p.add_argument("--from-trajectories", action="append", help="train offline on these JSONL files (repeatable)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the latest checkpoint in --output-dir")
    p.add_argument("--seed", type=seed_value, help="run seed (0 <= seed < 2**63)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field, e.g. --set actor_lr=1e-6 gamma=1.0 policy.kv_cache_gib=1 (repeatable: "
                        "every --set counts; a key set twice keeps its last value)")
    p.set_defaults(func=run)


def overrides_of(args: argparse.Namespace) -> dict[str, object]:
    """The config keys the flags set (flags first, then ``--set``, so ``--set`` wins)."""
    overrides: dict[str, object] = {}
    for name, key in (("env_id", "rollout.env_id"), ("num_tasks", "rollout.num_tasks"),
                      ("group_size", "rollout.group_size"), ("env_workers", "rollout.env_workers"),
                      ("max_active", "rollout.max_active"), ("model", "policy.model"), ("backend", "policy.backend"),
                      ("base_urls", "policy.base_urls"), ("iterations", "iterations"),
                      ("max_tokens", "sampling.max_tokens"), ("output_dir", "output_dir"),
                      ("from_trajectories", "from_trajectories"), ("resume", "resume"), ("seed", "seed")):
        value = getattr(args, name)
        if value is not None:
            overrides[key] = value
    if args.env_arg:
        overrides["rollout.env_kwargs"] = parse_env_kwargs(args.env_arg)
    if args.eval_env_arg:
        overrides["eval_env_kwargs"] = parse_env_kwargs(args.eval_env_arg)
    overrides.update(parse_env_kwargs(args.set, flag="--set"))
    return overrides


def run(args: argparse.Namespace) -> int:
    from steppo_train.config import load_config
    from steppo_train.trainer import train

    overrides = overrides_of(args)
    if args.config is not None:
        check_readable_file(args.config, "config file")
    config = load_config(args.algo, yaml_path=args.config, overrides=overrides)
    check_writable_dir(config.output_dir, "output")
    result = train(config)
    print(f"done: metrics in {result.metrics_path}, curves in {result.output_dir / 'learning_curves.png'}")
    return 0
