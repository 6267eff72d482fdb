"""The training loop, top to bottom (cleanrl style). The maths lives in ``advantages`` / ``losses``;
credit assignment per algorithm in ``targets``; micro-batch losses in ``update``.

One iteration:
1. collect a batch of episodes with the rollout engine (or read it from trajectory files);
2. recompute the old logprobs with the trainer's weights (and log the rollout/trainer gap);
3. critic values (StepPO: last prompt token of each step; PPO: every action token);
4. advantages for the chosen algorithm;
5. K epochs of minibatch updates, micro-batches packed by token budget (each rank its share under
   torchrun: ``parallel`` = ddp or fsdp, :mod:`steppo_train.parallel`);
6. push the new weights into the rollout policy (with ``async_rollout`` the next batch is collected in
   the background during 2-5, and the push first waits for that collection: see
   :mod:`steppo_train.async_rollout`);
7. evaluate, log metrics, plot, checkpoint.

Each phase is a named function below (``collect_phase`` ... ``report_phase``) over a :class:`Run`
(models, optimizers, rollout source, bookkeeping) that :func:`setup` builds; :func:`train` is the
loop. The rollout side (collection, evaluation, pre-flight checks, rewinding on resume) lives in
:mod:`steppo_train.rollout_side`; weights reach the rollout engine through
:func:`steppo_agent.policies.weight_sync.push_weights`.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from steppo_agent.policies.weight_sync import push_weights
from steppo_envs.config import ConfigError
from steppo_envs.progress import progress_bar
from steppo_train.async_rollout import (
    CollectedBatch,
    RolloutWorker,
    collect_batch,
    row_staleness,
)
from steppo_train.batch import StepBatch, build_step_batch
from steppo_train.checkpoint import CheckpointState, latest_checkpoint, load_checkpoint, save_checkpoint
from steppo_train.config import TrainConfig
from steppo_train.diagnostics import RatioLevel, explained_variance, flat_values, policy_movement
from steppo_train.iteration_metrics import batch_metrics, rollout_metrics
from steppo_train.logging_utils import MetricsLogger, iteration_line, plot_metrics
from steppo_train.lora import rollout_state_dict
from steppo_train.memory import PhaseMemory, release_free_memory
from steppo_train.models import (
    Critic,
    ModelConfig,
    init_value_head,
    load_actor,
    load_critic,
    response_logprobs,
    values_at_action_tokens,
    values_at_last_prompt_token,
)
from steppo_train.parallel import (
    any_rank,
    clip_gradients,
    full_model_state,
    gradient_sync,
    join_group,
    leave_group,
    local_device,
    rank_share,
    wrap_actor,
    wrap_critic,
)
from steppo_train.precision import resolve_amp
from steppo_train.rollout_side import evaluate, offline_batch, preflight, rewind
from steppo_train.run_state import Run, TrainResult
from steppo_train.targets import compute_targets
from steppo_train.update import (
    IterationData,
    actor_loss,
    behaviour_logprobs,
    critic_loss,
    make_units,
    pack_units,
)

if TYPE_CHECKING:
    from steppo_agent.policies.base import Policy

__all__ = ["Run", "TrainResult", "init_value_head", "setup", "train"]  # Run, TrainResult: steppo_train.run_state


def _models(config: TrainConfig, model_path: str, device: torch.device) -> tuple[nn.Module, Critic | None, nn.Module | None]:
    """Actor, critic (steppo/ppo) and frozen reference (``kl_coef > 0``) on ``device``."""
    from steppo_agent.default_model import resolve_model

    actor = load_actor(ModelConfig(model_path, config.dtype, config.gradient_checkpointing,
                                   trainable_layers=config.trainable_layers, lora=config.lora, seed=config.seed)).to(device)
    critic = None
    if config.uses_critic:
        critic = load_critic(ModelConfig(resolve_model(config.critic_model or config.policy.model), config.dtype,
                                         config.gradient_checkpointing, trainable_layers=config.trainable_layers,
                                         lora=config.lora if config.lora.critic else None, seed=config.seed + 1))
        init_value_head(critic, config.seed, config.value_head_init_std)
        critic.to(device)
    reference = load_actor(ModelConfig(model_path, config.dtype)).to(device).eval() if config.kl_coef > 0 else None
    return actor, critic, reference


def _rollout_source(run: Run, policy: Policy | None) -> None:
    """The offline pool (``from_trajectories``) or the rollout policy (rank 0; built from the config
    unless the caller passed one)."""
    config = run.config
    if config.from_trajectories:
        from steppo_agent.trajectory_io import read_trajectories

        run.offline = [t for f in config.from_trajectories for t in read_trajectories(f)]
        if not run.offline:
            raise ConfigError(f"no trajectories in {config.from_trajectories}: check the files or run `steppo rollout` first.")
    elif run.rank == 0 and policy is None:
        from steppo_agent.policies import make_policy

        policy = make_policy(config.policy)
        run.owns_policy = True
    run.policy = policy


def setup(config: TrainConfig, policy: Policy | None = None) -> Run:
    """Check the config and the env, load the models and optimizers, resume the newest checkpoint
    (``resume``), make the rollout source, and rewind the output folder to where the run continues."""
    from transformers import AutoTokenizer

    from steppo_agent.default_model import resolve_model

    config.validate()
    par = join_group(config.parallel)
    rank = par.rank
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(config.policy.model)
    preflight(config)
    device = local_device()
    actor, critic, reference = _models(config, model_path, device)
    use_amp = resolve_amp(config.amp, device, announce=rank == 0) if config.dtype == "float32" else False
    wrap_actor(par, actor, bf16=use_amp)  # before the optimizers: fsdp swaps the parameters for shards
    wrap_critic(par, critic, bf16=use_amp)
    run = Run(config, rank, par.world, device, out_dir, actor, critic, reference, optimizers={},
              state=CheckpointState(next_iteration=0, policy_version=0), use_amp=use_amp,
              memory=PhaseMemory(trim=config.trim_memory), par=par)
    run.optimizers["actor"] = torch.optim.AdamW(run.params("actor"), lr=config.actor_lr, weight_decay=config.weight_decay)
    if critic is not None:
        run.optimizers["critic"] = torch.optim.AdamW(run.params("critic"), lr=config.critic_lr, weight_decay=config.weight_decay)
    ckpt = latest_checkpoint(out_dir) if config.resume else None
    if ckpt is not None:
        run.state = load_checkpoint(ckpt, actor, run.optimizers, critic)
    _rollout_source(run, policy)
    par.pushes = any_rank(par, run.policy is not None)
    if rank == 0:
        rewind(config, out_dir, run.state.next_iteration, ckpt, run.policy)
    if run.state.next_iteration > 0:
        _push_weights(run)
    run.logger = MetricsLogger(out_dir / "metrics.jsonl", tensorboard=config.tensorboard) if rank == 0 else None
    run.tokenizer = AutoTokenizer.from_pretrained(model_path)
    return run


def _push_weights(run: Run) -> bool:
    """The actor's full weights into the rollout policy (rank 0 holds it): gathered from the shards
    under fsdp (a collective every rank joins), with LoRA adapters merged into the base weights under
    their original names. Returns whether this rank pushed."""
    if not run.par.pushes:
        return False
    if run.par.sharded:
        weights = full_model_state(run.actor)
    else:
        weights = rollout_state_dict(run.actor) if run.policy is not None else {}
    if run.policy is None:
        return False
    push_weights(run.policy, weights, run.config.weights_dir)
    return True


# -- the phases of one iteration --------------------------------------------------------------------
def collect_phase(run: Run, worker: RolloutWorker | None, iteration: int) -> tuple[CollectedBatch, int | None]:
    """1. Episodes for this iteration: the next offline slice, or a rollout on rank 0 (taken from the
    background ``worker`` with ``async_rollout``, else collected now) broadcast to all ranks; with the
    rollout policy's weight version now (None offline), which the update's weights have too."""
    if run.offline:
        return CollectedBatch(offline_batch(run.config, run.offline, iteration), 0.0), None
    box: list[Any] = [None, None]
    if run.rank == 0:
        if run.policy is None:  # setup builds one on rank 0 unless the run trains offline
            raise RuntimeError("no rollout policy on rank 0: setup() builds one unless from_trajectories is set.")
        collected = worker.take(iteration) if worker is not None else collect_batch(run.config, run.policy, iteration, run.out_dir)
        box = [collected, int(run.policy.version)]
    if run.world > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0], box[1]


def rollout_worker(run: Run) -> contextlib.AbstractContextManager[RolloutWorker | None]:
    """Rank 0's background collector when ``async_rollout`` is on (see :mod:`steppo_train.async_rollout`),
    else None, as a context (closing it waits for the collection in flight). The policy's weight versions
    are numbered like the trainer's (pushes so far, checkpoints included)."""
    policy, config = run.policy, run.config
    if policy is not None and not run.offline:
        policy.version = run.state.policy_version
    if policy is None or run.offline or not config.async_rollout:
        return contextlib.nullcontext(None)
    return RolloutWorker(lambda i: collect_batch(config, policy, i, run.out_dir), config.max_staleness, config.iterations)


