"""The trainer end to end on a tiny Llama and the toy env: every algorithm runs an iteration that changes
every trainable parameter, checkpoint + resume continue identically, config errors name the fix."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import toy_env  # noqa: E402  (registers steppotest/Guess-v0)
from tiny_model import make_tiny_llama  # noqa: E402

from steppo_envs.config import ConfigError  # noqa: E402
from steppo_train.config import ALGOS, load_config  # noqa: E402
from steppo_train.models import ModelConfig, load_actor, load_critic  # noqa: E402
from steppo_train.trainer import init_value_head, train  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


TEXTWORLD = {"preset": "simple", "level": 1, "pool_size": 2, "max_steps": 3, "expert": True}


class MixedPolicy:
    """Each step answered by the tiny model (HF backend) or by the env's expert, by seed parity, so that
    samples of one task get different returns (group baselines need reward variance to move weights)."""

    wants_infos = True

    def __init__(self, tiny: Path) -> None:
        from steppo_agent.policies import PolicyConfig, make_policy
        from steppo_agent.policies.expert import ExpertPolicy

        self.model_policy = make_policy(PolicyConfig(backend="hf", model=str(tiny)))
        self.expert = ExpertPolicy(str(tiny))
        self.backend, self.model, self.version = "mixed", str(tiny), 0
        self.tokenizer, self.max_model_len = self.model_policy.tokenizer, self.model_policy.max_model_len
        self.pushes = 0

    def generate(self, prompts, sampling, seeds=None, infos=None):  # type: ignore[no-untyped-def]
        seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
        pick = [int(s or 0) % 2 for s in seeds]
        out: list = [None] * len(prompts)
        model_idx = [i for i, k in enumerate(pick) if k == 0]
        expert_idx = [i for i, k in enumerate(pick) if k == 1]
        if model_idx:
            gens = self.model_policy.generate([prompts[i] for i in model_idx], sampling, [seeds[i] for i in model_idx])
            for i, g in zip(model_idx, gens, strict=True):
                out[i] = g
        if expert_idx:
            gens = self.expert.generate([prompts[i] for i in expert_idx], sampling, None, [infos[i] for i in expert_idx])
            for i, g in zip(expert_idx, gens, strict=True):
                out[i] = g
        return out

    def load_weights(self, state_dict):  # type: ignore[no-untyped-def]
        self.pushes += 1
        return self.model_policy.load_weights(state_dict)

    def close(self) -> None:
        self.model_policy.close()


def _config(tiny: Path, algo: str, out: Path, **extra: object):
    base = dict(
        model=str(tiny), env_id="steppo/TextWorld-v0", env_kwargs=TEXTWORLD, backend="hf", iterations=1, tasks_per_iteration=2, group_size=2,
        max_tokens=16, output_dir=str(out), minibatch_size=64, token_budget=4096, actor_lr=1e-3, critic_lr=1e-3,
        save_every=1,
    )
    base.update(extra)
    return load_config(algo, overrides=base)


@pytest.mark.parametrize("algo", ALGOS)
def test_one_iteration_changes_every_parameter(tiny: Path, tmp_path: Path, algo: str) -> None:
    # one full iteration on a bundled env (TextWorld), the tiny model mixed with the expert
    config = _config(tiny, algo, tmp_path / algo, tasks_per_iteration=3)
    before_actor = {k: v.clone() for k, v in load_actor(ModelConfig(str(tiny))).named_parameters()}
    policy = MixedPolicy(tiny)
    result = train(config, policy=policy)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["iteration"] == 0
    assert all(math.isfinite(v) for v in rows[0].values())
    assert math.isfinite(rows[0]["losses/policy"])
    assert policy.pushes == 1
    unchanged = [k for k, p in result.actor.named_parameters() if p.requires_grad and torch.equal(p, before_actor[k])]
    assert not unchanged, f"{algo}: actor parameters not updated: {unchanged}"
    if config.uses_critic:
        assert result.critic is not None
        critic0 = load_critic(ModelConfig(str(tiny)))
        init_value_head(critic0, config.seed)
        before = dict(critic0.named_parameters())
        unchanged = [k for k, p in result.critic.named_parameters() if torch.equal(p, before[k])]
        assert not unchanged, f"{algo}: critic parameters not updated: {unchanged}"
        assert "losses/value" in rows[0]
    assert (tmp_path / algo / "learning_curves.png").stat().st_size > 0


@pytest.mark.parametrize("algo", ["steppo", "ppo"])
def test_a_one_minibatch_iteration_logs_how_far_it_moved(tiny: Path, tmp_path: Path, algo: str) -> None:
    # one minibatch: the per-minibatch KL is taken before the only optimizer step (0 by construction); the
    # post-update KL over the batch shows the movement, and the critic's explained variance is logged both ways
    config = _config(tiny, algo, tmp_path / algo, tasks_per_iteration=3)
    result = train(config, policy=MixedPolicy(tiny))
    row = json.loads(result.metrics_path.read_text().splitlines()[0])
    assert row["losses/approx_kl"] == 0.0
    assert row["update/approx_kl"] > 0.0
    assert 0.0 <= row["update/clip_fraction"] <= 1.0
    assert {"critic/explained_variance_before", "critic/explained_variance_after"} <= set(row)
    assert row["critic/explained_variance_before"] <= 1.0 and row["critic/explained_variance_after"] <= 1.0


def test_critic_warmup_updates_only_the_critic(tiny: Path, tmp_path: Path) -> None:
    config = _config(tiny, "steppo", tmp_path / "warm", tasks_per_iteration=3, critic_warmup=1)
    before = {k: v.clone() for k, v in load_actor(ModelConfig(str(tiny))).named_parameters()}
    policy = MixedPolicy(tiny)
    result = train(config, policy=policy)
    assert all(torch.equal(p, before[k]) for k, p in result.actor.named_parameters())
    assert policy.pushes == 0  # nothing to push: the rollout weights are the actor's
    assert result.critic is not None
    critic0 = load_critic(ModelConfig(str(tiny)))
    init_value_head(critic0, config.seed)
    start = dict(critic0.named_parameters())
    assert all(not torch.equal(p, start[k]) for k, p in result.critic.named_parameters())
    row = json.loads(result.metrics_path.read_text().splitlines()[0])
    assert "losses/policy" not in row and "update/approx_kl" not in row and "losses/value" in row


@pytest.mark.parametrize("algo", ["steppo", "ppo"])
def test_amp_with_top_layers_trains_exactly_the_trainable_parameters(tiny: Path, tmp_path: Path, algo: str) -> None:
    # bfloat16 autocast over float32 weights, only the top block (+ final norm) of actor and critic trainable
    config = _config(tiny, algo, tmp_path / algo, tasks_per_iteration=3, amp=True, trainable_layers=1)
    before = {k: v.clone() for k, v in load_actor(ModelConfig(str(tiny))).named_parameters()}
    result = train(config, policy=MixedPolicy(tiny))
    n_layers = len(result.actor.get_decoder().layers)
    top = f"model.layers.{n_layers - 1}."
    params = dict(result.actor.named_parameters())
    trainable = {k for k, p in params.items() if p.requires_grad}
    assert trainable == {k for k in params if k.startswith(top) or k == "model.norm.weight"}
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(not torch.equal(params[k], before[k]) for k in trainable)
    assert all(torch.equal(params[k], before[k]) for k in params if k not in trainable)
    assert result.critic is not None
    critic_trainable = {k for k, p in result.critic.named_parameters() if p.requires_grad}
    assert critic_trainable == {k for k, _ in result.critic.named_parameters()
                                if k.startswith(f"backbone.layers.{n_layers - 1}.") or k in ("backbone.norm.weight", "value_head.weight", "value_head.bias")}


def test_freeze_lower_layers_rejects_a_bad_count(tiny: Path) -> None:
    with pytest.raises(ValueError, match="trainable_layers must be in 1.."):
        load_actor(ModelConfig(str(tiny), trainable_layers=99))


def test_resume_continues_identically(tiny: Path, tmp_path: Path) -> None:
    straight = train(_config(tiny, "steppo", tmp_path / "a", iterations=2, minibatch_size=4))
    train(_config(tiny, "steppo", tmp_path / "b", iterations=1, minibatch_size=4))
    resumed = train(_config(tiny, "steppo", tmp_path / "b", iterations=2, minibatch_size=4, resume=True))
    a = dict(straight.actor.named_parameters())
    for k, p in resumed.actor.named_parameters():
        assert torch.equal(p, a[k]), k
    assert straight.critic is not None and resumed.critic is not None
    c = dict(straight.critic.named_parameters())
    for k, p in resumed.critic.named_parameters():
        assert torch.equal(p, c[k]), k
    lines_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines_b] == [0, 1]
    # the HF rollout policy and the trainer agree on the logprobs of the sampled tokens
    assert all(x["rollout/logprob_gap_max"] < 1e-3 for x in lines_b)


TOY_RUN = ["--algo", "steppo", "--backend", "hf", "--env", f"toy_env:{toy_env.ENV_ID}", "--env-arg", "max_steps=2",
           "--env-arg", "step_delay=0.3", "--iterations", "4", "--tasks", "2", "--group-size", "1", "--max-tokens", "8",
           "--set", "save_every=2", "amp=false", "minibatch_size=64", "actor_lr=1e-3", "critic_lr=1e-3"]


def _metrics_iterations(out: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _final_state(out: Path, iteration: int) -> dict[str, torch.Tensor]:
    ckpt = out / "checkpoints" / f"iter_{iteration:06d}"
    actor = load_actor(ModelConfig(str(ckpt / "actor")))
    state = {f"actor.{k}": v.detach() for k, v in actor.named_parameters()}
    state.update({f"critic.{k}": v for k, v in torch.load(ckpt / "critic.pt", weights_only=True).items()})
    return state


@pytest.mark.slow
def test_kill_between_checkpoints_then_resume_is_exact(tiny: Path, tmp_path: Path) -> None:
    """`steppo train` killed with SIGKILL after iteration 2's metrics row (the last checkpoint is after
    iteration 1), then rerun with --resume: the row of the lost iteration is cut, iterations are
    0, 1, 2, 3 once each, and the final weights equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import time

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    steppo = [sys.executable, "-c", "import sys; from steppo.cli import main; sys.exit(main())", "train"]
    run = tmp_path / "killed"
    args = [*steppo, *TOY_RUN, "--model", str(tiny), "--output-dir", str(run)]
    log = tmp_path / "killed.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").exists() and len(_metrics_iterations(run)) >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, log.read_text()[-2000:])
    assert _metrics_iterations(run) == [0, 1, 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001"]  # killed between checkpoints

    resumed = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at iteration 2; removed 1 metrics row(s) written after it" in resumed.stdout
    assert _metrics_iterations(run) == [0, 1, 2, 3]
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == [f"iter_{i:06d}.jsonl" for i in range(4)]

    straight = tmp_path / "straight"
    done = subprocess.run([*steppo, *TOY_RUN, "--model", str(tiny), "--output-dir", str(straight)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _final_state(straight, 3), _final_state(run, 3)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert [json.loads(x)["charts/return_mean"] for x in (straight / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(x)["charts/return_mean"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_rewind_outputs_keeps_exactly_what_the_checkpoint_covers(tmp_path: Path) -> None:
    from steppo_train.checkpoint import rewind_outputs

    rows = "".join(json.dumps({"iteration": i, "x": 1.0}) + "\n" for i in range(5)) + '{"iteration": 5, "x'
    (tmp_path / "metrics.jsonl").write_text(rows)
    for folder, iterations in (("rollouts", range(5)), ("eval", range(1, 5))):
        (tmp_path / folder).mkdir()
        for i in iterations:
            (tmp_path / folder / f"iter_{i:06d}.jsonl").write_text("{}\n")
    assert rewind_outputs(tmp_path, 2) == 4  # rows 2, 3, 4 and the torn line
    assert _metrics_iterations(tmp_path) == [0, 1]
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [f"iter_{i:06d}.jsonl" for i in (0, 1, 2)]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [f"iter_{i:06d}.jsonl" for i in (1, 2)]
    assert not list(tmp_path.glob("*.tmp"))
    assert rewind_outputs(tmp_path, 2) == 0  # nothing more to remove
    assert rewind_outputs(tmp_path, 0) == 2 and _metrics_iterations(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["iter_000000.jsonl"]


def test_resume_without_a_checkpoint_says_so_and_never_duplicates_rows(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: killed after metrics row 0 with no checkpoint yet; --resume starts over at 0
    (saying so) instead of appending a second row 0."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "charts/return_mean": 9.0}) + "\n")
    config = load_config("steppo", overrides=dict(
        model=str(tiny), env_id=toy_env.ENV_ID, env_kwargs={"max_steps": 1}, backend="hf", iterations=1,
        tasks_per_iteration=1, group_size=1, max_tokens=8, output_dir=str(out), amp=False, resume=True,
    ))
    train(config)
    err = capsys.readouterr().err
    assert "steppo: --resume: no checkpoint in" in err and "starting from iteration 0; removed 1 metrics row(s)" in err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0] and rows[0]["charts/return_mean"] != 9.0


def test_a_fresh_run_refuses_a_folder_with_checkpoints_before_loading(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "iter_000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "iter_000004" / "state.json").write_text("{}")
    config = load_config("steppo", overrides=dict(model=str(tiny), env_id=toy_env.ENV_ID, backend="hf",
                                                  output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="pass --resume to continue it, or choose another --output-dir"):
        train(config)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_offline_training_from_trajectory_files(tiny: Path, tmp_path: Path) -> None:
    from steppo_agent.rollout import RolloutConfig, run_rollout

    records = tmp_path / "expert.jsonl"
    run_rollout(toy_env.make_fake_policy(), RolloutConfig(env_id=toy_env.ENV_ID, num_tasks=3, output=records, progress=False))
    result = train(_config(tiny, "sft", tmp_path / "sft", from_trajectories=[str(records)], iterations=2))
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[1]["losses/policy"] < rows[0]["losses/policy"]  # maximum likelihood on fixed data goes down


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"group_size": 1}, "group_size"),
        ({"nosuchfield": 1}, "valid options"),
        ({"max_tokens": 4096, "max_model_len": 2048}, "max_model_len"),
        ({"backend": "openai"}, "--base-url"),
        ({"amp": True, "dtype": "bfloat16"}, "dtype=float32"),
        ({"trainable_layers": 0}, "trainable_layers"),
        ({"kv_cache_gib": 0.5}, "whole number of GiB"),
        ({"iterations": -3}, "iterations must be >= 1"),
        ({"save_every": 0}, "save_every must be >= 1"),
        ({"actor_lr": 0.0}, "actor_lr must be > 0"),
        ({"critic_lr": float("nan")}, "critic_lr must be a finite number"),
        ({"eval_every": -1}, "eval_every must be >= 0"),
        ({"tasks_per_iteration": 0}, "rollout.num_tasks must be >= 1"),
        ({"group_size": 0}, "group_size must be >= 1"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"ppo_epochs": 0}, "ppo_epochs must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_config_errors_name_the_fix(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config("grpo", overrides=overrides)


def test_training_docs_list_every_config_field() -> None:
    from steppo_train.config import FLAT_ALIASES, option_names

    text = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    fields = {name.rpartition(".")[2] for name in option_names() - set(FLAT_ALIASES)}  # nested ones in their own tables
    missing = sorted(name for name in fields | set(FLAT_ALIASES) if f"`{name}`" not in text)
    assert not missing, f"docs/training.md misses config fields {missing}"


def test_cli_docs_cover_every_subcommand() -> None:
    from steppo.cli import build_parser

    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [c for c in commands if f"## steppo {c}" not in text]
    assert not missing, f"docs/cli.md misses sub-commands {missing}"
