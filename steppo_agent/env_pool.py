"""The env slots of one rollout: one env per slot, in this process or in spawned worker processes.

With ``workers = W > 0`` the envs live in ``W`` worker processes (spawned, not forked: the parent may
hold an inference engine and its threads). Slot ``k`` (one env, reused by the next episode that takes
the slot) lives in worker ``k % W``; each round sends each worker one message with all its resets /
steps, so slow envs (TextWorld, BM25 search) step in parallel. An env that raises ends that episode
(:attr:`EnvResult.error`), not the rollout.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from steppo_envs.config import ConfigError

__all__ = ["EnvPool", "EnvResult", "resolve_env_spec"]


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


@dataclass
class EnvResult:
    """What one ``reset`` / ``step`` returned (``error`` is set, and the rest empty, if it raised)."""

    observation: str = ""
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


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
