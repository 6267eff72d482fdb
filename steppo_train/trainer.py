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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from steppo_agent.analysis import summarize
from steppo_agent.policies.weight_sync import push_weights
from steppo_agent.records import Trajectory
from steppo_envs.config import ConfigError
from steppo_envs.progress import progress_bar
from steppo_train.async_rollout import (
    CollectedBatch,
    RolloutWorker,
    collect_batch,
    row_staleness,
    staleness_metrics,
)
from steppo_train.batch import StepBatch, build_step_batch
from steppo_train.checkpoint import CheckpointState, latest_checkpoint, load_checkpoint, save_checkpoint
from steppo_train.config import TrainConfig
from steppo_train.logging_utils import MetricsLogger, iteration_line, plot_metrics
from steppo_train.lora import rollout_state_dict
from steppo_train.memory import PhaseMemory, release_free_memory
from steppo_train.models import (
    Critic,
    ModelConfig,
    load_actor,
    load_critic,
    pack_microbatches,
    response_logprobs,
    values_at_action_tokens,
    values_at_last_prompt_token,
)
from steppo_train.parallel import (
    Parallelism,
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

__all__ = ["Run", "TrainResult", "init_value_head", "setup", "train"]


@dataclass
class TrainResult:
    """What :func:`train` leaves behind: the output folder and the trained models (in memory)."""

    output_dir: Path
    actor: nn.Module
    critic: Critic | None

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"


def init_value_head(critic: Critic, seed: int, std: float = 1e-2) -> None:
    """Initialise the critic's value head from ``seed`` (no global RNG), so runs are reproducible."""
    g = torch.Generator().manual_seed(seed)
    head = critic.value_head
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * std)
        head.bias.zero_()


# -- small helpers ---------------------------------------------------------------------------------
BatchFn = Callable[[list[list[int]], list[list[int]]], Sequence[torch.Tensor]]
"""``(prompts of a micro-batch, their responses) -> one tensor per row``."""


@torch.no_grad()
def _batched(fn: BatchFn, prompts: list[list[int]], responses: list[list[int]], token_budget: int,
             pad_multiple: int = 1) -> list[torch.Tensor]:
    """Run ``fn`` over micro-batches packed by token budget, in row order; results come back on the
    CPU (targets and logging live there)."""
    out: dict[int, torch.Tensor] = {}
    for mb in pack_microbatches(list(zip(prompts, responses, strict=True)), token_budget, pad_multiple):
        res = fn([prompts[i] for i in mb], [responses[i] for i in mb])
        for i, r in zip(mb, res, strict=True):
            out[i] = r.detach().cpu()
    return [out[i] for i in range(len(prompts))]


# -- the run: what stays fixed from the first iteration to the last -----------------------------------
@dataclass
class Run:
    """Models, optimizers, the rollout source and the bookkeeping of one training run (built by :func:`setup`)."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    out_dir: Path
    actor: nn.Module
    critic: Critic | None
    reference: nn.Module | None
    optimizers: dict[str, torch.optim.Optimizer]
    state: CheckpointState
    policy: Policy | None = None
    owns_policy: bool = False
    offline: list[Trajectory] = field(default_factory=list)
    use_amp: bool = False
    logger: MetricsLogger | None = None
    tokenizer: Any = None
    memory: PhaseMemory = field(default_factory=PhaseMemory)
    par: Parallelism = field(default_factory=Parallelism)

    @property
    def actor_fwd(self) -> nn.Module:
        """What the actor's forward passes call: the actor, or its DDP / FSDP view (``parallel``)."""
        return self.par.actor or self.actor

    @property
    def critic_fwd(self) -> Critic | None:
        """What the critic's forward passes call: the critic, or its DDP wrapper (which runs the
        critic's forward, hence typed as one)."""
        return self.par.critic or self.critic  # type: ignore[return-value]  # DistributedDataParallel(critic) forwards to Critic.forward

    def amp(self) -> torch.autocast:
        """bfloat16 autocast around forward passes (a no-op unless ``amp`` resolved to on)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp)

    def params(self, name: str) -> list[nn.Parameter]:
        model = self.actor if name == "actor" else self.critic
        return [p for p in model.parameters() if p.requires_grad] if model is not None else []

    def batched(self, fn: BatchFn, batch: StepBatch) -> list[torch.Tensor]:
        return _batched(fn, batch.prompt_ids, batch.response_ids, self.config.token_budget, self.config.pad_multiple)


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
        init_value_head(critic, config.seed)
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


def rollout_metrics(collected: CollectedBatch, staleness: list[int] | None) -> dict[str, float]:
    """The collection's own time, the prefix-cache hit rate when the backend gives one, and the
    staleness of the batch's steps (``rollout/staleness_max`` / ``_mean``) when versions are known."""
    metrics = {"time/rollout_collect_s": collected.seconds}
    if collected.prefix_cache_hit_rate is not None:
        metrics["rollout/prefix_cache_hit_rate"] = collected.prefix_cache_hit_rate
    return {**metrics, **staleness_metrics(staleness or [])}


