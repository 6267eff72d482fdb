"""The training loop, top to bottom (cleanrl style). The maths lives in ``advantages`` / ``losses``;
credit assignment per algorithm in ``targets``; micro-batch losses in ``update``.

One iteration:
1. collect a batch of episodes with the rollout engine (or read it from trajectory files);
2. recompute the old logprobs with the trainer's weights (and log the rollout/trainer gap);
3. critic values (StepPO: last prompt token of each step; PPO: every action token);
4. advantages for the chosen algorithm;
5. K epochs of minibatch updates, micro-batches packed by token budget (data-parallel under torchrun);
6. push the new weights into the rollout policy;
7. log metrics, plot, checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from steppo_agent.records import SamplingConfig, Trajectory
from steppo_envs.config import ConfigError
from steppo_envs.progress import progress_bar
from steppo_train.batch import build_step_batch
from steppo_train.checkpoint import (
    CheckpointState,
    latest_checkpoint,
    load_checkpoint,
    rewind_outputs,
    save_checkpoint,
)
from steppo_train.config import TrainConfig
from steppo_train.evaluation import summarize
from steppo_train.logging_utils import MetricsLogger, iteration_line, plot_metrics
from steppo_train.memory import PhaseMemory, release_free_memory
from steppo_train.models import (
    ModelConfig,
    load_actor,
    load_critic,
    pack_microbatches,
    response_logprobs,
    values_at_action_tokens,
    values_at_last_prompt_token,
)
from steppo_train.precision import resolve_amp
from steppo_train.targets import compute_targets
from steppo_train.update import IterationData, actor_loss, critic_loss, make_units, pack_units

if TYPE_CHECKING:
    from steppo_agent.policies.base import Policy
    from steppo_agent.rollout import RolloutConfig

__all__ = ["TrainResult", "init_value_head", "train"]


@dataclass
class TrainResult:
    """What :func:`train` leaves behind: the output folder and the trained models (in memory)."""

    output_dir: Path
    actor: nn.Module
    critic: nn.Module | None

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"


def init_value_head(critic: nn.Module, seed: int, std: float = 1e-2) -> None:
    """Initialise the critic's value head from ``seed`` (no global RNG), so runs are reproducible."""
    g = torch.Generator().manual_seed(seed)
    head = critic.value_head  # type: ignore[union-attr]
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * std)
        head.bias.zero_()


# -- small helpers ---------------------------------------------------------------------------------
def _dist() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


@torch.no_grad()
def _batched(fn, prompts, responses, token_budget, pad_multiple=1):  # type: ignore[no-untyped-def]
    """Run ``fn(prompts_mb, responses_mb) -> list`` over micro-batches packed by token budget, in row
    order; results come back on the CPU (targets and logging live there)."""
    out: list = [None] * len(prompts)
    for mb in pack_microbatches(list(zip(prompts, responses, strict=True)), token_budget, pad_multiple):
        res = fn([prompts[i] for i in mb], [responses[i] for i in mb])
        for i, r in zip(mb, res, strict=True):
            out[i] = r.detach().cpu()
    return out


