"""Batched step-level rollout: many episodes at once, one policy call per round, token-exact records.

:func:`run_rollout` plays ``num_tasks x group_size`` episodes of one environment. Task ``i`` uses the
reset seed ``config.seed + i``; its ``group_size`` samples share that seed and a ``group_id`` (for
GRPO / RLOO / GiGPO). Each *round* renders every active episode's prompt with
:func:`steppo_agent.prompting.render_prompt_ids` and sends all of them in **one**
``policy.generate`` call; each response text is made valid UTF-8 once (:func:`~steppo_envs.actions.clean_action_text`:
lone surrogates become U+FFFD, NULs are dropped) and goes to its env unparsed (the env parses it and
reports ``info["action"]`` / ``info["valid"]``) and, as ``response_text``, to the record. Finished
episodes become :class:`Trajectory` records, appended (and fsync'ed) to ``config.output`` as they
finish. ``resume`` continues a file only if its records were collected with the same env id, env
options, sampling and policy (:func:`resumed_ids`).

Seeds: prompt seeds come from :func:`derive_seed` of (``sampling.seed``, task seed, sample index,
step index), so a step's sample does not depend on which other episodes share its batch.

Episodes end when the env terminates or truncates (``truncation_reason="max_steps"``), when the
next prompt plus ``sampling.max_tokens`` does not fit ``policy.max_model_len``
(``truncation_reason="context_length"``; no step is recorded for that prompt), or when the env
raises (``truncation_reason="env_error"``, with a warning). A :class:`Generation` with
``finish_reason="error"`` is a normal step: its text (often empty) goes to the env, which records an
invalid action.

Env workers: with ``env_workers = W > 0`` the envs live in ``W`` worker processes
(:class:`~steppo_agent.env_pool.EnvPool`), so slow envs (TextWorld, BM25 search) step in parallel.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from steppo_agent.env_pool import EnvPool, EnvResult, resolve_env_spec
from steppo_agent.policies.base import Generation, Policy
from steppo_agent.records import PolicyInfo, SamplingConfig, Step, Trajectory
from steppo_envs.actions import clean_action_text
from steppo_envs.config import ConfigError, UserError
from steppo_envs.config_model import ConfigModel
from steppo_envs.progress import progress_bar

__all__ = ["DEFAULT_ENV", "STATIC_INFO_KEYS", "EnvSetupError", "EpisodesConfig", "OutputExistsError", "RenderFn",
           "RolloutConfig", "RolloutStats", "check_env", "check_output", "check_policy", "derive_seed",
           "make_checked_env", "resolve_env_spec", "resumed_ids", "run_rollout", "trajectory_id"]

RenderFn = Callable[[Any, str, str, list[dict[str, Any]]], list[int]]
"""``(tokenizer, system_prompt, observation, tools) -> prompt ids`` (default: ``render_prompt_ids``)."""

#: info keys stored once on the Trajectory (system_prompt, tools) or in a Step field (action).
STATIC_INFO_KEYS: tuple[str, ...] = ("system_prompt", "tools", "action")


#: The environment played when none is named (``steppo rollout`` / ``eval`` / ``train``).
DEFAULT_ENV = "steppo/TextWorld-v0"


class EpisodesConfig(ConfigModel):
    """What to play: the env and its options, how many tasks and samples per task, and how the envs step.

    The part of a rollout that stays the same from call to call. :class:`RolloutConfig` adds what one
    call sets (reset seed, sampling, output file); the trainer's config contains one of these
    (``TrainConfig.rollout``) and passes it on to every iteration's rollout as it is.
    """

    fix_hints: ClassVar[dict[str, str]] = {
        "num_tasks": "pass --num-tasks 1 or more", "group_size": "pass --group-size 1 or more",
        "env_workers": "use env_workers=0 (--workers 0) to step envs in this process",
        "max_active": "use max_active=None (all episodes at once) or a number >= 1 (--max-active)",
    }

    env_id: str = Field(DEFAULT_ENV, description=(
        'A registered id (steppo/MultiHopQA-v0) or "module:id" (the module is imported first, so it can register '
        "its own env)."))
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword options for gymnasium.make (the env's config fields).")
    num_tasks: int = Field(1, ge=1, description="How many tasks (reset seeds) to play (the trainer: per iteration).")
    group_size: int = Field(1, ge=1, description=(
        "Samples per task; they share the reset seed and group_id. Use > 1 with temperature > 0 (greedy samples of "
        "one task are identical); grpo/rloo/gigpo need >= 2."))
    env_workers: int = Field(0, ge=0, description="0 = envs step in this process; W > 0 = W worker processes.")
    max_active: int | None = Field(None, ge=1, description="Most episodes in flight at once (one batch row each); None = all of them.")

    @property
    def num_episodes(self) -> int:
        return self.num_tasks * self.group_size


class RolloutConfig(EpisodesConfig):
    """One :func:`run_rollout` call: what to play (the :class:`EpisodesConfig` fields) plus this call's
    first reset seed, sampling and output file. Bad values raise :class:`~steppo_envs.config.ConfigError`
    naming the fix; fields may be assigned after construction (the CLI turns ``validate_env`` off once
    it has checked the env), and :meth:`run_rollout` takes the config as it then is.

    Build one from an :class:`EpisodesConfig` with :meth:`of` (the trainer does, every iteration)."""

    seed: int = Field(0, description="The first task's reset seed; task i uses seed + i.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description=(
        "temperature / top_p / max_tokens / stop / seed for every policy call."))
    output: str | Path | None = Field(None, description="JSONL file that receives each finished trajectory; None = keep in memory only.")
    resume: bool = Field(False, description="When output exists, skip the trajectory ids already in it and append the rest.")
    progress: bool = Field(True, description="Show progress (a tqdm bar on a terminal, a plain line every 30 s in a log).")
    validate_env: bool = Field(True, description=(
        "Before the first episode, build one env and reset it (check_env), so a misspelt option, a bad value, missing "
        "data or a missing extra raises a UserError before anything is written."))

    @classmethod
    def of(cls, episodes: EpisodesConfig, call: Mapping[str, Any]) -> RolloutConfig:
        """``episodes`` played with this call's fields ``call`` (``seed``, ``sampling``, ``output``, ...; the
        episode fields may be overridden too, e.g. ``num_tasks`` for an evaluation). Unknown names are a
        :class:`ConfigError`."""
        return cls.build({**episodes.model_dump(), **call})

    @model_validator(mode="after")
    def _cross_checks(self) -> RolloutConfig:
        if self.group_size > 1 and self.sampling.temperature == 0.0:
            raise ConfigError(f"group_size={self.group_size} with temperature 0 gives identical samples: "
                              "set a temperature > 0 or use group_size=1.")
        if self.resume and self.output is None:
            raise ConfigError("resume=True needs an output file: set output (--output FILE) to the file to continue.")
        return self


@dataclass
class RolloutStats:
    """Counters of one :func:`run_rollout` call (also shown on the progress bar)."""

    episodes: int = 0
    skipped: int = 0
    steps: int = 0
    rounds: int = 0
    response_tokens: int = 0
    prompt_tokens: int = 0
    generate_seconds: float = 0.0
    env_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.response_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_seconds if self.wall_seconds > 0 else 0.0


def derive_seed(base: int | None, task_seed: int, sample: int, step: int) -> int | None:
    """The sampling seed of one prompt: a hash of (base, task seed, sample, step) in ``[0, 2**31)``.

    ``None`` when ``base`` is None (unseeded sampling). Distinct samples and steps get distinct seeds,
    and the seed never depends on the batch a prompt happens to be in.
    """
    if base is None:
        return None
    digest = hashlib.blake2b(f"{base}/{task_seed}/{sample}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def trajectory_id(task_seed: int, sample: int) -> str:
    """The stable record id of sample ``sample`` of the task with reset seed ``task_seed``."""
    return f"{task_seed}-{sample}"


class EnvSetupError(UserError, RuntimeError):
    """The environment could not be built or reset with the given options (before any episode)."""


class OutputExistsError(UserError, FileExistsError):
    """The output file already holds trajectories and ``resume`` was not asked for."""


def make_checked_env(env_id: str, env_kwargs: dict[str, Any], seed: int = 0) -> tuple[Any, str, dict[str, Any]]:
    """``(env, observation, info)``: one ``env_id`` env built with ``env_kwargs`` and reset with ``seed``,
    with every failure turned into a :class:`~steppo_envs.UserError` (the caller closes the env).

    Raises:
        ConfigError: unknown id, or options the env does not take (a typo) or a bad value.
        DataDirError / MissingExtraError: the env's data folder or an optional package is missing.
        EnvSetupError: anything else the env raised while being built or reset (the message has it).
    """
    import gymnasium

    spec = resolve_env_spec(env_id)
    try:
        env = gymnasium.make(spec, **env_kwargs)
    except UserError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{spec.id} does not take the option(s) {', '.join(sorted(env_kwargs)) or '(none)'} ({exc}): "
                          "check the --env-arg names against the env's config class.") from exc
    except Exception as exc:
        raise EnvSetupError(f"{spec.id} could not be created ({type(exc).__name__}: {exc}): check its options and "
                            "data (--debug shows the traceback).") from exc
    try:
        obs, info = env.reset(seed=seed)
    except Exception as exc:
        env.close()
        if isinstance(exc, UserError):
            raise
        raise EnvSetupError(f"{spec.id} failed to reset with seed {seed} ({type(exc).__name__}: {exc}): check its "
                            "options and data (--debug shows the traceback).") from exc
    return env, obs, dict(info)


def check_env(env_id: str, env_kwargs: dict[str, Any], seed: int = 0) -> None:
    """Build one ``env_id`` env with ``env_kwargs`` and reset it with ``seed``, as the first episode will
    (:func:`make_checked_env`, then closed)."""
    make_checked_env(env_id, env_kwargs, seed)[0].close()


def check_output(config: RolloutConfig) -> None:
    """Raise :class:`OutputExistsError` when ``config.output`` already holds data and ``resume`` is off."""
    out = config.output
    if out is not None and not config.resume and Path(out).exists() and Path(out).stat().st_size > 0:
        raise OutputExistsError(f"{out} already exists: pass --resume (resume=True) to continue it, "
                                "or choose another --output.")


def resumed_ids(config: RolloutConfig, policy: tuple[str, str] | None = None) -> set[str]:
    """The trajectory ids already in ``config.output`` (empty when there is no such file), after checking
    that every record there was collected with this env id, env options, sampling and, when given,
    ``policy = (backend, model)``: a file never mixes two configurations (a
    :class:`~steppo_agent.trajectory_io.TrajectoryFileError` names the fix)."""
    from steppo_agent.trajectory_io import read_ids

    out = config.output
    if out is None or not Path(out).exists() or Path(out).stat().st_size == 0:
        return set()
    return read_ids(out, env_id=config.env_id, env_kwargs=config.env_kwargs, sampling=config.sampling, policy=policy)


EpisodeState = Literal["active", "ended"]


@dataclass
class _Episode:
    """An episode in flight (internal): ``active`` from its reset until it ends, then ``ended`` (its
    trajectory finished and handed on; its slot goes back to the pool)."""

    slot: int
    task_seed: int
    sample: int
    traj: Trajectory
    observation: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    state: EpisodeState = "active"
    prompt_ids: list[int] = field(default_factory=list)


def _step_info(info: dict[str, Any], traj: Trajectory) -> dict[str, Any]:
    """``info`` minus the keys stored elsewhere (kept when they differ from the trajectory's)."""
    out = {k: v for k, v in info.items() if k not in STATIC_INFO_KEYS}
    if info.get("system_prompt", traj.system_prompt) != traj.system_prompt:
        out["system_prompt"] = info["system_prompt"]
    if info.get("tools", traj.tools) != traj.tools:
        out["tools"] = info["tools"]
    return out


class _Runner:
    """The round loop of :func:`run_rollout` (internal; one instance per call)."""

    def __init__(self, policy: Policy, config: RolloutConfig, render: RenderFn, envs: EnvPool, stats: RolloutStats,
                 finish: Callable[[Trajectory], None], on_step: Callable[[Trajectory, Step], None] | None) -> None:
        self.policy, self.config, self.render, self.envs, self.stats = policy, config, render, envs, stats
        self.finish_cb, self.on_step = finish, on_step
        self.policy_info = PolicyInfo(backend=policy.backend, model=policy.model, version=int(policy.version))

    def start(self, slot: int, task_seed: int, sample: int, result: EnvResult) -> _Episode:
        """The episode that ``result`` (its reset) begins in ``slot``; ended at once if the reset raised."""
        info = result.info
        traj = Trajectory(
            id=trajectory_id(task_seed, sample), env_id=self.config.env_id, env_kwargs=dict(self.config.env_kwargs),
            task_id=str(info.get("task_id", "")), seed=task_seed, group_id=str(task_seed),
            system_prompt=str(info.get("system_prompt", "")), tools=list(info.get("tools") or []),
            policy=self.policy_info, sampling=self.config.sampling,
        )
        ep = _Episode(slot, task_seed, sample, traj, observation=result.observation, info=info)
        if result.error is not None:
            self._end(ep, truncated=True, reason="env_error", error=result.error)
        return ep

    def _end(self, ep: _Episode, *, terminated: bool = False, truncated: bool = False,
             reason: str | None = None, error: str | None = None) -> None:
        traj = ep.traj
        traj.terminated, traj.truncated = terminated, truncated
        traj.truncation_reason = reason if truncated else None
        traj.return_ = float(sum(s.reward for s in traj.steps))
        success = ep.info.get("success")
        traj.success = bool(success) if success is not None else None
        traj.metrics = {k: float(v) for k, v in (ep.info.get("metrics") or {}).items()}
        if error is not None:
            warnings.warn(f"episode {traj.id}: the environment raised {error}; recorded as truncated (env_error).", stacklevel=2)
        ep.state = "ended"
        self.stats.episodes += 1
        self.finish_cb(traj)

    def round(self, active: list[_Episode]) -> None:
        """One policy call for every episode in ``active`` (that fits the context) and one env step each."""
        sampling = self.config.sampling
        ready: list[_Episode] = []
        for ep in active:
            ep.prompt_ids = self.render(self.policy.tokenizer, str(ep.info.get("system_prompt", "")),
                                        ep.observation, list(ep.info.get("tools") or []))
            if len(ep.prompt_ids) + sampling.max_tokens > self.policy.max_model_len:
                self._end(ep, truncated=True, reason="context_length")
            else:
                ready.append(ep)
        if not ready:
            return
        seeds = [derive_seed(sampling.seed, ep.task_seed, ep.sample, len(ep.traj.steps)) for ep in ready]
        version = getattr(self.policy, "version", None)  # the weights this round samples with
        version = int(version) if version is not None else None
        t0 = time.perf_counter()
        prompts = [ep.prompt_ids for ep in ready]
        if self.policy.wants_infos:  # e.g. the expert policy reads info["extra"]
            gens = self.policy.generate(prompts, sampling, seeds=seeds, infos=[ep.info for ep in ready])
        else:
            gens = self.policy.generate(prompts, sampling, seeds=seeds)
        t1 = time.perf_counter()
        if len(gens) != len(ready):
            raise RuntimeError(f"policy {self.policy.backend!r} returned {len(gens)} generations for {len(ready)} prompts.")
        texts = [clean_action_text(gen.text) for gen in gens]  # the one boundary: valid UTF-8 from here on
        results = self.envs.step_many([(ep.slot, text) for ep, text in zip(ready, texts, strict=True)])
        self.stats.generate_seconds += t1 - t0
        self.stats.env_seconds += time.perf_counter() - t1
        self.stats.rounds += 1
        for ep, gen, text, res in zip(ready, gens, texts, results, strict=True):
            self._record(ep, gen, text, res, version)

    def _record(self, ep: _Episode, gen: Generation, text: str, res: EnvResult, version: int | None) -> None:
        traj = ep.traj
        self.stats.steps, self.stats.response_tokens = self.stats.steps + 1, self.stats.response_tokens + len(gen.token_ids)
        self.stats.prompt_tokens += len(ep.prompt_ids)
        if res.error is not None:
            self._end(ep, truncated=True, reason="env_error", error=res.error)
            return
        info = res.info
        step = Step(
            index=len(traj.steps), observation=ep.observation, prompt_ids=list(ep.prompt_ids),
            response_ids=[int(t) for t in gen.token_ids], response_logprobs=[float(x) for x in gen.logprobs],
            response_text=text, finish_reason=gen.finish_reason, action=info.get("action"),
            valid=bool(info.get("valid", True)), reward=float(res.reward), terminated=bool(res.terminated),
            truncated=bool(res.truncated), info=_step_info(info, traj), policy_version=version,
        )
        traj.steps.append(step)
        ep.observation, ep.info = res.observation, info
        if self.on_step is not None:
            self.on_step(traj, step)
        if res.terminated:
            self._end(ep, terminated=True)
        elif res.truncated:
            self._end(ep, truncated=True, reason="max_steps")


def check_policy(policy: Policy) -> None:
    """Refuse a policy (a user's class, ``--policy``) that does not declare the Policy protocol's ``wants_infos``."""
    if not isinstance(getattr(policy, "wants_infos", None), bool):
        raise ConfigError(f"policy {type(policy).__name__} does not declare wants_infos (see the Policy protocol): add "
                          "the class attribute wants_infos = False (True to receive each episode's env info).")


def run_rollout(
    policy: Policy,
    config: RolloutConfig,
    *,
    on_trajectory: Callable[[Trajectory], None] | None = None,
    on_step: Callable[[Trajectory, Step], None] | None = None,
    render: RenderFn | None = None,
    stats: RolloutStats | None = None,
) -> list[Trajectory]:
    """Play ``config.num_tasks x config.group_size`` episodes with ``policy``; return the new trajectories.

    Args:
        policy: any :class:`~steppo_agent.policies.base.Policy` (its tokenizer renders the prompts).
        config: what to play and where to write it.
        on_trajectory: called with each trajectory when it finishes (after it is written).
        on_step: called after every recorded step (``--verbose`` printing).
        render: prompt renderer; default :func:`steppo_agent.prompting.render_prompt_ids`.
        stats: filled with counters and timings when given.

    Returns:
        The trajectories produced by this call (ids skipped by ``resume`` are not included), ordered
        by (task seed, sample).
    """
    from steppo_agent.prompting import render_prompt_ids
    from steppo_agent.trajectory_io import TrajectoryWriter

    render_fn = render or render_prompt_ids
    check_policy(policy)
    check_output(config)
    done_ids = resumed_ids(config, (policy.backend, policy.model))
    todo = deque((config.seed + i, j) for i in range(config.num_tasks) for j in range(config.group_size)
                 if trajectory_id(config.seed + i, j) not in done_ids)
    stats = stats if stats is not None else RolloutStats()
    stats.skipped = config.num_episodes - len(todo)
    if not todo:
        return []
    if config.validate_env:
        check_env(config.env_id, config.env_kwargs, seed=todo[0][0])
    n_slots = min(len(todo), config.max_active or len(todo))
    writer = TrajectoryWriter(config.output) if config.output is not None else None
    results: list[Trajectory] = []

    bar = progress_bar(total=len(todo), desc=f"rollout {config.env_id}", unit="ep", enabled=config.progress)

    def finish(traj: Trajectory) -> None:
        if writer is not None:
            writer.write(traj)
        results.append(traj)
        bar.update(1)
        if on_trajectory is not None:
            on_trajectory(traj)

    envs = EnvPool(config.env_id, config.env_kwargs, config.env_workers)
    runner = _Runner(policy, config, render_fn, envs, stats, finish, on_step)
    free = list(range(n_slots))[::-1]
    active: dict[int, _Episode] = {}
    start = time.perf_counter()
    try:
        while todo or active:
            new: list[tuple[int, int, int]] = []  # (slot, task seed, sample)
            while free and todo:
                task_seed, sample = todo.popleft()
                new.append((free.pop(), task_seed, sample))
            if new:
                for (slot, task_seed, sample), res in zip(new, envs.reset_many([(s, t) for s, t, _ in new]), strict=True):
                    active[slot] = runner.start(slot, task_seed, sample, res)
            runner.round([ep for ep in active.values() if ep.state == "active"])
            for slot in [s for s, ep in active.items() if ep.state == "ended"]:
                del active[slot]
                free.append(slot)
            stats.wall_seconds = time.perf_counter() - start
            bar.set_postfix(steps=stats.steps, tok_s=f"{stats.tokens_per_second:.0f}", refresh=False)
    finally:
        stats.wall_seconds = time.perf_counter() - start
        bar.close()
        envs.close()
        if writer is not None:
            writer.close()
    results.sort(key=lambda t: (t.seed, int(t.id.rsplit("-", 1)[1])))
    return results

