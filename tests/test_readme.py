"""The README's Python example runs as written."""

from __future__ import annotations

from pathlib import Path


def test_readme_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("```python", 1)[1].split("```", 1)[0]
    assert len([line for line in block.strip().splitlines() if line.strip()]) <= 10
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "em" in out and "f1" in out