def _allreduce_grads(params: list[nn.Parameter], world: int) -> None:
    """Sum gradients across ranks (each rank's micro-batch weights already use the global minibatch size)."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def _rollout_config(config: TrainConfig, iteration: int, path: Path) -> RolloutConfig:
    """The on-policy rollout of iteration ``iteration``, written to (and resumed from) ``path``."""
    from steppo_agent.rollout import RolloutConfig

    return RolloutConfig(
        env_id=config.env_id,
        env_kwargs=config.env_kwargs,
        num_tasks=config.tasks_per_iteration,
        group_size=config.group_size,
        seed=config.seed + iteration * config.tasks_per_iteration,
        sampling=SamplingConfig(
            temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens,
            seed=config.seed * 1_000_003 + iteration,
        ),
        env_workers=config.env_workers,
        output=path,
        resume=True,
        progress=True,
        validate_env=False,  # checked once before training (_preflight)
    )


def _rollout_path(out_dir: Path, iteration: int) -> Path:
    return out_dir / "rollouts" / f"iter_{iteration:06d}.jsonl"


def _collect(config: TrainConfig, policy, iteration: int, out_dir: Path) -> list[Trajectory]:  # type: ignore[no-untyped-def]
    """On-policy episodes for one iteration (written to rollouts/iter_N.jsonl; a crashed iteration resumes)."""
    from steppo_agent.rollout import run_rollout
    from steppo_agent.trajectory_io import read_trajectories

    path = _rollout_path(out_dir, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_rollout(policy, _rollout_config(config, iteration, path))
    return read_trajectories(path)


def _evaluate(config: TrainConfig, policy, iteration: int, out_dir: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Greedy episodes on the evaluation tasks (``eval_env_kwargs``), summarised with bootstrap CIs."""
    from steppo_agent.rollout import RolloutConfig, run_rollout

    path = out_dir / "eval" / f"iter_{iteration:06d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rollout = RolloutConfig(
        env_id=config.env_id,
        env_kwargs={**config.env_kwargs, **config.eval_env_kwargs},
        num_tasks=config.eval_tasks,
        group_size=1,
        seed=1_000_000,
        sampling=SamplingConfig(temperature=0.0, max_tokens=config.max_tokens),
        env_workers=config.env_workers,
        output=path,
        progress=True,
    )
    return summarize(run_rollout(policy, rollout)).as_metrics("eval")


def _offline_batch(config: TrainConfig, pool: list[Trajectory], iteration: int) -> list[Trajectory]:
    """Iteration ``i`` of offline training takes the next ``tasks_per_iteration * group_size`` trajectories (cycling)."""
    n = min(len(pool), config.tasks_per_iteration * config.group_size)
    start = (iteration * n) % len(pool)
    return [pool[(start + j) % len(pool)] for j in range(n)]


def _push(policy, actor: nn.Module) -> None:  # type: ignore[no-untyped-def]
    """Send the actor's weights to the rollout policy (in-process vLLM, HF, or a server by file path)."""
    state = {k: v.detach().cpu() for k, v in actor.state_dict().items()}
    if hasattr(policy, "load_weights"):
        policy.load_weights(state)
    elif hasattr(policy, "load_weights_from_path"):
        from safetensors.torch import save_file

        path = Path(os.environ.get("STEPPO_WEIGHTS_DIR", "/dev/shm")) / f"steppo-weights-{os.getpid()}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}, str(path))
        policy.load_weights_from_path(str(path))
    else:
        raise TypeError(f"policy backend {type(policy).__name__} cannot receive weights.")


def _preflight(config: TrainConfig) -> None:
    """Check what the user named before any model loads: the env and its options / data (train and
    eval), or the offline trajectory files. Raises a :class:`~steppo_envs.UserError`."""
    from steppo_agent.rollout import check_env
    from steppo_agent.trajectory_io import TrajectoryFileError

    if not config.resume and latest_checkpoint(config.output_dir) is not None:
        raise ConfigError(f"{config.output_dir} already holds checkpoints of an earlier run: pass --resume to continue "
                          "it, or choose another --output-dir.")
    if config.from_trajectories:
        missing = [f for f in config.from_trajectories if not Path(f).is_file()]
        if missing:
            raise TrajectoryFileError(f"--from-trajectories {', '.join(missing)}: no such file; pass JSONL files "
                                      "written by `steppo rollout --output`.")
        return
    check_env(config.env_id, config.env_kwargs, seed=config.seed)
    if config.eval_every > 0 and config.eval_env_kwargs:
        check_env(config.env_id, {**config.env_kwargs, **config.eval_env_kwargs}, seed=1_000_000)


