"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU): offline StepPO updates of the tiny model with
``parallel=ddp`` and ``parallel=fsdp``, in one launch (tests/test_parallel.py checks what it leaves):

* ``ddp/``, ``fsdp/``: one iteration each (``amp=false``, so they can match a single process to float
  summation order); their checkpoints hold the gathered full weights;
* ``fsdp_pushed.pt``: the full actor state the trainer pushes to the rollout engine (rank 0);
* ``memory.json``: per rank, bytes of the local parameters + AdamW state after resuming each run;
* ``fsdp_resumed/``: one iteration, then resumed for a second; ``fsdp_straight/``: two iterations in
  one go (the top block trained alone; ``amp`` auto: bf16 mixed precision where this CPU has it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from steppo_train.config import TrainConfig, load_config
from steppo_train.parallel import full_model_state, local_bytes
from steppo_train.trainer import close, setup, train


def config(model: str, records: str, out: Path, **overrides: Any) -> TrainConfig:
    """The tiny offline run every check uses (tests/test_parallel.py builds the single-process one)."""
    return load_config("steppo", overrides={**dict(
        model=model, from_trajectories=[records], iterations=1, tasks_per_iteration=4, group_size=1,
        minibatch_size=64, token_budget=600, actor_lr=1e-3, critic_lr=1e-3, output_dir=str(out)), **overrides})


def resident_bytes(cfg: TrainConfig) -> int:
    """Bytes of this rank's parameters + optimizer state, with the run's last checkpoint loaded."""
    run = setup(cfg.updated(resume=True))
    total = sum(local_bytes(run.params(name), opt) for name, opt in run.optimizers.items())
    frozen = [p for m in (run.actor, run.critic) if m is not None for p in m.parameters() if not p.requires_grad]
    total += local_bytes(frozen)
    close(run)
    return total


def main() -> None:
    model, records, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")  # one group for all the runs below (the trainer leaves it open)
    train(config(model, records, out / "ddp", parallel="ddp", amp=False))
    result = train(config(model, records, out / "fsdp", parallel="fsdp", amp=False))
    pushed = full_model_state(result.actor)  # what push_weights gets on rank 0
    if rank == 0:
        torch.save(pushed, out / "fsdp_pushed.pt")
    memory = {mode: resident_bytes(config(model, records, out / mode, parallel=mode, amp=False)) for mode in ("ddp", "fsdp")}
    (out / f"memory{rank}.json").write_text(json.dumps(memory))
    # resume: the top block alone trains (frozen blocks; a root unit mixing frozen embeddings with a trained
    # norm), amp auto (bf16 all-gathers and compute where this CPU has native bf16)
    other = dict(parallel="fsdp", trainable_layers=1)
    train(config(model, records, out / "fsdp_resumed", **other))
    train(config(model, records, out / "fsdp_resumed", iterations=2, resume=True, **other))
    train(config(model, records, out / "fsdp_straight", iterations=2, save_every=1, **other))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
