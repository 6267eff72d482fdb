"""Run under ``torchrun --nproc_per_node 2``: an offline data-parallel StepPO update on the tiny model;
each rank writes a checksum of its actor and critic parameters to ``OUT/rank{r}.json``."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from steppo_train.config import load_config
from steppo_train.trainer import train


def _digest(module) -> str:  # type: ignore[no-untyped-def]
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    model, records, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))
    config = load_config("steppo", overrides=dict(
        model=model, from_trajectories=[records], iterations=1, tasks_per_iteration=4, group_size=1,
        minibatch_size=64, token_budget=600, actor_lr=1e-3, critic_lr=1e-3, output_dir=str(out / "run"),
    ))
    result = train(config)
    assert result.critic is not None
    (out / f"rank{rank}.json").write_text(json.dumps({"actor": _digest(result.actor), "critic": _digest(result.critic)}))


if __name__ == "__main__":
    main()
