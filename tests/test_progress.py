"""Progress output: plain whole lines when stderr is not a terminal (logs, CI), never CR fragments."""

from __future__ import annotations

import io

import pytest

from steppo_envs import progress


def _run(monkeypatch: pytest.MonkeyPatch, interval: str, n: int) -> str:
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    monkeypatch.setenv("STEPPO_PROGRESS_INTERVAL", interval)
    bar = progress.progress_bar(total=n, desc="rollout demo", unit="ep")
    for _ in range(n):
        bar.update(1)
        bar.set_postfix(steps=7, refresh=False)
    bar.close()
    return stream.getvalue()


def test_piped_progress_is_silent_for_work_shorter_than_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(monkeypatch, "30", 200) == ""


def test_piped_progress_lines_are_whole_and_end_with_the_final_state(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _run(monkeypatch, "0", 200)
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[-1].startswith("rollout demo: 100%") and "200/200" in lines[-1] and "steps=7" in lines[-1]


def test_piped_progress_with_no_interval_prints_every_update_as_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _run(monkeypatch, "0", 5)
    assert "\r" not in out
    counts = [line.split("|")[2].split()[0] for line in out.splitlines()]
    assert counts[0] == "0/5" and counts[-1] == "5/5" and len(counts) >= 6


def test_disabled_progress_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    for _ in progress.progress_bar(range(3), desc="x", enabled=False):
        pass
    assert stream.getvalue() == ""
    assert progress.interactive(stream) is False


def test_nested_bar_cursor_moves_are_not_written_to_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    monkeypatch.setenv("STEPPO_PROGRESS_INTERVAL", "0")
    outer = progress.progress_bar(total=2, desc="outer")
    inner = progress.progress_bar(total=1, desc="inner")
    inner.update(1)
    inner.close()
    outer.update(2)
    outer.close()
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert any(line.startswith("inner: 100%") for line in stream.getvalue().splitlines())
