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

Env workers: with ``env_workers = W > 0`` the envs live in ``W`` worker processes (spawned, not forked:
the parent may hold an inference engine and its threads). Episode slot ``k`` (one env, reused by the
next episode that takes the slot) lives in worker ``k % W``; each round sends each worker one
message with all its resets / steps, so slow envs (TextWorld, BM25 search) step in parallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import multiprocessing as mp
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steppo_agent.policies.base import Generation, Policy
from steppo_agent.records import PolicyInfo, SamplingConfig, Step, Trajectory
from steppo_envs.actions import clean_action_text
from steppo_envs.config import ConfigError, UserError
from steppo_envs.progress import progress_bar

__all__ = ["STATIC_INFO_KEYS", "EnvPool", "EnvResult", "EnvSetupError", "OutputExistsError", "RenderFn", "RolloutConfig",
           "RolloutStats", "check_env", "check_output", "derive_seed", "make_checked_env", "replace_sampling",
           "resolve_env_spec", "resumed_ids", "run_rollout", "trajectory_id"]

RenderFn = Callable[[Any, str, str, list[dict[str, Any]]], list[int]]
"""``(tokenizer, system_prompt, observation, tools) -> prompt ids`` (default: ``render_prompt_ids``)."""

#: info keys stored once on the Trajectory (system_prompt, tools) or in a Step field (action).
STATIC_INFO_KEYS: tuple[str, ...] = ("system_prompt", "tools", "action")


@dataclass
class RolloutConfig:
    """What to roll out and where to write it.

    Attributes:
        env_id: a registered id (``steppo/MultiHopQA-v0``) or ``"module:id"`` (the module is imported
            first, so it can register its own env).
        env_kwargs: keyword options for ``gymnasium.make`` (the env's config fields).
        num_tasks: how many tasks (reset seeds) to play.
        group_size: samples per task; they share the reset seed and ``group_id``. Use > 1 with
            temperature > 0 (greedy samples of one task are identical).
        seed: the first task's reset seed; task ``i`` uses ``seed + i``.
        sampling: temperature / top_p / max_tokens / stop / seed for every policy call.
        env_workers: 0 = envs step in this process; ``W > 0`` = ``W`` worker processes.
        max_active: most episodes in flight at once (one batch row each); ``None`` = all of them.
        output: JSONL file that receives each finished trajectory; ``None`` = keep in memory only.
        resume: when ``output`` exists, skip the trajectory ids already in it and append the rest.
        progress: show progress (a tqdm bar on a terminal, a plain line every 30 s in a log).
        validate_env: before the first episode, build one env and reset it (:func:`check_env`), so a
            misspelt option, a bad value, missing data or a missing extra raises a
            :class:`~steppo_envs.UserError` before anything is written.
    """

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    num_tasks: int = 1
    group_size: int = 1
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    env_workers: int = 0
    max_active: int | None = None
    output: str | Path | None = None
    resume: bool = False
    progress: bool = True
    validate_env: bool = True

    def __post_init__(self) -> None:
        if self.num_tasks < 1:
            raise ConfigError(f"num_tasks={self.num_tasks} must be >= 1: pass --num-tasks 1 or more.")
        if self.group_size < 1:
            raise ConfigError(f"group_size={self.group_size} must be >= 1: pass --group-size 1 or more.")
        if self.env_workers < 0:
            raise ConfigError(f"env_workers={self.env_workers} must be >= 0: use 0 to step envs in this process.")
        if self.max_active is not None and self.max_active < 1:
            raise ConfigError(f"max_active={self.max_active} must be >= 1, or None for all episodes at once.")
        if self.group_size > 1 and self.sampling.temperature == 0.0:
            raise ConfigError(f"group_size={self.group_size} with temperature 0 gives identical samples: "
                             "set a temperature > 0 or use group_size=1.")
        if self.resume and self.output is None:
            raise ConfigError("resume=True needs an output file: set output (--output FILE) to the file to continue.")
        if not isinstance(self.sampling, SamplingConfig):
            raise TypeError(f"sampling must be a SamplingConfig, not {type(self.sampling).__name__}: use SamplingConfig(...).")

    @property
    def num_episodes(self) -> int:
        return self.num_tasks * self.group_size


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


