"""The expert policy: plays the environment's own expert and records ordinary step records.

Text-world environments expose their expert's next command in ``info["extra"]["expert_command"]``
when made with ``expert=True`` (TextWorld's walkthrough / policy commands, ALFWorld's expert plan),
or the whole action text in ``info["extra"]["expert_action"]`` (MultiHopQA's oracle: ``Search[title]``
then ``Answer[answer]``). This policy answers each step with that action, or with the command
formatted as the env's compact action (by default ``Act[command]``), so its records have the same
schema and the same prompt renderer as a model's, and ``steppo train --algo sft`` can fine-tune on
them (behaviour cloning).

The response token ids are ``tokenizer.encode(text) + [eos]`` — the expert's text was never sampled
by a model, so encoding it is the definition of its tokens; the logprobs are recorded as ``0.0``
(a deterministic policy). The rollout engine passes each episode's latest ``info`` to policies whose
``wants_infos`` is true.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steppo_agent.policies.base import Generation
from steppo_agent.records import SamplingConfig
from steppo_envs.config import UserError

__all__ = ["ExpertPolicy", "ExpertUnavailableError"]


class ExpertUnavailableError(UserError, ValueError):
    """The environment offers no expert command (expert=False, or no walkthrough/plan for a state)."""


class ExpertPolicy:
    """A :class:`~steppo_agent.policies.base.Policy` that replays ``info["extra"]["expert_command"]``.

    Args:
        model: the model whose tokenizer renders prompts and encodes the expert's responses (the
            records must use the tokenizer of the model that will be trained on them).
        template: how the command is written, ``"Act[{command}]"`` (compact form) by default;
            ``"{command}"`` writes the bare command.
        max_model_len: context limit used by the rollout engine.
    """

    backend = "expert"
    wants_infos = True

    def __init__(self, model: str = "smollm2-135m", *, template: str = "Act[{command}]", max_model_len: int = 2048) -> None:
        from transformers import AutoTokenizer

        from steppo_agent.default_model import resolve_model

        if "{command}" not in template:
            raise ValueError("template must contain '{command}', e.g. 'Act[{command}]'.")
        self.model = model
        self.version = 0
        self.template = template
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"the tokenizer of {model!r} has no EOS token; the expert's responses need one to end.")
        self._eos = int(eos)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int | None] | None = None,
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Generation]:
        if infos is None or len(infos) != len(prompts):
            raise ValueError("ExpertPolicy needs each episode's info: run it through steppo_agent.rollout.run_rollout.")
        out = []
        for info in infos:
            extra = info.get("extra") or {}
            if "expert_action" in extra:  # the whole action text, written by the env (e.g. MultiHopQA's oracle)
                out.append(self._encode(str(extra["expert_action"])))
                continue
            command = extra.get("expert_command")
            if "expert_command" not in extra:
                raise ExpertUnavailableError(
                    "the environment gives no info['extra']['expert_command']: make it with expert=True "
                    "(--env-arg expert=true); only envs with an expert (TextWorld, ALFWorld, MultiHopQA) support this policy."
                )
            if not command:
                raise ExpertUnavailableError(
                    f"the expert has no next command for task {info.get('task_id', '?')!r} at step {info.get('step', '?')} "
                    "(expert=true is set, but the game has no walkthrough and the planner found no plan for this "
                    "state): use games generated with a walkthrough (steppo games make writes one) or another --backend."
                )
            out.append(self._encode(self.template.format(command=command)))
        return out

    def _encode(self, text: str) -> Generation:
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self._eos]
        return Generation(ids, [0.0] * len(ids), str(self.tokenizer.decode(ids, skip_special_tokens=True)), "stop")

    def close(self) -> None:
        pass