def score_phase(run: Run, batch: StepBatch) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, dict[str, float]]:
    """2. Old logprobs under the trainer's weights (and their gap to the rollout engine's sampled
    logprobs), and the reference policy's logprobs when there is a KL term."""
    config, pad, metrics = run.config, run.config.pad_multiple, {}
    run.actor.eval()
    if config.algo == "sft":  # maximum likelihood needs no old policy: skip the forward pass
        old = [torch.zeros(len(r)) for r in batch.response_ids]
    else:
        with run.amp():
            old = run.batched(lambda p, r: response_logprobs(run.actor_fwd, p, r, pad_multiple=pad), batch)
        gaps = [(o - torch.tensor(s)).abs() for o, s in zip(old, batch.rollout_logprobs, strict=True) if len(s) and len(s) == o.numel()]
        if gaps:
            flat = torch.cat(gaps)
            metrics = {"rollout/logprob_gap_mean": float(flat.mean()), "rollout/logprob_gap_max": float(flat.max())}
    run.memory.after("old_logprobs")
    ref = None
    reference = run.reference
    if reference is not None:
        with run.amp():
            ref = run.batched(lambda p, r: response_logprobs(reference, p, r, pad_multiple=pad), batch)
    return old, ref, metrics


def critic_values(run: Run, batch: StepBatch) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
    """The critic's values: at the last prompt token of each step (``step_advantages``: ``[rows]``) or at
    every action token (one tensor per row); ``(None, None)`` without a critic."""
    critic, pad = run.critic, run.config.pad_multiple
    if critic is None:
        return None, None
    critic.eval()
    with run.amp():
        if run.config.step_advantages:
            return torch.stack(run.batched(lambda p, r: list(values_at_last_prompt_token(critic, p, pad_multiple=pad)), batch)), None
        return None, run.batched(lambda p, r: values_at_action_tokens(critic, p, r, pad_multiple=pad), batch)


