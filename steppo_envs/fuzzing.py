"""Fuzz an environment with hostile actions: no exception, no hang, every output storable.

The contract says a malformed action is a normal (invalid) step with feedback. :func:`fuzz_env`
checks it the way a model in early training, or an attacker, would: it plays ``n`` actions drawn by
:func:`hostile_actions` (deeply nested JSON, huge strings, NUL bytes, lone surrogates, broken tags,
random Unicode, real tool calls with wrongly typed arguments, mixed with plausible actions so
episodes advance) and counts

* **exceptions**: ``env.step`` raised;
* **hangs**: one step took longer than ``step_timeout_s`` (it is interrupted with ``SIGALRM``);
* **bad outputs**: the observation is not a string, the reward not a finite float, or the
  observation / ``info`` cannot be written as UTF-8 JSON (what a trajectory file needs).

After any failure the env is reset, so one bug does not hide the next. ``benchmarks/fuzz_envs.py``
runs 10,000 actions per registered id; the test suite runs a few hundred.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FuzzReport", "fuzz_env", "hostile_actions"]

_TAGS = ("<tool_call>", "</tool_call>", "<answer>", "</answer>", "<think>", "</think>", "[", "]", "{", "}", '"',
         "\\", "\n", "\x00", "\ud800", "\udfff", "\u202e", "Answer[", "Search[", "Act[", "```json", "\\u0000",
         "\\ud800", ":", ",", "null", "1e999", "-0", "NaN")


def _random_unicode(rng: np.random.Generator, n: int) -> str:
    """``n`` code points from the whole range, surrogates and controls included."""
    return "".join(chr(int(c)) for c in rng.integers(0, 0x110000, size=n))


def _tool_call(name: str, arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def _hostile(rng: np.random.Generator, tools: Sequence[str], verbs: Sequence[str]) -> str:
    """One hostile action (see the module docstring for the families)."""
    name = str(rng.choice(list(tools) or ["tool"]))
    verb = str(rng.choice(list(verbs) or ["Search"]))
    depth = int(rng.choice([50, 500, 3000, 20000]))
    size = int(rng.choice([1000, 20_000, 200_000]))
    family = int(rng.integers(0, 14))
    if family == 0:  # arrays nested inside a real tool's arguments
        return f'<tool_call>{{"name": "{name}", "arguments": {{"query": ' + "[" * depth
    if family == 1:
        return "<tool_call>" + '{"a": ' * depth + "1" + "}" * depth + "</tool_call>"
    if family == 2:  # arguments given as a JSON string holding deep JSON
        return _tool_call(name, "[" * depth + "]" * depth)
    if family == 3:
        return f"{verb}[" * depth + "x" + "]" * int(rng.integers(0, depth + 1))
    if family == 4:  # huge strings, bare or inside a call
        return "a" * size if rng.random() < 0.5 else _tool_call(name, {"query": "b " * (size // 2), "command": "c" * size})
    if family == 5:  # NUL and control characters inside otherwise valid actions
        return f"{verb}[go\x00 east\x01\x7f]" if rng.random() < 0.5 else _tool_call(name, {"query": "x\x00y", "command": "\x00"})
    if family == 6:  # lone surrogates, raw and as JSON escapes
        raw = f"{verb}[\ud800 north]" if rng.random() < 0.5 else "<answer>\udfff</answer>"
        escaped = f'<tool_call>{{"name": "{name}", "arguments": {{"query": "\\ud800", "command": "\\udc00 go"}}}}</tool_call>'
        return raw if rng.random() < 0.5 else escaped
    if family == 7:
        return _random_unicode(rng, int(rng.integers(1, 400)))
    if family == 8:  # wrongly typed arguments of real tools
        value: Any = [None, 1, -1, 10**400, 1.5, [], [["x"]], {"q": {}}, True, "", " " * 50][int(rng.integers(0, 11))]
        key = str(rng.choice(["query", "command", "paper_id", "paper_ids", "answer", "x", ""]))
        return _tool_call(name, {key: value})
    if family == 9:  # numbers the decoder cannot convert or represent
        return f'<tool_call>{{"name": "{name}", "arguments": {{"query": 1{"0" * 6000}}}}}</tool_call>'
    if family == 10:  # broken, doubled and mixed tags
        parts = [str(rng.choice(_TAGS)) for _ in range(int(rng.integers(1, 40)))]
        return "".join(parts)
    if family == 11:
        return f"<tool_call>{_tool_call(name, {})}</tool_call><answer>x</answer>" * int(rng.integers(1, 50))
    if family == 12:  # many actions, one per line
        return "\n".join(f"{verb}[{i}]" for i in range(int(rng.integers(1, 3000))))
    return ""  # the empty response


def _plausible(rng: np.random.Generator, tools: Sequence[str], verbs: Sequence[str]) -> str:
    """A well-formed action (so episodes move on and reach their ends)."""
    words = ["go east", "look", "take key", "open door", "inventory", "paris", "yes", "1990", "attention is all you need"]
    word = str(rng.choice(words))
    verb = str(rng.choice(list(verbs) + ["Answer"]))
    if rng.random() < 0.5 or not tools:
        return f"I think so. {verb}[{word}]"
    return _tool_call(str(rng.choice(list(tools))), {"query": word, "command": word})


def hostile_actions(seed: int, n: int, tools: Sequence[str] = (), verbs: Sequence[str] = ()) -> Iterator[str]:
    """``n`` actions, 4 in 5 hostile and 1 in 5 plausible, reproducible from ``seed``.

    Args:
        tools: tool names to put in tool calls (e.g. ``[t["function"]["name"] for t in info["tools"]]``).
        verbs: compact verbs (``Search``, ``Act``).
    """
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield _plausible(rng, tools, verbs) if rng.random() < 0.2 else _hostile(rng, tools, verbs)


@dataclass
class FuzzReport:
    """What :func:`fuzz_env` saw."""

    env_id: str
    actions: int = 0
    exceptions: int = 0
    hangs: int = 0
    bad_outputs: int = 0
    episodes: int = 0
    slowest_step_s: float = 0.0
    examples: list[str] = field(default_factory=list)
    """The first few failures: kind, the action (cut to 120 characters) and the error."""

    @property
    def failures(self) -> int:
        return self.exceptions + self.hangs + self.bad_outputs

    def add(self, kind: str, action: str, error: str) -> None:
        if kind == "exception":
            self.exceptions += 1
        elif kind == "hang":
            self.hangs += 1
        else:
            self.bad_outputs += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {action[:120]!r} -> {error[:300]}")


class _StepTimeout(BaseException):
    """Raised inside a step that ran past the limit (a BaseException, so env code cannot swallow it)."""


def _output_problem(obs: Any, reward: Any, info: Any) -> str | None:
    if not isinstance(obs, str):
        return f"observation is a {type(obs).__name__}, not a str"
    if not isinstance(reward, (int, float)) or not math.isfinite(float(reward)):
        return f"reward {reward!r} is not a finite number"
    try:
        json.dumps({"observation": obs, "info": info}, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        return f"observation/info cannot be stored as UTF-8 JSON ({exc})"
    return None


class _Alarm:
    """A per-step wall-clock limit with SIGALRM (main thread on POSIX; elsewhere steps are only timed)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> _Alarm:
        if self.armed:
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def _fire(self, signum: int, frame: Any) -> None:
        raise _StepTimeout

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)


