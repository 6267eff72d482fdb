"""``parallel = ddp | fsdp``: one ``torchrun --nproc_per_node 2`` launch (gloo, CPU, the tiny model,
offline records; tests/ddp_train.py) checked against a single-process run on the same data.

The weights pushed to the rollout engine are checked as a state dict (names, shapes and values equal
to the unsharded model's: what ``push_weights`` sends); a vLLM engine is not started here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import toy_env  # noqa: E402  (registers steppotest/Guess-v0)
from ddp_train import config  # noqa: E402
from tiny_model import make_tiny_llama  # noqa: E402

from steppo_envs.config import ConfigError  # noqa: E402
from steppo_train.config import load_config  # noqa: E402
from steppo_train.parallel import check_launch, rank_share  # noqa: E402
from steppo_train.trainer import TrainResult, train  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    """The torchrun launch's output folder and the single-process reference run (parallel=none)."""
    from steppo_agent.rollout import RolloutConfig, run_rollout

    tmp = tmp_path_factory.mktemp("parallel")
    tiny = make_tiny_llama(tmp / "llama")
    records = tmp / "records.jsonl"
    run_rollout(toy_env.make_fake_policy(), RolloutConfig(env_id=toy_env.ENV_ID, num_tasks=4, output=records, progress=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_train.py"), str(tiny), str(records), str(tmp)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=900)
    finally:  # a timeout (or an interrupt) leaves no rank behind waiting for the other
        if proc.poll() is None:
            proc.terminate()  # torchrun passes SIGTERM on to its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    single = train(config(str(tiny), str(records), tmp / "single", amp=False))
    return tmp, single


def _checkpoint(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    actor = {k: v for f in sorted((folder / "actor").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    return {"actor": actor, "critic": torch.load(folder / "critic.pt", weights_only=True),
            "optimizers": torch.load(folder / "optimizers.pt", weights_only=False)}


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert torch.allclose(got[k], want[k], atol=atol, rtol=0), (k, float((got[k] - want[k]).abs().max()))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_update_like_one_process(launched: tuple[Path, TrainResult], mode: str) -> None:
    tmp, single = launched
    saved = _checkpoint(tmp / mode / "checkpoints" / "iter_000000")
    assert single.critic is not None
    want_actor = {k: v for k, v in single.actor.state_dict().items() if k in saved["actor"]}
    assert "lm_head.weight" not in saved["actor"]  # tied to the embeddings, as save_pretrained writes them
    _assert_close(saved["actor"], want_actor, atol=1e-5)
    _assert_close(saved["critic"], single.critic.state_dict(), atol=1e-5)
    moments = saved["optimizers"]["actor"]["state"]
    assert len(moments) == sum(p.requires_grad for p in single.actor.parameters())  # full (gathered) AdamW state
    first = next(p for p in single.actor.parameters() if p.requires_grad)
    assert moments[0]["exp_avg"].shape == first.shape


def test_fsdp_pushes_the_full_state_dict_of_the_unsharded_model(launched: tuple[Path, TrainResult]) -> None:
    tmp, single = launched
    pushed = torch.load(tmp / "fsdp_pushed.pt", weights_only=True)
    want = {k: v.detach() for k, v in single.actor.state_dict().items()}  # the names push_weights sends today
    _assert_close(pushed, want, atol=1e-5)


def test_fsdp_resume_is_bit_identical_to_a_straight_run(launched: tuple[Path, TrainResult]) -> None:
    tmp, _ = launched
    resumed = _checkpoint(tmp / "fsdp_resumed" / "checkpoints" / "iter_000001")
    straight = _checkpoint(tmp / "fsdp_straight" / "checkpoints" / "iter_000001")
    for part in ("actor", "critic"):
        assert sorted(resumed[part]) == sorted(straight[part])
        for k in straight[part]:
            assert torch.equal(resumed[part][k], straight[part][k]), (part, k)
    for name, opt in straight["optimizers"].items():
        for pid, state in opt["state"].items():
            for k, v in state.items():
                assert torch.equal(resumed["optimizers"][name]["state"][pid][k], v), (name, pid, k)


def test_fsdp_halves_each_ranks_weights_and_optimizer_state(launched: tuple[Path, TrainResult]) -> None:
    tmp, _ = launched
    for rank in (0, 1):
        memory = json.loads((tmp / f"memory{rank}.json").read_text())
        ratio = memory["fsdp"] / memory["ddp"]
        print(f"rank {rank}: parameters + AdamW state {memory['ddp'] / 2**20:.2f} MiB replicated (ddp), "
              f"{memory['fsdp'] / 2**20:.2f} MiB sharded (fsdp): {ratio:.3f}")
        assert ratio <= 0.6


def test_fsdp_in_one_process_trains_like_parallel_none(launched: tuple[Path, TrainResult]) -> None:
    import torch.distributed as dist

    tmp, single = launched
    assert single.critic is not None
    had_group = dist.is_initialized()  # e.g. an in-process vLLM engine earlier in this process opens a one-rank group
    train(config(str(tmp / "llama"), str(tmp / "records.jsonl"), tmp / "one_rank_fsdp", parallel="fsdp", amp=False))
    assert dist.is_initialized() == had_group  # a group the trainer opened is closed again; a caller's stays open
    saved = _checkpoint(tmp / "one_rank_fsdp" / "checkpoints" / "iter_000000")
    _assert_close(saved["actor"], {k: v for k, v in single.actor.state_dict().items() if k in saved["actor"]}, atol=1e-6)
    _assert_close(saved["critic"], single.critic.state_dict(), atol=1e-6)


def test_parallel_none_under_torchrun_names_the_fix() -> None:
    check_launch("none", 1)
    check_launch("fsdp", 2)
    with pytest.raises(ConfigError, match="parallel=ddp"):
        check_launch("none", 2)
    with pytest.raises(ConfigError, match="parallel"):
        load_config("steppo", overrides={"parallel": "zero3"})


def test_rank_share_gives_every_rank_the_same_number_of_passes() -> None:
    packs = [[0], [1], [2]]
    assert rank_share(packs, 0, 2) == ([[0], [2]], 2)
    assert rank_share(packs, 1, 2) == ([[1]], 2)
    assert rank_share(packs[:1], 1, 2) == ([], 1)
    assert rank_share(packs, 0, 1) == (packs, 3)
