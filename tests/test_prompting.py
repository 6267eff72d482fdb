"""Prompt rendering: exact, deterministic token ids from (system prompt, observation, tools)."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import pytest

from steppo_agent.prompting import describe_tools, render_prompt_ids, template_supports_tools

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (pip install 'steppo[agent]')"
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the corpus.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "finish",
            "description": "Give the final answer.",
            "parameters": {
                "type": "object",
                "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
                "required": ["answer"],
            },
        },
    },
]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def test_renders_plain_deterministic_ids(tokenizer: Any) -> None:
    ids = render_prompt_ids(tokenizer, "You play a game.", "You are in a kitchen. Exits: north.", None)
    assert isinstance(ids, list) and ids and all(type(i) is int for i in ids)
    assert ids == render_prompt_ids(tokenizer, "You play a game.", "You are in a kitchen. Exits: north.", None)
    text = tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nYou play a game.<|im_end|>\n"
        "<|im_start|>user\nYou are in a kitchen. Exits: north.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_prompt_ids(tokenizer, "You play a game.", "You are in a kitchen. Exits: north.", []) == ids


def test_tools_fall_back_to_the_system_prompt(tokenizer: Any) -> None:
    assert not template_supports_tools(tokenizer)
    ids = render_prompt_ids(tokenizer, "Answer questions.", "Who wrote Hamlet?", TOOLS)
    text = tokenizer.decode(ids)
    assert describe_tools(TOOLS) == (
        "# Tools\n- search(query: string): Search the corpus.\n"
        "- finish(answer: string, confidence?: number): Give the final answer."
    )
    assert f"<|im_start|>system\nAnswer questions.\n\n{describe_tools(TOOLS)}<|im_end|>" in text
    assert text.endswith("<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n")


def test_tools_go_to_templates_that_support_them(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
        "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert template_supports_tools(tok)
    text = tok.decode(render_prompt_ids(tok, "S", "O", TOOLS))
    assert text == "<system>S</system><user>O</user><tools>search;finish;</tools><assistant>"