def values_phase(run: Run, batch: StepBatch) -> tuple[torch.Tensor | None, list[torch.Tensor] | None, dict[str, float]]:
    """3. Critic values (:func:`critic_values`) and their mean."""
    step_values, token_values = critic_values(run, batch)
    flat = flat_values(step_values, token_values)
    return step_values, token_values, ({} if flat is None else {"charts/value_mean": float(flat.mean())})


def _microbatch(run: Run, data: IterationData, units: list[int], mb_units: int, mb_rows: int, mb_tokens: int,
                scale: float, train_actor: bool) -> dict[str, float]:
    """Forward and backward of one micro-batch (the actor's unless ``train_actor`` is off: critic warm-up),
    its losses times ``scale``; returns the logged losses."""
    config, logged = run.config, dict[str, float]()
    if train_actor:
        with run.amp():
            loss, logged = actor_loss(config, run.actor_fwd, data, units, mb_units, mb_tokens)
        (loss * scale).backward()
    critic = run.critic_fwd
    if critic is not None:
        rows = [r for u in units for r in data.units[u]]
        with run.amp():
            vloss, vlogged = critic_loss(config, critic, data, rows, mb_rows, mb_tokens)
        (vloss * scale).backward()
        logged = {**logged, **vlogged}
    return logged


