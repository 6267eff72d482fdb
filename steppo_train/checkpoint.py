"""Checkpoints: ``output_dir/checkpoints/iter_NNNNNN/`` with the actor (HF folder), critic, optimizer
states and a ``state.json``; written to a temporary folder and renamed, so a killed run never leaves a
half-written checkpoint behind."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CheckpointState", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]


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
    """Write a checkpoint for ``iteration`` and keep only the newest ``keep``."""
    out = Path(output_dir)
    final = _dir(out, iteration)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    actor.save_pretrained(tmp / "actor")  # type: ignore[operator]
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "actor")
    if critic is not None:
        torch.save(critic.state_dict(), tmp / "critic.pt")
    torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, tmp / "optimizers.pt")
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
    """Load weights and optimizer states in place; return the saved :class:`CheckpointState`."""
    path = Path(path)
    from safetensors.torch import load_file

    actor_dir = path / "actor"
    files = sorted(actor_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {path} has no actor weights: delete it or resume from an earlier one.")
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        state_dict.update(load_file(str(f)))
    missing, unexpected = actor.load_state_dict(state_dict, strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings are not saved
    if real_missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model (missing {real_missing[:3]}, unexpected {unexpected[:3]}).")
    if critic is not None:
        critic.load_state_dict(torch.load(path / "critic.pt", weights_only=True, map_location="cpu"))
    saved = torch.load(path / "optimizers.pt", weights_only=False, map_location="cpu")
    for name, opt in optimizers.items():
        opt.load_state_dict(saved[name])
    meta = json.loads((path / "state.json").read_text())
    return CheckpointState(next_iteration=int(meta["next_iteration"]), policy_version=int(meta["policy_version"]))
