"""``steppo rollout`` (collect trajectories) and ``steppo eval`` (greedy evaluation table).

Both play ``--num-tasks`` tasks (reset seeds ``--seed``, ``--seed + 1``, ...) with a policy and append
each finished trajectory to a JSONL file (see docs/records.md). With a single episode (the default)
every step is printed: observation, response, reward.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any, get_args

from steppo.cli.common import ENV_ARG_HELP, UsageError, check_writable_dir, parse_env_kwargs, seed_value
from steppo_agent.policies import Backend, PolicyConfig
from steppo_agent.records import SamplingConfig
from steppo_agent.rollout import DEFAULT_ENV

__all__ = ["DEFAULT_ENV", "add_parser", "build_policy", "default_output"]

DEFAULT_MODEL: str = PolicyConfig.model_fields["model"].default
_MAX_MODEL_LEN: int = PolicyConfig.model_fields["max_model_len"].default
_MAX_TOKENS: int = SamplingConfig.model_fields["max_tokens"].default


def default_output(kind: str, env_id: str) -> Path:
    """``runs/<kind>-<env>-<YYYYmmdd-HHMMSS>.jsonl`` (the env id with ``/`` and ``:`` replaced)."""
    slug = env_id.split(":")[-1].replace("/", "_")
    return Path("runs") / f"{kind}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default=DEFAULT_ENV, help=f"environment id (default {DEFAULT_ENV}); 'module:id' imports module first")
    p.add_argument("--env-arg", action="append", metavar="KEY=VALUE", help=ENV_ARG_HELP)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or path (default {DEFAULT_MODEL})")
    p.add_argument("--backend", choices=(*get_args(Backend), "expert"), default=PolicyConfig.model_fields["backend"].default,
                   help="policy backend (default vllm); 'expert' replays the env's expert (needs --env-arg expert=true)")
    p.add_argument("--base-url", action="append", metavar="URL", help="OpenAI-compatible server root for --backend openai (repeatable)")
    p.add_argument("--dtype", default=None, help="model dtype (float32, bfloat16); default float32 on CPU")
    p.add_argument("--max-model-len", type=int, default=_MAX_MODEL_LEN,
                   help=f"prompt + response tokens per step (default {_MAX_MODEL_LEN})")
    p.add_argument("--policy", metavar="MODULE:FACTORY", default=None,
                   help="use a custom policy: FACTORY(model) must return a Policy (overrides --backend)")
    p.add_argument("-n", "--num-tasks", "--episodes", dest="num_tasks", type=int, default=1, help="number of tasks (default 1)")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="reset seed of the first task; task i uses seed + i (0 <= seed < 2**63; default 0)")
    p.add_argument("--max-tokens", type=int, default=_MAX_TOKENS, help=f"maximum response tokens per step (default {_MAX_TOKENS})")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--output", "-o", type=Path, default=None, help="JSONL file (default runs/<command>-<env>-<time>.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue --output: skip trajectory ids already in it")
    p.add_argument("--workers", type=int, default=0, help="env worker processes (default 0: envs step in this process)")
    p.add_argument("--max-active", type=int, default=None, help="most episodes in flight at once (default: all)")
    verb = p.add_mutually_exclusive_group()
    verb.add_argument("-v", "--verbose", action="store_true", default=None, help="print every step (default when playing one episode)")
    verb.add_argument("-q", "--quiet", dest="verbose", action="store_false", help="never print steps")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``rollout`` and ``eval``."""
    p = sub.add_parser("rollout", help="collect token-exact trajectories with a policy (JSONL)")
    _add_common(p)
    p.add_argument("--group-size", "-g", type=int, default=1, help="samples per task, sharing its seed (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, 0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--sampling-seed", type=seed_value, default=0,
                   help="base of the per-prompt sampling seeds (0 <= seed < 2**63; default 0)")
    p.set_defaults(func=run_rollout_cmd)

    e = sub.add_parser("eval", help="greedy evaluation: success / return / steps per split, records written")
    _add_common(e)
    e.add_argument("--split", default=None,
                   help="the env's split option, e.g. eval (the same as --env-arg split=eval)")
    e.set_defaults(func=run_eval_cmd, num_tasks=20)


