"""Budgeted state rendering (steppo_envs.render)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from steppo_envs.render import TRUNCATION_MARK, Section, render_sections, truncate_text


def test_truncate_text() -> None:
    assert truncate_text("short", 10) == "short"
    cut = truncate_text("a" * 100, 20)
    assert len(cut) <= 20 and cut.endswith(TRUNCATION_MARK)
    assert truncate_text("abcdef", 1) == "a"


def test_no_budget_joins_everything() -> None:
    out = render_sections([Section("q", title="Question"), Section("body")])
    assert out == "## Question\nq\n\nbody"


def test_budget_respected_and_keep_never_cut() -> None:
    task = Section("Q" * 300, title="Question", keep=True)
    sections = [task, Section("h" * 500, title="Old"), Section("r" * 500, title="New", priority=1)]
    out = render_sections(sections, 600)
    assert len(out) <= 600
    assert "## Question\n" + "Q" * 300 in out


def test_keep_sections_survive_even_over_budget() -> None:
    task = Section("Q" * 300, keep=True)
    out = render_sections([task, Section("x" * 100)], 100)
    assert out == "Q" * 300


def test_lowest_priority_shrinks_first() -> None:
    low, high = Section("l" * 200, priority=0), Section("h" * 200, priority=5)
    out = render_sections([high, low], 300)
    assert "h" * 200 in out  # the high-priority section is untouched
    assert len(out) == 300 and out.count("l") < 200


def test_oldest_of_equal_priority_shrinks_first() -> None:
    old, new = Section("o" * 200, title="old"), Section("n" * 200, title="new")
    out = render_sections([old, new], 350)
    assert "n" * 200 in out and out.count("o") < 200
    assert len(out) <= 350


def test_section_dropped_below_min_chars() -> None:
    a, b = Section("a" * 100, title="A", min_chars=80), Section("b" * 100, title="B", priority=1)
    out = render_sections([a, b], 150)
    assert "## A" not in out and out == "## B\n" + "b" * 100


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(max_size=300), st.integers(0, 3), st.booleans(), st.one_of(st.none(), st.text(max_size=10))),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 1500),
)
def test_budget_property(specs: list[tuple[str, int, bool, str | None]], slack: int) -> None:
    sections = [Section(text, title=title, priority=prio, keep=keep) for text, prio, keep, title in specs]
    keep_only = render_sections([s for s in sections if s.keep])
    budget = len(keep_only) + slack
    out = render_sections(sections, budget)
    assert len(out) <= budget
    for s in sections:
        if s.keep:
            assert (f"## {s.title}\n{s.text}" if s.title else s.text) in out
