"""Checkpoints: ``output_dir/checkpoints/iter_NNNNNN/`` with the actor (HF folder), critic, optimizer
states and a ``state.json``; written to a temporary folder and renamed, so a killed run never leaves a
half-written checkpoint behind. A LoRA run (``lora.rank > 0``) keeps the actor's adapter in
``actor_adapter/`` (what resuming loads), the merged model in ``actor/`` (for ``steppo eval`` and
serving), and of the critic only its adapters and value head (:mod:`steppo_train.lora`).

The format is the same under every ``parallel`` mode: under ``fsdp`` the full weights and optimizer
states are gathered from the shards first (a collective: every rank calls :func:`save_checkpoint`,
rank 0 writes), and :func:`load_checkpoint` cuts the full state back into this rank's shards. So a
run saved with one mode resumes under another.

:func:`rewind_outputs` makes the rest of ``output_dir`` agree with the checkpoint a run resumes from:
what a killed run wrote after it (metrics rows, rollout and evaluation files of later iterations) is
removed, so a resumed run never holds an iteration twice."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steppo_train.lora import critic_state_dict, is_lora, load_critic_state, load_lora_actor, save_lora_actor
from steppo_train.parallel import (
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_model_state,
    load_optimizer_state,
)

__all__ = ["CheckpointState", "latest_checkpoint", "load_checkpoint", "rewind_outputs", "save_checkpoint"]


@dataclass
class CheckpointState:
    """Where training stands: the next iteration to run and the rollout policy's weight version."""

    next_iteration: int
    policy_version: int


def _dir(output_dir: Path, iteration: int) -> Path:
    return output_dir / "checkpoints" / f"iter_{iteration:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or ``None``."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("iter_*") if (p / "state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def save_checkpoint(
    output_dir: str | Path,
    iteration: int,
    state: CheckpointState,
    actor: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    critic: nn.Module | None = None,
    *,
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``iteration`` and keep only the newest ``keep``.

    Under torch.distributed only rank 0 writes; with sharded (FSDP) models every rank must call this
    (the full states are gathered from all ranks)."""
    out = Path(output_dir)
    final = _dir(out, iteration)
    writer = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if not writer and not any(is_sharded(m) for m in (actor, critic) if m is not None):
        return final
    tied = {n for n, _ in actor.named_parameters(remove_duplicate=False)} - {n for n, _ in actor.named_parameters()}
    actor_state = None if is_lora(actor) else {  # as save_pretrained writes tied weights
        k: v for k, v in full_model_state(actor).items() if k not in tied}
    critic_state = (critic_state_dict(critic) if not is_sharded(critic) else full_model_state(critic)) if critic is not None else None
    optimizer_states = {name: full_optimizer_state(opt) for name, opt in optimizers.items()}
    if not writer:
        return final
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if actor_state is None:  # LoRA (never sharded): the adapter, and the merged model for serving
        save_lora_actor(tmp, actor)
    else:
        actor.save_pretrained(tmp / "actor", state_dict=actor_state)  # type: ignore[operator]  # PreTrainedModel.save_pretrained on an nn.Module
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "actor")
    if critic_state is not None:
        torch.save(critic_state, tmp / "critic.pt")
    torch.save(optimizer_states, tmp / "optimizers.pt")
    (tmp / "state.json").write_text(json.dumps({**state.__dict__, "config": config or {}}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    olds = sorted(p for p in (out / "checkpoints").glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in olds[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path,
    actor: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    critic: nn.Module | None = None,
) -> CheckpointState:
    """Load weights and optimizer states in place (into this rank's shards when the models are
    sharded; every rank calls it); return the saved :class:`CheckpointState`."""
    path = Path(path)
    if is_lora(actor):  # the adapter (actor/ holds the merged model, for serving)
        load_lora_actor(path, actor)
    else:
        _load_full_actor(path, actor)
    if critic is not None:
        critic_state = torch.load(path / "critic.pt", weights_only=True, map_location="cpu")
        if is_sharded(critic):
            missing, unexpected = load_model_state(critic, critic_state)
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {path} does not match the critic (missing {missing[:3]}, unexpected {unexpected[:3]}).")
        else:
            load_critic_state(critic, critic_state)
    saved = torch.load(path / "optimizers.pt", weights_only=False, map_location="cpu")
    for name, opt in optimizers.items():
        load_optimizer_state(opt, saved[name])
    meta = json.loads((path / "state.json").read_text())
    return CheckpointState(next_iteration=int(meta["next_iteration"]), policy_version=int(meta["policy_version"]))


def _load_full_actor(path: Path, actor: nn.Module) -> None:
    """Load a full-weights checkpoint's ``actor/`` folder into ``actor`` in place."""
    from safetensors.torch import load_file

    actor_dir = path / "actor"
    files = sorted(actor_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {path} has no actor weights: delete it or resume from an earlier one.")
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        state_dict.update(load_file(str(f)))
    missing, unexpected = load_model_state(actor, state_dict)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings are not saved
    if real_missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model (missing {real_missing[:3]}, unexpected {unexpected[:3]}).")


def _rewrite_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (a temporary file, fsync'ed, then renamed: never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _truncate_metrics(path: Path, next_iteration: int) -> int:
    """Keep the metrics rows of iterations ``< next_iteration``; return how many lines were removed
    (rows of later iterations and torn lines)."""
    if not path.exists():
        return 0
    kept: list[str] = []
    removed = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            iteration = json.loads(line).get("iteration")
        except (ValueError, AttributeError):
            iteration = None
        if isinstance(iteration, int) and iteration < next_iteration:
            kept.append(line)
        else:
            removed += 1
    if removed:
        _rewrite_atomically(path, "".join(f"{line}\n" for line in kept))
    return removed


def _file_iteration(path: Path) -> int | None:
    digits = path.stem.removeprefix("iter_")
    return int(digits) if digits.isdigit() else None


def rewind_outputs(output_dir: str | Path, next_iteration: int) -> int:
    """Remove what a run wrote after the state it resumes from (``next_iteration``; 0 = no checkpoint).

    ``metrics.jsonl`` keeps the rows of iterations ``< next_iteration`` (rewritten atomically);
    ``rollouts/iter_N.jsonl`` and ``eval/iter_N.jsonl`` with ``N > next_iteration`` are deleted. The
    rollouts of iteration ``next_iteration`` stay: they were collected with the checkpoint's weights and
    the resumed iteration continues them; so does ``eval/iter_{next_iteration}`` (evaluated with those
    weights). Returns the number of metrics lines removed.
    """
    out = Path(output_dir)
    removed = _truncate_metrics(out / "metrics.jsonl", next_iteration)
    for folder in ("rollouts", "eval"):
        for path in sorted((out / folder).glob("iter_*.jsonl")) if (out / folder).is_dir() else []:
            n = _file_iteration(path)
            if n is not None and n > next_iteration:
                path.unlink()
    return removed