def _rewind(config: TrainConfig, out_dir: Path, start: int, checkpoint: Path | None, policy: Policy | None) -> None:
    """Make ``out_dir`` agree with a run that continues at iteration ``start`` (see
    :func:`~steppo_train.checkpoint.rewind_outputs`) and say what was removed; the interrupted
    iteration's rollouts are continued only if they were collected with this run's settings."""
    removed = rewind_outputs(out_dir, start)
    rows = f"{removed} metrics row(s)"
    if checkpoint is not None:
        print(f"resumed from {checkpoint} at iteration {start}" + (f"; removed {rows} written after it" if removed else ""))
    elif config.resume:
        print(f"steppo: --resume: no checkpoint in {out_dir}: starting from iteration 0"
              + (f"; removed {rows} of the interrupted run" if removed else ""), file=sys.stderr)
    elif removed:
        print(f"steppo: {out_dir} held {rows} of an earlier run that saved no checkpoint: removed them, starting "
              "from iteration 0.", file=sys.stderr)
    path = _rollout_path(out_dir, start)
    if policy is not None and path.exists() and (difference := _rollout_difference(config, start, path, policy)):
        path.unlink()
        print(f"steppo: {path} was collected with {difference}: collecting iteration {start} again.", file=sys.stderr)


def _rollout_difference(config: TrainConfig, iteration: int, path: Path, policy: Policy) -> str | None:
    """How the records in ``path`` were collected differently from this run's iteration ``iteration``."""
    from steppo_agent.trajectory_io import iter_trajectories, settings_difference

    rollout = _rollout_config(config, iteration, path)
    for traj in iter_trajectories(path):
        if traj.env_id != rollout.env_id:
            return f"env {traj.env_id}, not {rollout.env_id}"
        difference = settings_difference(traj, env_kwargs=rollout.env_kwargs, sampling=rollout.sampling,
                                         policy=(policy.backend, policy.model))
        if difference is not None:
            return difference
    return None


