"""Render an environment state into one observation string inside a character budget.

Environments describe their state as :class:`Section` s (the task, history entries, tool results,
candidate lists...). :func:`render_sections` keeps the total under ``budget_chars`` by shrinking the
lowest-priority sections first (ties: the earliest, so old history goes before recent history) and
dropping them once they are down to ``min_chars``. Sections with ``keep=True`` (the task) are never
cut. Budgets are in characters so environments need no tokenizer (about 4 characters per token for
English with SmolLM2/Llama tokenizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Section", "TRUNCATION_MARK", "render_sections", "truncate_text"]

TRUNCATION_MARK = " …"


@dataclass(frozen=True)
class Section:
    """A piece of the rendered state.

    Attributes:
        text: the body.
        title: an optional heading rendered as ``"## title"``.
        priority: lower is shrunk first; the task should use ``keep=True`` instead.
        keep: never shrink or drop this section.
        min_chars: shrink no further than this; below it the section is dropped.
    """

    text: str
    title: str | None = None
    priority: int = 0
    keep: bool = False
    min_chars: int = 40


def truncate_text(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, ending with a visible mark when cut."""
    if len(text) <= max_chars:
        return text
    if max_chars <= len(TRUNCATION_MARK):
        return text[:max_chars]
    return text[: max_chars - len(TRUNCATION_MARK)].rstrip() + TRUNCATION_MARK


def _render_one(section: Section, text: str) -> str:
    return f"## {section.title}\n{text}" if section.title else text


def render_sections(sections: Sequence[Section], budget_chars: int | None = None, *, sep: str = "\n\n") -> str:
    """Join sections, shrinking/dropping low-priority ones until the result fits ``budget_chars``."""
    texts: list[str | None] = [s.text for s in sections]

    def total() -> int:
        parts = [_render_one(s, t) for s, t in zip(sections, texts, strict=True) if t is not None]
        return sum(len(p) for p in parts) + len(sep) * max(0, len(parts) - 1)

    if budget_chars is not None:
        order = sorted(
            (i for i, s in enumerate(sections) if not s.keep), key=lambda i: (sections[i].priority, i)
        )
        for i in order:
            over = total() - budget_chars
            if over <= 0:
                break
            current = texts[i]
            assert current is not None
            target = len(current) - over
            if target >= sections[i].min_chars:
                texts[i] = truncate_text(current, target)
            else:
                texts[i] = None
    return sep.join(_render_one(s, t) for s, t in zip(sections, texts, strict=True) if t is not None)