def _minibatch_step(run: Run, data: IterationData, mb_units: list[int], sums: dict[str, float], train_actor: bool) -> None:
    """Gradients of one minibatch (micro-batches packed by token budget, this rank's share), then one
    optimizer step per model (the critic's only, while ``train_actor`` is off); logged losses are added to ``sums``.

    Each micro-batch's loss weights use the whole minibatch's size, so the minibatch gradient is the
    *sum* over ranks; DDP / FSDP average over ranks, hence every loss is scaled by ``world``. All ranks
    run the same number of backward passes (a rank short of micro-batches adds zero-weight passes on
    one unit) and gradients are synchronised in the last one only."""
    config, batch = run.config, data.batch
    mb_rows = [r for u in mb_units for r in data.units[u]]
    mb_tokens = sum(len(batch.response_ids[r]) for r in mb_rows)
    for opt in run.optimizers.values():
        opt.zero_grad(set_to_none=True)
    packs = pack_units([data.units[u] for u in mb_units], batch, config.token_budget, config.pad_multiple)
    mine, passes = rank_share(packs, run.rank, run.world)
    for i in range(passes):
        pack, scale = (mine[i], float(run.world)) if i < len(mine) else (packs[-1][-1:], 0.0)
        with gradient_sync(run.par.roots, enabled=i == passes - 1):
            logged = _microbatch(run, data, [mb_units[j] for j in pack], len(mb_units), len(mb_rows), mb_tokens, scale,
                                 train_actor)
        for k, v in logged.items() if scale else ():
            sums[k] = sums.get(k, 0.0) + v
    for name, opt in run.optimizers.items():
        if name == "actor" and not train_actor:
            continue
        norm = clip_gradients(run.params(name), config.max_grad_norm)
        if name == "actor":
            sums["losses/actor_grad_norm"] = sums.get("losses/actor_grad_norm", 0.0) + norm
        opt.step()


def warming_up(run: Run, iteration: int) -> bool:
    """Whether ``iteration`` is a critic warm-up iteration (``critic_warmup``): only the critic is updated."""
    return run.critic is not None and iteration < run.config.critic_warmup


def update_phase(run: Run, data: IterationData, iteration: int) -> dict[str, float]:
    """5. ``ppo_epochs`` passes of shuffled minibatches (``minibatch_size`` units each; the critic only during
    its warm-up); mean logged losses."""
    config = run.config
    train_actor = not warming_up(run, iteration)
    run.actor.train(train_actor)
    if run.critic is not None:
        run.critic.train()
    generator = torch.Generator().manual_seed(config.seed * 7919 + iteration)
    sums: dict[str, float] = {}
    n_minibatches = 0
    bar = progress_bar(total=config.ppo_epochs * math.ceil(len(data.units) / config.minibatch_size),
                       desc=f"update {iteration + 1}", unit="minibatch", enabled=run.rank == 0)
    for _epoch in range(config.ppo_epochs):
        order = torch.randperm(len(data.units), generator=generator).tolist()
        for start in range(0, len(order), config.minibatch_size):
            _minibatch_step(run, data, order[start : start + config.minibatch_size], sums, train_actor)
            n_minibatches += 1
            bar.update(1)
            if config.trim_memory:  # the update's activations leave the most free heap behind
                release_free_memory(collect=False)
    bar.close()
    return {k: v / max(1, n_minibatches) for k, v in sums.items()}


def measure_phase(run: Run, data: IterationData, values_before: torch.Tensor | None, iteration: int) -> dict[str, float]:
    """5b. What the update did (:mod:`steppo_train.diagnostics`): the critic's explained variance of the returns it
    was trained on, before and after the update, and (``measure_update``) the policy's movement, measured with
    the new weights on the whole batch: ``update/approx_kl`` and ``update/clip_fraction``."""
    config, batch, metrics = run.config, data.batch, {}
    returns = flat_values(data.targets.returns)
    if returns is not None and values_before is not None:
        metrics["critic/explained_variance_before"] = explained_variance(returns, values_before)
        after = flat_values(*critic_values(run, batch)) if config.measure_update else None
        if after is not None:
            metrics["critic/explained_variance_after"] = explained_variance(returns, after)
    if config.measure_update and config.algo != "sft" and not warming_up(run, iteration):
        run.actor.eval()
        with run.amp():
            new = run.batched(lambda p, r: response_logprobs(run.actor_fwd, p, r, pad_multiple=config.pad_multiple), batch)
        level: RatioLevel = "sequence" if config.algo == "gspo" else "step" if config.uses_critic and config.step_ratio else "token"
        kl, clipped = policy_movement(new, data.old_logprobs, config.clip_low, config.clip_high, level, data.units)
        metrics.update({"update/approx_kl": kl, "update/clip_fraction": clipped})
    return metrics


def push_phase(run: Run, iteration: int) -> None:
    """6. The new actor weights into the rollout policy (:func:`~steppo_agent.policies.weight_sync.push_weights`);
    nothing to push after a critic warm-up iteration."""
    if not warming_up(run, iteration) and _push_weights(run):
        run.state.policy_version += 1
        run.memory.after("push")