def build_policy(args: argparse.Namespace) -> Any:
    """The policy the arguments ask for (``--policy`` factory or ``make_policy``)."""
    if args.policy:
        module, _, name = args.policy.partition(":")
        if not name:
            raise UsageError(f"--policy {args.policy!r} must look like MODULE:FACTORY, e.g. mypkg.policies:make.")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"--policy {args.policy!r} cannot be loaded ({exc}): check the module and factory names.") from None
        return factory(args.model)
    if args.backend == "expert":
        from steppo_agent.policies.expert import ExpertPolicy

        return ExpertPolicy(args.model, max_model_len=args.max_model_len)
    from steppo_agent.policies import make_policy

    config = PolicyConfig(backend=args.backend, model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
                          **({"base_urls": list(args.base_url)} if args.base_url else {}))
    return make_policy(config)


def _print_step(traj: Any, step: Any) -> None:
    if step.index == 0:
        print(f"\n== {traj.id} task {traj.task_id} (seed {traj.seed}) — system prompt ==\n{traj.system_prompt}")
    print(f"\n== {traj.id} step {step.index} — observation ==\n{step.observation}")
    print(f"-- response ({len(step.response_ids)} tokens, {step.finish_reason}) --\n{step.response_text}")
    kind = (step.action or {}).get("kind", "?")
    feedback = step.info.get("feedback")
    status = "valid" if step.valid else f"invalid: {feedback}"
    print(f"-- action {kind} [{status}] reward {step.reward:+.3f}")
    sys.stdout.flush()


def _print_end(traj: Any) -> None:
    how = "terminated" if traj.terminated else f"truncated ({traj.truncation_reason})"
    print(f"== {traj.id} {how}: {len(traj.steps)} steps, return {traj.return_:+.3f}, success={traj.success}")
    sys.stdout.flush()


def _run(args: argparse.Namespace, kind: str, sampling: Any, group_size: int, env_kwargs: dict[str, Any]) -> tuple[Path, list[Any]]:
    from steppo_agent.rollout import (
        RolloutConfig,
        RolloutStats,
        check_env,
        check_output,
        resumed_ids,
        run_rollout,
    )

    if args.resume and args.output is None:
        raise UsageError("--resume needs --output FILE: the file to continue.")
    output = args.output or default_output(kind, args.env)
    check_writable_dir(output.parent, "output")
    if output.is_dir():
        raise UsageError(f"--output {str(output)!r} is a folder: pass a file name, e.g. {output / 'rollout.jsonl'}.")
    config = RolloutConfig(
        env_id=args.env, env_kwargs=env_kwargs, num_tasks=args.num_tasks, group_size=group_size, seed=args.seed,
        sampling=sampling, env_workers=args.workers, max_active=args.max_active, output=output, resume=args.resume,
    )
    check_output(config)
    # everything the user typed is checked before the model loads and before the file is touched
    check_env(config.env_id, config.env_kwargs, seed=config.seed)
    resumed_ids(config, None if args.policy else (args.backend, args.model))  # a --resume onto other settings
    config.validate_env = False
    verbose = args.verbose if args.verbose is not None else config.num_episodes == 1
    policy = build_policy(args)
    stats = RolloutStats()
    existed = output.exists()
    try:
        trajs = run_rollout(
            policy, config, stats=stats,
            on_step=_print_step if verbose else None, on_trajectory=_print_end if verbose else None,
        )
    except BaseException:
        if not existed and output.exists() and output.stat().st_size == 0:
            output.unlink()  # a run that failed before its first episode (e.g. no server answered) leaves no empty file
        raise
    finally:
        policy.close()
    print(
        f"wrote {len(trajs)} trajectories to {output}"
        + (f" (skipped {stats.skipped} already there)" if stats.skipped else "")
        + f"; {stats.steps} steps, {stats.response_tokens} response tokens in {stats.wall_seconds:.1f} s"
        f" ({stats.tokens_per_second:.0f} tok/s, {stats.steps_per_second:.2f} steps/s)"
    )
    return output, trajs


def run_rollout_cmd(args: argparse.Namespace) -> int:
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                              stop=list(args.stop or []), seed=args.sampling_seed)
    _run(args, "rollout", sampling, args.group_size, parse_env_kwargs(args.env_arg))
    return 0


def run_eval_cmd(args: argparse.Namespace) -> int:
    from steppo_agent.analysis import format_split_table, split_table
    from steppo_agent.trajectory_io import read_trajectories

    env_kwargs = parse_env_kwargs(args.env_arg)
    if args.split is not None:
        env_kwargs["split"] = args.split
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.max_tokens, stop=list(args.stop or []), seed=0)
    output, _ = _run(args, "eval", sampling, 1, env_kwargs)
    trajs = read_trajectories(output)  # with --resume: the earlier records too
    print(format_split_table(split_table(trajs)))
    return 0