# -- the loop ----------------------------------------------------------------------------------------
def train(config: TrainConfig, *, policy=None) -> TrainResult:  # type: ignore[no-untyped-def]
    """Train ``config.algo``: metrics.jsonl, learning_curves.png and checkpoints/ go to ``config.output_dir``.

    ``policy`` overrides the rollout policy built from the config (e.g. a policy shared with other code).
    """
    from steppo_agent.default_model import resolve_model

    config.validate()
    rank, world = _dist()
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(config.model)
    _preflight(config)

    # models and optimizers (on this rank's GPU when there is one)
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    actor = load_actor(ModelConfig(model_path, config.dtype, config.gradient_checkpointing,
                                   trainable_layers=config.trainable_layers)).to(device)
    critic = (
        load_critic(ModelConfig(resolve_model(config.critic_model or config.model), config.dtype,
                                config.gradient_checkpointing, trainable_layers=config.trainable_layers))
        if config.uses_critic
        else None
    )
    if critic is not None:
        init_value_head(critic, config.seed)
        critic.to(device)
    reference = load_actor(ModelConfig(model_path, config.dtype)).to(device).eval() if config.kl_coef > 0 else None
    actor_params = [p for p in actor.parameters() if p.requires_grad]
    optimizers = {"actor": torch.optim.AdamW(actor_params, lr=config.actor_lr, weight_decay=config.weight_decay)}
    critic_params = [p for p in critic.parameters() if p.requires_grad] if critic is not None else []
    if critic is not None:
        optimizers["critic"] = torch.optim.AdamW(critic_params, lr=config.critic_lr, weight_decay=config.weight_decay)

    state = CheckpointState(next_iteration=0, policy_version=0)
    ckpt = latest_checkpoint(out_dir) if config.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, actor, optimizers, critic)

    # the rollout policy (rank 0 only) or the offline pool
    offline: list[Trajectory] = []
    owns_policy = False
    if config.from_trajectories:
        from steppo_agent.trajectory_io import read_trajectories

        offline = [t for f in config.from_trajectories for t in read_trajectories(f)]
        if not offline:
            raise ConfigError(f"no trajectories in {config.from_trajectories}: check the files or run `steppo rollout` first.")
    elif rank == 0 and policy is None:
        from steppo_agent.policies import PolicyConfig, make_policy

        policy = make_policy(PolicyConfig(
            backend=config.backend, model=config.model, max_model_len=config.max_model_len, kv_cache_gib=config.kv_cache_gib,
            **({"base_urls": config.base_urls} if config.base_urls else {}),
        ))
        owns_policy = True
    if rank == 0:
        _rewind(config, out_dir, state.next_iteration, ckpt, policy)
    if policy is not None and state.next_iteration > 0:
        _push(policy, actor)

    pad = config.pad_multiple
    use_amp = resolve_amp(config.amp, device, announce=rank == 0) if config.dtype == "float32" else False

    def amp():  # type: ignore[no-untyped-def]
        """bfloat16 autocast around forward passes (a no-op unless amp resolved to on)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

    logger = MetricsLogger(out_dir / "metrics.jsonl", tensorboard=config.tensorboard) if rank == 0 else None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    memory = PhaseMemory(trim=config.trim_memory)
    for iteration in range(state.next_iteration, config.iterations):
        t_start = time.perf_counter()
        metrics: dict[str, float] = {}

        # 1. collect (rank 0) and share
        if offline:
            trajectories = _offline_batch(config, offline, iteration)
        else:
            box: list = [_collect(config, policy, iteration, out_dir) if rank == 0 else None]
            if world > 1:
                dist.broadcast_object_list(box, src=0)
            trajectories = box[0]
        t_rollout = time.perf_counter() - t_start
        memory.after("rollout")
        metrics.update(summarize(trajectories).as_metrics("charts"))
        batch = build_step_batch(trajectories)
        n_tokens = sum(len(r) for r in batch.response_ids)
        metrics["rollout/steps"] = float(batch.num_rows)
        metrics["rollout/response_tokens"] = float(n_tokens)
        metrics["rollout/invalid_rate"] = metrics["charts/invalid_rate"]
        metrics["rollout/truncated_rate"] = float(batch.truncated.float().mean())

        # 2. old logprobs with the trainer's weights; the gap to what the rollout engine sampled with
        actor.eval()
        if config.algo == "sft":  # maximum likelihood needs no old policy: skip the forward pass
            old_logprobs = [torch.zeros(len(r)) for r in batch.response_ids]
        else:
            with amp():
                old_logprobs = _batched(lambda p, r: response_logprobs(actor, p, r, pad_multiple=pad), batch.prompt_ids,
                                        batch.response_ids, config.token_budget, pad)
        gaps = [
            (o - torch.tensor(s)).abs() for o, s in zip(old_logprobs, batch.rollout_logprobs, strict=True)
            if len(s) and len(s) == o.numel() and config.algo != "sft"
        ]
        if gaps:
            flat = torch.cat(gaps)
            metrics["rollout/logprob_gap_mean"] = float(flat.mean())
            metrics["rollout/logprob_gap_max"] = float(flat.max())
        memory.after("old_logprobs")
        with amp():
            ref_logprobs = (
                _batched(lambda p, r: response_logprobs(reference, p, r, pad_multiple=pad), batch.prompt_ids,
                         batch.response_ids, config.token_budget, pad)
                if reference is not None
                else None
            )

        # 3. values
        step_values = token_values = None
        if critic is not None:
            critic.eval()
            with amp():
                if config.step_advantages:
                    step_values = torch.stack(_batched(
                        lambda p, r: list(values_at_last_prompt_token(critic, p, pad_multiple=pad)), batch.prompt_ids,
                        batch.response_ids, config.token_budget, pad,
                    ))
                    metrics["charts/value_mean"] = float(step_values.mean())
                else:
                    token_values = _batched(lambda p, r: values_at_action_tokens(critic, p, r, pad_multiple=pad),
                                            batch.prompt_ids, batch.response_ids, config.token_budget, pad)

        memory.after("values")

        # 4. advantages
        targets = compute_targets(config, batch, step_values=step_values, token_values=token_values)
        data = IterationData(batch, old_logprobs, targets, ref_logprobs, make_units(config, batch))
        if targets.step_advantages is not None:
            metrics["charts/advantage_abs_mean"] = float(targets.step_advantages.abs().mean())

        # 5. K epochs of minibatch updates
        actor.train()
        if critic is not None:
            critic.train()
        generator = torch.Generator().manual_seed(config.seed * 7919 + iteration)
        sums: dict[str, float] = {}
        n_minibatches = 0
        bar = progress_bar(total=config.ppo_epochs * math.ceil(len(data.units) / config.minibatch_size),
                           desc=f"update {iteration + 1}", unit="minibatch", enabled=rank == 0)
        for _epoch in range(config.ppo_epochs):
            order = torch.randperm(len(data.units), generator=generator).tolist()
            for start in range(0, len(order), config.minibatch_size):
                mb_units = order[start : start + config.minibatch_size]
                mb_rows = [r for u in mb_units for r in data.units[u]]
                mb_tokens = sum(len(batch.response_ids[r]) for r in mb_rows)
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                packs = pack_units([data.units[u] for u in mb_units], batch, config.token_budget, pad)
                for pack in packs[rank::world]:
                    units = [mb_units[i] for i in pack]
                    with amp():
                        loss, logged = actor_loss(config, actor, data, units, len(mb_units), mb_tokens)
                    loss.backward()
                    for k, v in logged.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if critic is not None:
                        rows = [r for u in units for r in data.units[u]]
                        with amp():
                            vloss, vlogged = critic_loss(config, critic, data, rows, len(mb_rows), mb_tokens)
                        vloss.backward()
                        for k, v in vlogged.items():
                            sums[k] = sums.get(k, 0.0) + v
                _allreduce_grads(actor_params, world)
                metrics_gn = float(torch.nn.utils.clip_grad_norm_(actor_params, config.max_grad_norm))
                sums["losses/actor_grad_norm"] = sums.get("losses/actor_grad_norm", 0.0) + metrics_gn
                optimizers["actor"].step()
                if critic is not None:
                    _allreduce_grads(critic_params, world)
                    torch.nn.utils.clip_grad_norm_(critic_params, config.max_grad_norm)
                    optimizers["critic"].step()
                n_minibatches += 1
                bar.update(1)
                if config.trim_memory:  # the update's activations leave the most free heap behind
                    release_free_memory(collect=False)
        bar.close()
        metrics.update({k: v / max(1, n_minibatches) for k, v in sums.items()})
        t_update = time.perf_counter() - t_start - t_rollout
        memory.after("update")

        # 6. push the new weights into the rollout policy
        if policy is not None:
            _push(policy, actor)
            state.policy_version += 1
            memory.after("push")

        # 7. log, evaluate, plot, checkpoint
        state.next_iteration = iteration + 1
        if rank == 0:
            if policy is not None and config.eval_every and (iteration + 1) % config.eval_every == 0:
                metrics.update(_evaluate(config, policy, iteration + 1, out_dir))
                memory.after("eval")
            metrics["time/rollout_s"] = t_rollout
            metrics["time/update_s"] = t_update
            metrics["time/iteration_s"] = time.perf_counter() - t_start
            metrics["perf/update_tokens_per_s"] = n_tokens * config.ppo_epochs / max(t_update, 1e-9)
            metrics.update(memory.take())
            metrics["perf/peak_rss_gib"] = metrics["memory/peak_rss_gib"]
            assert logger is not None
            logger.log(iteration, {k: v for k, v in metrics.items() if math.isfinite(v)})
            print(iteration_line(iteration, config.iterations, metrics), flush=True)
            plot_metrics({config.algo: out_dir / "metrics.jsonl"}, out_dir / "learning_curves.png", title=f"{config.algo} on {config.env_id}")
            if (iteration + 1) % config.save_every == 0 or iteration + 1 == config.iterations:
                save_checkpoint(out_dir, iteration, state, actor, optimizers, critic, tokenizer=tokenizer, config=config.to_dict())
    if logger is not None:
        logger.close()
    if owns_policy:
        policy.close()
    if world > 1:
        dist.barrier()
    return TrainResult(out_dir, actor, critic)