def report_phase(run: Run, iteration: int, metrics: dict[str, float], started: float) -> None:
    """7. Rank 0: held-out evaluation (every ``eval_every``), metrics row, progress line, plot; then the
    checkpoint (every rank joins: gathering sharded weights is a collective; rank 0 writes)."""
    config = run.config
    run.state.next_iteration = iteration + 1
    if run.rank == 0:
        _log_iteration(run, iteration, metrics, started)
    if (iteration + 1) % config.save_every == 0 or iteration + 1 == config.iterations:
        save_checkpoint(run.out_dir, iteration, run.state, run.actor, run.optimizers, run.critic,
                        tokenizer=run.tokenizer, config=config.to_dict())


def _log_iteration(run: Run, iteration: int, metrics: dict[str, float], started: float) -> None:
    config = run.config
    if run.policy is not None and config.eval_every and (iteration + 1) % config.eval_every == 0:
        metrics.update(evaluate(config, run.policy, iteration + 1, run.out_dir))
        run.memory.after("eval")
    metrics["time/iteration_s"] = time.perf_counter() - started
    metrics.update(run.memory.take())
    metrics["perf/peak_rss_gib"] = metrics["memory/peak_rss_gib"]
    assert run.logger is not None
    run.logger.log(iteration, {k: v for k, v in metrics.items() if math.isfinite(v)})
    print(iteration_line(iteration, config.iterations, metrics), flush=True)
    plot_metrics({config.algo: run.out_dir / "metrics.jsonl"}, run.out_dir / "learning_curves.png", title=f"{config.algo} on {config.rollout.env_id}")


def close(run: Run) -> None:
    if run.logger is not None:
        run.logger.close()
    if run.owns_policy and run.policy is not None:
        run.policy.close()
    leave_group(run.par)


# -- the loop ----------------------------------------------------------------------------------------
def train(config: TrainConfig, *, policy: Policy | None = None) -> TrainResult:
    """Train ``config.algo``: metrics.jsonl, learning_curves.png and checkpoints/ go to ``config.output_dir``.

    ``policy`` overrides the rollout policy built from the config (e.g. a policy shared with other code).
    With ``async_rollout`` the next batches are collected in the background while this one trains
    (:mod:`steppo_train.async_rollout`); the push waits for the collection in flight.
    """
    run = setup(config, policy)
    with rollout_worker(run) as worker:  # async_rollout: rank 0's background collector (else None)
        for iteration in range(run.state.next_iteration, config.iterations):
            t_start = time.perf_counter()
            collected, version = collect_phase(run, worker, iteration)                   # 1. collect
            trajectories = collected.trajectories
            t_rollout = time.perf_counter() - t_start
            run.memory.after("rollout")
            batch = build_step_batch(trajectories)
            metrics = batch_metrics(trajectories, batch)
            old_logprobs, ref_logprobs, scored = score_phase(run, batch)                  # 2. old logprobs
            step_values, token_values, valued = values_phase(run, batch)                  # 3. values
            run.memory.after("values")
            targets = compute_targets(config, batch, step_values=step_values, token_values=token_values)  # 4. advantages
            staleness = row_staleness(trajectories, batch.traj_index, batch.step_index, version)  # stale rows: decoupled PPO
            data = IterationData(batch, old_logprobs, targets, ref_logprobs, make_units(config, batch),
                                 behaviour_logprobs(old_logprobs, batch.rollout_logprobs, staleness))
            if targets.step_advantages is not None:
                metrics["charts/advantage_abs_mean"] = float(targets.step_advantages.abs().mean())
            metrics.update({**scored, **valued, **update_phase(run, data, iteration)})   # 5. update
            t_update = time.perf_counter() - t_start - t_rollout
            metrics.update(measure_phase(run, data, flat_values(step_values, token_values), iteration))  #    and what it did
            metrics["time/measure_s"] = time.perf_counter() - t_start - t_rollout - t_update
            run.memory.after("update")
            t_wait = worker.drain() if worker is not None else 0.0                        # 6. wait for the collection in flight,
            push_phase(run, iteration)                                                    #    then push
            metrics.update({"time/rollout_s": t_rollout, "time/update_s": t_update, "time/push_wait_s": t_wait,
                            "perf/update_tokens_per_s": metrics["rollout/response_tokens"] * config.ppo_epochs / max(t_update, 1e-9),
                            **rollout_metrics(collected, staleness if version is not None else None)})
            report_phase(run, iteration, metrics, t_start)                                # 7. eval, log, checkpoint
    close(run)
    return TrainResult(run.out_dir, run.actor, run.critic)