@dataclass
class EnvResult:
    """What one ``reset`` / ``step`` returned (``error`` is set, and the rest empty, if it raised)."""

    observation: str = ""
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def resolve_env_spec(env_id: str) -> Any:
    """The Gymnasium ``EnvSpec`` of ``env_id``; ``"module:id"`` imports ``module`` first (it may register ``id``)."""
    import gymnasium

    import steppo_envs  # noqa: F401  (registers the bundled ids)

    name = env_id
    if ":" in env_id:
        module, _, name = env_id.partition(":")
        importlib.import_module(module)
    try:
        return gymnasium.spec(name)
    except gymnasium.error.Error as exc:
        raise ConfigError(
            f"unknown environment {name!r} ({exc}): run `steppo envs` for the registered ids, "
            "or pass 'module:namespace/Name-v0' to import the module that registers it."
        ) from None


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


_Command = tuple[str, int, Any]  # ("reset", slot, seed) or ("step", slot, response text)


class _LocalEnvs:
    """One env per slot in this process, created on first use."""

    def __init__(self, spec: Any, env_kwargs: dict[str, Any]) -> None:
        self.spec, self.env_kwargs = spec, dict(env_kwargs)
        self.envs: dict[int, Any] = {}

    def run(self, commands: Sequence[_Command]) -> list[EnvResult]:
        import gymnasium

        out: list[EnvResult] = []
        for op, slot, arg in commands:
            try:
                if slot not in self.envs:
                    self.envs[slot] = gymnasium.make(self.spec, **self.env_kwargs)
                env = self.envs[slot]
                if op == "reset":
                    obs, info = env.reset(seed=int(arg))
                    out.append(EnvResult(observation=obs, info=dict(info)))
                else:
                    obs, reward, terminated, truncated, info = env.step(arg)
                    out.append(EnvResult(obs, float(reward), bool(terminated), bool(truncated), dict(info)))
            except Exception as exc:  # an env bug ends that episode, not the rollout
                out.append(EnvResult(error=f"{type(exc).__name__}: {exc}"))
        return out

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def _worker_main(conn: Any, spec: Any, env_kwargs: dict[str, Any]) -> None:
    """Worker process loop: receive a list of commands, answer a list of :class:`EnvResult`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent
    envs = _LocalEnvs(spec, env_kwargs)
    try:
        while True:
            commands = conn.recv()
            if commands is None:
                break
            conn.send(envs.run(commands))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        envs.close()


class _WorkerEnvs:
    """Envs in ``n`` spawned worker processes; slot ``k`` lives in worker ``k % n``."""

    def __init__(self, spec: Any, env_kwargs: dict[str, Any], n: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, spec, dict(env_kwargs)), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, commands: Sequence[_Command]) -> list[EnvResult]:
        n = len(self.conns)
        batches: list[list[int]] = [[] for _ in range(n)]
        for i, (_, slot, _) in enumerate(commands):
            batches[slot % n].append(i)
        for w, idx in enumerate(batches):
            if idx:
                self.conns[w].send([commands[i] for i in idx])
        out: list[EnvResult | None] = [None] * len(commands)
        for w, idx in enumerate(batches):
            if not idx:
                continue
            try:
                answers = self.conns[w].recv()
            except EOFError:
                raise RuntimeError(f"env worker {w} died (exit code {self.procs[w].exitcode}): "
                                   "run with --workers 0 to see the error.") from None
            for i, res in zip(idx, answers, strict=True):
                out[i] = res
        return [r for r in out if r is not None]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


class EnvPool:
    """The env slots of one rollout: in this process (``workers=0``) or in worker processes."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], workers: int = 0) -> None:
        spec = resolve_env_spec(env_id)
        self._impl: _LocalEnvs | _WorkerEnvs = _WorkerEnvs(spec, env_kwargs, workers) if workers > 0 else _LocalEnvs(spec, env_kwargs)

    def reset_many(self, items: Sequence[tuple[int, int]]) -> list[EnvResult]:
        """Reset slot ``s`` with ``seed`` for each ``(s, seed)``."""
        return self._impl.run([("reset", slot, seed) for slot, seed in items])

    def step_many(self, items: Sequence[tuple[int, str]]) -> list[EnvResult]:
        """Step slot ``s`` with the raw response ``text`` for each ``(s, text)``."""
        return self._impl.run([("step", slot, text) for slot, text in items])

    def close(self) -> None:
        self._impl.close()