def _names(info: dict[str, Any]) -> tuple[list[str], list[str]]:
    tools = [t.get("function", t).get("name", "") for t in info.get("tools", []) if isinstance(t, dict)]
    verbs = ["Search", "Act", "Related", "Select", "Finish"]
    return [t for t in tools if t], verbs


def fuzz_env(env: Any, n: int, *, seed: int = 0, step_timeout_s: float = 10.0, env_id: str = "") -> FuzzReport:
    """Play ``n`` :func:`hostile_actions` in ``env`` (reset with seeds ``seed, seed + 1, ...``).

    Returns:
        A :class:`FuzzReport`; ``report.failures == 0`` is the contract.
    """
    report = FuzzReport(env_id=env_id or str(getattr(getattr(env, "spec", None), "id", type(env).__name__)))
    episode_seed = seed
    _, info = env.reset(seed=episode_seed)
    report.episodes = 1
    tools, verbs = _names(info)
    for action in hostile_actions(seed, n, tools, verbs):
        report.actions += 1
        start = time.perf_counter()
        failed = False
        try:
            with _Alarm(step_timeout_s):
                obs, reward, terminated, truncated, info = env.step(action)
        except _StepTimeout:
            report.add("hang", action, f"step ran past {step_timeout_s:g} s")
            failed = True
        except Exception as exc:  # noqa: BLE001 (counting them is the point)
            report.add("exception", action, f"{type(exc).__name__}: {exc}")
            failed = True
        report.slowest_step_s = max(report.slowest_step_s, time.perf_counter() - start)
        if not failed:
            problem = _output_problem(obs, reward, info)
            if problem:
                report.add("bad output", action, problem)
                failed = True
        if failed or terminated or truncated:
            episode_seed += 1
            env.reset(seed=episode_seed)
            report.episodes += 1
    return report
