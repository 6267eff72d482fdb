"""Every default the env docs name equals the config class's (issue 16: docs/textworld.md said
``max_steps`` defaults to 30 while the code said 20).

Two kinds of statements are checked on each page:

* config tables: a Markdown table with a ``default`` column under the nearest heading that names a
  config class in backticks (``### Configuration (`MultiHopQAConfig`)``). Its rows must cover every
  field of the class exactly once, and each default cell must be a Python literal (backticks
  optional) equal to the field's default, of the same type (a list stands for a tuple);
* prose: `` `field` (5) ``, `` `field` (default 0.0) ``, `` `field` (6,000 characters by default) ``
  for a field of a config of the page (or of the page section's config): the first number must equal
  the default.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from steppo_agent.policies import PolicyConfig
from steppo_agent.records import SamplingConfig
from steppo_envs import ToolEnvConfig
from steppo_envs.alfworld_env.env import ALFWorldConfig
from steppo_envs.multihop import MultiHopQAConfig
from steppo_envs.paper_search.env import PaperSearchConfig
from steppo_envs.textworld_env.env import TextWorldConfig
from steppo_train.config import TrainConfig
from steppo_train.lora import LoraConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"

PAGES: dict[str, tuple[Any, ...]] = {
    "environments.md": (ToolEnvConfig, MultiHopQAConfig),
    "textworld.md": (TextWorldConfig, ALFWorldConfig),
    "paper_search.md": (PaperSearchConfig,),
    "training.md": (TrainConfig, TrainConfig().rollout, SamplingConfig, PolicyConfig, LoraConfig),
}
"""Each page and the config classes whose options it documents (each must have a table there). An
instance stands for a nested config with the defaults its owner gives it (``TrainConfig().rollout``:
an ``EpisodesConfig`` with the trainer's task and group defaults)."""

SECTIONS: dict[tuple[str, str], tuple[Any, ...]] = {
    ("environments.md", "Your own environment in 30 lines"): (ToolEnvConfig,),
    ("environments.md", "The MultiHopQA task"): (MultiHopQAConfig,),
    ("textworld.md", "ALFWorld data"): (ALFWorldConfig,),
}
"""Prose in these ``##`` sections names the defaults of these configs only (elsewhere: any config of the page)."""

_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*)$")
_CONFIG_RE = re.compile(r"`(\w+Config)`")
_CELL_SPLIT_RE = re.compile(r"(?<!\\)\|")
_RULE_RE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")
_MENTION_RE = re.compile(r"`-?([a-z_][a-z0-9_]*)`\s+\(([^)]*)\)")
_NUMBER_RE = re.compile(r"^(?:default:?\s+)?(-?\d[\d,]*(?:\.\d+)?)(?![\w.])")


@dataclass(frozen=True)
class Line:
    """A line of prose or table outside code blocks, with the headings it sits under."""

    number: int
    text: str
    section: str  # the current ``##`` heading
    config: str | None  # the class named in backticks by the nearest heading, if any


def _lines(text: str) -> list[Line]:
    out, fenced, section, config = [], False, "", None
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else _HEADING_RE.match(raw)
        if heading:
            if len(heading.group(1)) <= 2:
                section = heading.group(2).strip()
            named = _CONFIG_RE.search(heading.group(2))
            config = named.group(1) if named else None
        elif not fenced:
            out.append(Line(number, raw, section, config))
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in _CELL_SPLIT_RE.split(line.strip().strip("|"))]


def config_tables(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """``{config class name: [(line number, field cell, default cell), ...]}`` of the page's config tables."""
    lines = _lines(text)
    tables: dict[str, list[tuple[int, str, str]]] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        is_table = line.text.lstrip().startswith("|") and i + 1 < len(lines) and _RULE_RE.match(lines[i + 1].text.strip())
        if not is_table:
            i += 1
            continue
        header = [c.strip("`* ").lower() for c in _cells(line.text)]
        i += 2
        rows = []
        while i < len(lines) and lines[i].text.lstrip().startswith("|"):
            rows.append(lines[i])
            i += 1
        if "default" in header and line.config is not None:
            column = header.index("default")
            tables.setdefault(line.config, []).extend(
                (r.number, _cells(r.text)[0], _cells(r.text)[column] if len(_cells(r.text)) > column else "") for r in rows
            )
    return tables


def _literal(cell: str) -> Any:
    text = cell.strip()
    if len(text) >= 2 and text[0] == text[-1] == "`":
        text = text[1:-1]
    value = ast.literal_eval(text)
    return tuple(value) if isinstance(value, list) else value


def _name(config: Any) -> str:
    """The class name of a config class or instance (the name its table's heading gives)."""
    return config.__name__ if isinstance(config, type) else type(config).__name__


def defaults(cls: Any) -> dict[str, Any]:
    """``{field: default}`` of a dataclass or a pydantic model (of a model instance: its values); a nested
    config field (a model) is left out: its own table documents its fields."""
    if isinstance(cls, BaseModel):
        out = {name: getattr(cls, name) for name in type(cls).model_fields}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items() if not isinstance(v, BaseModel)}
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        out = {name: f.get_default(call_default_factory=True) for name, f in cls.model_fields.items()}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items() if not isinstance(v, BaseModel)}
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _same(documented: Any, actual: Any) -> bool:
    return type(documented) is type(actual) and documented == actual