@dataclass
class _Episode:
    """An episode in flight (internal)."""

    slot: int
    task_seed: int
    sample: int
    observation: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    traj: Trajectory | None = None
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

    def _start(self, ep: _Episode, result: EnvResult) -> None:
        ep.observation, ep.info = result.observation, result.info
        info = result.info
        ep.traj = Trajectory(
            id=trajectory_id(ep.task_seed, ep.sample), env_id=self.config.env_id, env_kwargs=dict(self.config.env_kwargs),
            task_id=str(info.get("task_id", "")), seed=ep.task_seed, group_id=str(ep.task_seed),
            system_prompt=str(info.get("system_prompt", "")), tools=list(info.get("tools") or []),
            policy=self.policy_info, sampling=self.config.sampling,
        )
        if result.error is not None:
            self._end(ep, truncated=True, reason="env_error", error=result.error)

    def _end(self, ep: _Episode, *, terminated: bool = False, truncated: bool = False,
             reason: str | None = None, error: str | None = None) -> None:
        traj = ep.traj
        assert traj is not None
        traj.terminated, traj.truncated = terminated, truncated
        traj.truncation_reason = reason if truncated else None
        traj.return_ = float(sum(s.reward for s in traj.steps))
        success = ep.info.get("success")
        traj.success = bool(success) if success is not None else None
        traj.metrics = {k: float(v) for k, v in (ep.info.get("metrics") or {}).items()}
        if error is not None:
            warnings.warn(f"episode {traj.id}: the environment raised {error}; recorded as truncated (env_error).", stacklevel=2)
        ep.traj = None
        self.stats.episodes += 1
        self.finish_cb(traj)

    def round(self, active: list[_Episode]) -> None:
        """One policy call for every episode in ``active`` (that fits the context) and one env step each."""
        sampling = self.config.sampling
        ready: list[_Episode] = []
        for ep in active:
            assert ep.traj is not None
            ep.prompt_ids = self.render(self.policy.tokenizer, str(ep.info.get("system_prompt", "")),
                                        ep.observation, list(ep.info.get("tools") or []))
            if len(ep.prompt_ids) + sampling.max_tokens > self.policy.max_model_len:
                self._end(ep, truncated=True, reason="context_length")
            else:
                ready.append(ep)
        if not ready:
            return
        seeds = [derive_seed(sampling.seed, ep.task_seed, ep.sample, len(ep.traj.steps)) for ep in ready]  # type: ignore[union-attr]
        t0 = time.perf_counter()
        prompts = [ep.prompt_ids for ep in ready]
        if getattr(self.policy, "wants_infos", False):  # e.g. the expert policy reads info["extra"]
            gens = self.policy.generate(prompts, sampling, seeds=seeds, infos=[ep.info for ep in ready])  # type: ignore[call-arg]
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
            self._record(ep, gen, text, res)

    def _record(self, ep: _Episode, gen: Generation, text: str, res: EnvResult) -> None:
        traj = ep.traj
        assert traj is not None
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
            truncated=bool(res.truncated), info=_step_info(info, traj),
        )
        traj.steps.append(step)
        ep.observation, ep.info = res.observation, info
        if self.on_step is not None:
            self.on_step(traj, step)
        if res.terminated:
            self._end(ep, terminated=True)
        elif res.truncated:
            self._end(ep, truncated=True, reason="max_steps")


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
            new: list[_Episode] = []
            while free and todo:
                task_seed, sample = todo.popleft()
                new.append(_Episode(slot=free.pop(), task_seed=task_seed, sample=sample))
            if new:
                for ep, res in zip(new, envs.reset_many([(ep.slot, ep.task_seed) for ep in new]), strict=True):
                    active[ep.slot] = ep
                    runner._start(ep, res)
            runner.round([ep for ep in active.values() if ep.traj is not None])
            for slot in [s for s, ep in active.items() if ep.traj is None]:
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


def replace_sampling(config: RolloutConfig, **changes: Any) -> RolloutConfig:
    """A copy of ``config`` with some sampling fields changed (e.g. ``temperature=0`` for eval)."""
    return dataclasses.replace(config, sampling=SamplingConfig(**{**config.sampling.model_dump(), **changes}))

