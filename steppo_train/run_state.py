"""The state of one training run (:class:`Run`: models, optimizers, rollout source, bookkeeping, built by
:func:`steppo_train.trainer.setup`), what :func:`~steppo_train.trainer.train` returns, and the helper that
runs a no-grad function over a batch in token-budget micro-batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from steppo_agent.records import Trajectory
from steppo_train.batch import StepBatch
from steppo_train.checkpoint import CheckpointState
from steppo_train.config import TrainConfig
from steppo_train.logging_utils import MetricsLogger
from steppo_train.memory import PhaseMemory
from steppo_train.models import Critic, pack_microbatches
from steppo_train.parallel import Parallelism

if TYPE_CHECKING:
    from steppo_agent.policies.base import Policy

__all__ = ["BatchFn", "Run", "TrainResult"]


@dataclass
class TrainResult:
    """What :func:`train` leaves behind: the output folder and the trained models (in memory)."""

    output_dir: Path
    actor: nn.Module
    critic: Critic | None

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"


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