def batch_metrics(trajectories: list[Trajectory], batch: StepBatch) -> dict[str, float]:
    """Episode outcomes (``charts/``) and the batch's size (``rollout/``)."""
    metrics = summarize(trajectories).as_metrics("charts")
    metrics["rollout/steps"] = float(batch.num_rows)
    metrics["rollout/response_tokens"] = float(sum(len(r) for r in batch.response_ids))
    metrics["rollout/invalid_rate"] = metrics["charts/invalid_rate"]
    metrics["rollout/truncated_rate"] = float(batch.truncated.float().mean())
    return metrics


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


def values_phase(run: Run, batch: StepBatch) -> tuple[torch.Tensor | None, list[torch.Tensor] | None, dict[str, float]]:
    """3. Critic values: at the last prompt token of each step (``step_advantages``) or at every action token."""
    critic, pad = run.critic, run.config.pad_multiple
    if critic is None:
        return None, None, {}
    critic.eval()
    with run.amp():
        if run.config.step_advantages:
            step_values = torch.stack(run.batched(lambda p, r: list(values_at_last_prompt_token(critic, p, pad_multiple=pad)), batch))
            return step_values, None, {"charts/value_mean": float(step_values.mean())}
        return None, run.batched(lambda p, r: values_at_action_tokens(critic, p, r, pad_multiple=pad), batch), {}


def _microbatch(run: Run, data: IterationData, units: list[int], mb_units: int, mb_rows: int, mb_tokens: int,
                scale: float) -> dict[str, float]:
    """Forward and backward of one micro-batch, its losses times ``scale``; returns the logged losses."""
    config = run.config
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


def _minibatch_step(run: Run, data: IterationData, mb_units: list[int], sums: dict[str, float]) -> None:
    """Gradients of one minibatch (micro-batches packed by token budget, this rank's share), then one
    optimizer step per model; logged losses are added to ``sums``.

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
            logged = _microbatch(run, data, [mb_units[j] for j in pack], len(mb_units), len(mb_rows), mb_tokens, scale)
        for k, v in logged.items() if scale else ():
            sums[k] = sums.get(k, 0.0) + v
    for name, opt in run.optimizers.items():
        norm = clip_gradients(run.params(name), config.max_grad_norm)
        if name == "actor":
            sums["losses/actor_grad_norm"] = sums.get("losses/actor_grad_norm", 0.0) + norm
        opt.step()


def update_phase(run: Run, data: IterationData, iteration: int) -> dict[str, float]:
    """5. ``ppo_epochs`` passes of shuffled minibatches (``minibatch_size`` units each); mean logged losses."""
    config = run.config
    run.actor.train()
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
            _minibatch_step(run, data, order[start : start + config.minibatch_size], sums)
            n_minibatches += 1
            bar.update(1)
            if config.trim_memory:  # the update's activations leave the most free heap behind
                release_free_memory(collect=False)
    bar.close()
    return {k: v / max(1, n_minibatches) for k, v in sums.items()}


def push_phase(run: Run) -> None:
    """6. The new actor weights into the rollout policy (:func:`~steppo_agent.policies.weight_sync.push_weights`)."""
    if _push_weights(run):
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
            run.memory.after("update")
            t_wait = worker.drain() if worker is not None else 0.0                        # 6. wait for the collection in flight,
            push_phase(run)                                                               #    then push
            metrics.update({"time/rollout_s": t_rollout, "time/update_s": t_update, "time/push_wait_s": t_wait,
                            "perf/update_tokens_per_s": metrics["rollout/response_tokens"] * config.ppo_epochs / max(t_update, 1e-9),
                            **rollout_metrics(collected, staleness if version is not None else None)})
            report_phase(run, iteration, metrics, t_start)                                # 7. eval, log, checkpoint
    close(run)
    return TrainResult(run.out_dir, run.actor, run.critic)
