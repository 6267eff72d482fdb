"""A tiny deterministic steppo environment, and a scripted policy, for fast rollout tests.

It is also the worked example of writing and registering your own environment:

* subclass ``gymnasium.Env[str, str]`` with ``text_space()`` observation / action spaces;
* one frozen config model (a ``ConfigModel``, a description per field), built with ``build_config``
  (so typos in options and bad values are errors naming the fix);
* ``reset`` calls ``super().reset(seed=seed)`` and draws the task from ``self.np_random``;
* every observation re-renders the whole state; ``info`` comes from ``make_info``;
* the raw response is parsed with ``parse_action``; a bad action is a normal (invalid) step with
  feedback; ``terminated`` (solved) and ``truncated`` (out of steps) stay apart;
* ``steppo_envs.register(id, "module:Class", description)`` makes it visible to ``gymnasium.make``
  and ``steppo envs``; ``steppo rollout --env toy_env:steppotest/Guess-v0`` imports this module
  (on ``PYTHONPATH``) first, so the registration below runs.

Game: guess a secret integer in ``[low, high]``; after each guess the state says "higher" or "lower".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import gymnasium
from pydantic import ConfigDict, Field, model_validator

from steppo_agent.policies.base import Generation
from steppo_agent.records import SamplingConfig
from steppo_envs import (
    ConfigError,
    ConfigModel,
    ToolSpec,
    build_config,
    check_can_step,
    format_hint,
    make_info,
    parse_action,
    register,
    reject_reset_options,
    text_space,
)

ENV_ID = "steppotest/Guess-v0"

GUESS_TOOL = ToolSpec(
    name="guess",
    description="Guess the secret number.",
    parameters={"type": "object", "properties": {"number": {"type": "string", "description": "an integer, e.g. 7"}}, "required": ["number"]},
    compact="Guess",
)


class GuessConfig(ConfigModel):
    """Options of :class:`GuessEnv` (frozen; a typo or a bad value is one ``ConfigError`` naming the fix)."""

    model_config = ConfigDict(frozen=True)

    low: int = Field(1, description="Smallest possible secret.")
    high: int = Field(16, description="Largest possible secret.")
    max_steps: int = Field(4, ge=1, description="Guesses allowed before the episode is truncated.")
    invalid_penalty: float = Field(-0.1, le=0, description="Reward of an invalid action (a negative number).")
    step_delay: float = Field(0.0, ge=0, description="Seconds each ``step`` sleeps (only to make kill tests robust).")
    padding: int = Field(0, ge=0, description="Extra words appended to every observation (to test context-length limits).")

    @model_validator(mode="after")
    def _secret_range(self) -> Self:
        if self.high < self.low:
            raise ConfigError(f"high={self.high} is below low={self.low}: pass high >= low.")
        return self


class GuessEnv(gymnasium.Env[str, str]):
    """Guess the number: reward 1 and ``terminated`` on the right guess."""

    metadata = {"render_modes": []}

    def __init__(self, config: GuessConfig | None = None, **overrides: Any) -> None:
        self.config = build_config(GuessConfig, config, overrides)
        self.observation_space = text_space()
        self.action_space = text_space()
        self.system_prompt = "You play a number-guessing game. Reply with Guess[n] for an integer n."
        self._secret = self.config.low
        self._history: list[tuple[int, str]] = []
        self._feedback: str | None = None
        self._step = 0
        self._done: bool | None = None  # None: no episode yet

    def _obs(self) -> str:
        lines = [f"The secret is an integer from {self.config.low} to {self.config.high}."]
        lines += [f"Guess {n}: {verdict}" for n, verdict in self._history] or ["No guesses yet."]
        if self._feedback:
            lines.append(f"Your last reply was invalid: {self._feedback}. {format_hint([GUESS_TOOL], allow_answer=False)}")
        lines.append(f"Steps left: {self.config.max_steps - self._step}.")
        if self.config.padding:
            lines.append(" ".join(["pad"] * self.config.padding))
        return "\n".join(lines)

    def _info(self, action: Any = None, valid: bool = True, success: bool = False) -> dict[str, Any]:
        return dict(
            make_info(
                task_id=f"guess-{self.config.low}-{self.config.high}-{self._secret}",
                system_prompt=self.system_prompt,
                tools=[GUESS_TOOL],
                step=self._step,
                max_steps=self.config.max_steps,
                action=action,
                valid=valid,
                feedback=self._feedback,
                metrics={"guesses": float(len(self._history))},
                success=success,
                extra={"split": "toy"},
            )
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        reject_reset_options(options, ENV_ID)  # no task list: no reset option is accepted
        self._done = False
        self._secret = int(self.np_random.integers(self.config.low, self.config.high + 1))
        self._history, self._feedback, self._step = [], None, 0
        return self._obs(), self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.config.step_delay:
            time.sleep(self.config.step_delay)
        check_can_step(ENV_ID, started=self._done is not None, done=bool(self._done))  # after the end: an error
        self._step += 1
        parsed = parse_action(action, [GUESS_TOOL], allow_answer=False)
        reward, success = 0.0, False
        if not parsed.valid:
            self._feedback = parsed.error
            reward = self.config.invalid_penalty
        else:
            self._feedback = None
            raw = str(parsed.tool_calls[0].arguments["number"]).strip()
            n = int(raw) if raw.lstrip("-").isdigit() else None
            if n is None:
                self._feedback = f"{raw!r} is not an integer"
                reward = self.config.invalid_penalty
            elif n == self._secret:
                success, reward = True, 1.0
                self._history.append((n, "correct"))
            else:
                self._history.append((n, "higher" if self._secret > n else "lower"))
        terminated = success
        truncated = not terminated and self._step >= self.config.max_steps
        self._done = terminated or truncated
        info = self._info(parsed, valid=parsed.valid and self._feedback is None, success=success)
        return self._obs(), reward, terminated, truncated, info


register(ENV_ID, f"{__name__}:GuessEnv", "Toy number-guessing game (tests and docs example).")


# ----------------------------------------------------------------------------- scripted policy

Responder = Callable[[str, "int | None", SamplingConfig], "str | None"]


def bisect_responder(prompt_text: str, seed: int | None, sampling: SamplingConfig) -> str | None:
    """Guess the middle of the remaining range (greedy) or a seed-chosen number in it (temperature > 0)."""
    m = re.search(r"integer from (-?\d+) to (-?\d+)", prompt_text)
    low, high = (int(m.group(1)), int(m.group(2))) if m else (1, 16)
    for n, verdict in re.findall(r"Guess (-?\d+): (higher|lower)", prompt_text):
        if verdict == "higher":
            low = max(low, int(n) + 1)
        else:
            high = min(high, int(n) - 1)
    high = max(low, high)
    n = (low + high) // 2 if sampling.temperature == 0 or seed is None else low + seed % (high - low + 1)
    return f"I think it is {n}. Guess[{n}]"


class FakePolicy:
    """A deterministic :class:`~steppo_agent.policies.base.Policy` over a real tokenizer (plumbing tests).

    ``respond(prompt_text, seed, sampling)`` returns the response text, or ``None`` for a failed
    request (``finish_reason="error"``, no tokens). Response ids are the text's token ids plus EOS,
    logprobs are ``-0.5`` each. ``calls`` records the batch size of every ``generate`` call.
    """

    backend = "fake"
    version = 0
    wants_infos = False

    def __init__(self, tokenizer: Any, *, respond: Responder = bisect_responder, max_model_len: int = 2048, model: str = "fake") -> None:
        self.tokenizer = tokenizer
        self.respond = respond
        self.max_model_len = max_model_len
        self.model = model
        self.calls: list[int] = []

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, seeds: Sequence[int | None] | None = None
    ) -> list[Generation]:
        self.calls.append(len(prompts))
        out = []
        for i, prompt in enumerate(prompts):
            seed = seeds[i] if seeds is not None else None
            text = self.respond(self.tokenizer.decode(list(prompt)), seed, sampling)
            if text is None:
                out.append(Generation(token_ids=[], logprobs=[], text="", finish_reason="error"))
                continue
            ids = self.tokenizer.encode(text, add_special_tokens=False)[: sampling.max_tokens - 1]
            ids = ids + [int(self.tokenizer.eos_token_id)]
            out.append(Generation(ids, [-0.5] * len(ids), self.tokenizer.decode(ids, skip_special_tokens=True), "stop"))
        return out

    def close(self) -> None:
        pass


def load_tokenizer() -> Any:
    """The default model's tokenizer (converted once by ``resolve_model``)."""
    from transformers import AutoTokenizer

    from steppo_agent.default_model import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


def make_fake_policy(model: str = "fake") -> FakePolicy:
    """Factory for ``steppo rollout --policy toy_env:make_fake_policy`` (a scripted policy)."""
    return FakePolicy(load_tokenizer(), model=model)