def table_problems(page: str, text: str, configs: tuple[Any, ...]) -> list[str]:
    """What the page's config tables get wrong about ``configs`` (empty when they are right)."""
    problems = []
    tables = config_tables(text)
    for cls in configs:
        documented_defaults = defaults(cls)
        cls_name = _name(cls)
        rows = tables.get(cls_name)
        if rows is None:
            problems.append(f"{page}: no table of {cls_name} (a 'default' column under a heading naming `{cls_name}`)")
            continue
        seen: set[str] = set()
        for number, field_cell, default_cell in rows:
            name = field_cell.strip("` ")
            where = f"{page}:{number} {cls_name}.{name}"
            if name not in documented_defaults:
                problems.append(f"{where}: not a field of {cls_name}")
                continue
            if name in seen:
                problems.append(f"{where}: documented twice")
            seen.add(name)
            try:
                documented = _literal(default_cell)
            except (ValueError, SyntaxError):
                problems.append(f"{where}: the default cell {default_cell!r} is not a Python literal")
                continue
            if not _same(documented, documented_defaults[name]):
                problems.append(f"{where}: the docs say {default_cell}, the config says {documented_defaults[name]!r}")
        problems.extend(f"{page}: {cls_name}.{name} is missing from its table"
                        for name in documented_defaults if name not in seen)
    return problems


def _paragraphs(text: str) -> list[Line]:
    """The page's prose and table lines outside code, a paragraph (lines up to a blank one) joined into one."""
    out: list[Line] = []
    for line in _lines(text):
        tables = out and (out[-1].text.lstrip().startswith("|") or line.text.lstrip().startswith("|"))
        joinable = out and out[-1].text.strip() and line.text.strip() and not tables
        if joinable and out[-1].number + out[-1].text.count("\n") + 1 == line.number and out[-1].section == line.section:
            out[-1] = Line(out[-1].number, out[-1].text + "\n" + line.text, line.section, line.config)
        else:
            out.append(line)
    return out


def prose_problems(page: str, text: str, configs: tuple[Any, ...]) -> list[str]:
    """What ``` `field` (N) ``` mentions in the page's prose get wrong about the defaults of ``configs``."""
    problems = []
    for line in _paragraphs(text):
        scope = next((v for (p, s), v in SECTIONS.items() if p == page and line.section.startswith(s)), configs)
        for match in _MENTION_RE.finditer(line.text):
            number = _NUMBER_RE.match(match.group(2).strip())
            if number is None:
                continue
            value = float(number.group(1).replace(",", ""))
            for cls in scope:
                default = defaults(cls).get(match.group(1))
                if isinstance(default, int | float) and not isinstance(default, bool) and float(default) != value:
                    problems.append(
                        f"{page}:{line.number}: {match.group(0)!r} but {_name(cls)}.{match.group(1)} defaults to {default!r}"
                    )
    return problems


@pytest.mark.parametrize("page", list(PAGES))
def test_every_documented_default_equals_the_config(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    problems = table_problems(page, text, PAGES[page]) + prose_problems(page, text, PAGES[page])
    assert not problems, "\n".join(problems)


def test_every_config_table_of_the_pages_is_checked() -> None:
    """A table of another config on these pages would go unchecked: add its class to PAGES."""
    for page, configs in PAGES.items():
        tables = config_tables((DOCS / page).read_text(encoding="utf-8"))
        assert set(tables) == {_name(cls) for cls in configs}, page


# -- the checker catches what it should (synthetic pages) -------------------------------------------


@dataclass(frozen=True)
class _DemoConfig:
    """A config for the checker's own tests."""

    max_steps: int = 20
    budget_chars: int = 6000
    penalty: float = 0.0
    name: str = "full"
    files: tuple[str, ...] = ()
    cache: str | None = None


_GOOD = """# Demo

Steps are limited by `max_steps` (default 20); observations by `budget_chars`
(6,000 characters).

```python
env = make(max_steps=3)   # code is not prose: `max_steps` (3) here is not checked
```

## Configuration (`_DemoConfig`)

| field | default | meaning |
|---|---|---|
| `max_steps` | 20 | steps \\| per episode |
| `budget_chars` | `6000` | budget |
| `penalty` | 0.0 | cost |
| `name` | `"full"` | style |
| `files` | `[]` | games |
| `cache` | `None` | folder |
"""


def test_checker_accepts_a_right_page() -> None:
    assert table_problems("demo.md", _GOOD, (_DemoConfig,)) == []
    assert prose_problems("demo.md", _GOOD, (_DemoConfig,)) == []


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("| `max_steps` | 20 |", "| `max_steps` | 30 |", "the docs say 30, the config says 20"),
        ("| `penalty` | 0.0 |", "| `penalty` | 0 |", "the docs say 0, the config says 0.0"),  # int for a float
        ("| `name` | `\"full\"` |", "| `name` | `\"compact\"` |", "the config says 'full'"),
        ("| `cache` | `None` | folder |\n", "", "_DemoConfig.cache is missing from its table"),
        ("| `cache` | `None` |", "| `cache` | `None` |\n| `cache_dir` | `None` |", "not a field of _DemoConfig"),
        ("| `files` | `[]` |", "| `files` | an empty list |", "is not a Python literal"),
        ("## Configuration (`_DemoConfig`)", "## Configuration", "no table of _DemoConfig"),
        ("`max_steps` (default 20)", "`max_steps` (default 30)", "'`max_steps` (default 30)' but _DemoConfig.max_steps defaults to 20"),
        ("(6,000 characters)", "(8,000 characters)", "_DemoConfig.budget_chars defaults to 6000"),
    ],
)
def test_checker_reports_a_wrong_page(old: str, new: str, fragment: str) -> None:
    assert old in _GOOD
    bad = _GOOD.replace(old, new)
    problems = table_problems("demo.md", bad, (_DemoConfig,)) + prose_problems("demo.md", bad, (_DemoConfig,))
    assert any(fragment in p for p in problems), problems
