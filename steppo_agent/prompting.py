"""Prompt rendering: (system prompt, observation, tools) -> the exact prompt token ids a policy sees.

:func:`render_prompt_ids` is the single place where a step's prompt is built; rollout stores its
output in ``Step.prompt_ids`` and the trainer re-uses the stored ids (never re-renders). The prompt
is the chat ``[system, user=observation]`` rendered by the tokenizer's chat template with
``add_generation_prompt=True``.

Tools: when the chat template mentions ``tools`` (Hermes / Qwen / Llama-3.1 style templates), the
OpenAI-style schemas are passed as ``tools=`` and the template decides how to show them. Otherwise
(e.g. SmolLM2's plain ChatML template) :func:`describe_tools` appends a deterministic plain-text
description to the system prompt::

    <system prompt>

    # Tools
    - search(query: string): Search the corpus.
    - finish(answer: string, confidence?: number): Give the final answer.

(``?`` marks an optional argument; tools and arguments keep their given order.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["describe_tools", "render_messages_ids", "render_prompt_ids", "template_supports_tools"]


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` variable."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is used
        template = template.get("default") or next(iter(template.values()), None)
    return isinstance(template, str) and "tools" in template


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``function`` part of an OpenAI tool schema (plain function dicts are accepted too)."""
    inner = tool.get("function")
    return inner if isinstance(inner, Mapping) else tool


def describe_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """A deterministic plain-text tool list for chat templates without tool support."""
    lines = ["# Tools"]
    for tool in tools:
        fn = _function(tool)
        params = fn.get("parameters") or {}
        props: Mapping[str, Any] = params.get("properties") or {}
        required = set(params.get("required") or [])
        args = ", ".join(
            f"{name}{'' if name in required else '?'}: {spec.get('type', 'any') if isinstance(spec, Mapping) else 'any'}"
            for name, spec in props.items()
        )
        description = str(fn.get("description", "")).strip()
        lines.append(f"- {fn.get('name', '?')}({args})" + (f": {description}" if description else ""))
    return "\n".join(lines)


def render_prompt_ids(
    tokenizer: Any,
    system_prompt: str,
    observation: str,
    tools: list[dict[str, Any]] | None,
) -> list[int]:
    """Render ``[system, user=observation]`` (+ tools) with the chat template into prompt token ids.

    Returns a plain ``list[int]`` (transformers 5 returns a mapping from ``apply_chat_template``;
    its ``input_ids`` are taken explicitly). An empty ``system_prompt`` with no tools omits the
    system message (the template may then insert its own default). Deterministic: the same inputs
    always give the same ids.
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": observation})
    return render_messages_ids(tokenizer, messages, tools)


def render_messages_ids(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> list[int]:
    """Render a whole chat (``messages`` as the chat template takes them) + tools into prompt token ids,
    with ``add_generation_prompt=True``: the renderer of :func:`render_prompt_ids` (which calls it with
    ``[system, user]``) and of the step gateway (multi-turn chats).

    Tools go to the template as ``tools=`` when it renders them; otherwise :func:`describe_tools` is
    appended to the first message when it is a system message, or becomes a system message of its own.
    """
    tools = list(tools or [])
    chat = [dict(m) for m in messages]
    template_tools: list[dict[str, Any]] | None = None
    if tools:
        if template_supports_tools(tokenizer):
            template_tools = tools
        elif chat and chat[0].get("role") == "system" and chat[0].get("content"):
            chat[0]["content"] = f"{chat[0]['content']}\n\n{describe_tools(tools)}"
        else:
            chat = [{"role": "system", "content": describe_tools(tools)}] + [
                m for m in chat if not (m.get("role") == "system" and not m.get("content"))]
    rendered = tokenizer.apply_chat_template(
        chat,
        tools=template_tools,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    ids = rendered["input_ids"] if isinstance(rendered, Mapping) else rendered
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids]
