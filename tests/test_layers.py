"""Layers point down only: steppo_envs <- steppo_agent <- steppo_train <- steppo (the command line).

Reads every module's imports with ``ast`` (module-level and inside functions, ``import x`` and
``from x import y``, relative imports resolved, and ``importlib.import_module("literal")``) and fails
on an arrow from a package to a higher-ranked one, naming file, line and arrow. That ``import
steppo_envs`` pulls no torch / vllm / textworld is ``tests/test_import_light.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANKS: dict[str, int] = {"steppo_envs": 0, "steppo_agent": 1, "steppo_train": 2, "steppo": 3}


@dataclass(frozen=True)
class Arrow:
    """One import from ``source`` (a module of package ``source_pkg``) of ``target`` (a module name)."""

    path: Path
    line: int
    source_pkg: str
    target: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source_pkg} -> {self.target}"


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a ``from {'.' * level}{name} import ...`` in ``module`` refers to."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _imports(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in the file, at any depth."""
    module = _module_name(root, path)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            target = (node.module or "") if node.level == 0 else _resolve(module, is_package, node.level, node.module)
            yield node.lineno, target
            if node.module is None or node.level > 0:  # `from . import cli`: the names may be modules
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}" if target else alias.name
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def _is_import_call(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def _package(module: str, ranks: Mapping[str, int]) -> str | None:
    top = module.split(".")[0]
    return top if top in ranks else None


def up_arrows(root: Path, ranks: Mapping[str, int]) -> list[Arrow]:
    """Every import, in the packages named by ``ranks`` under ``root``, of a higher-ranked package."""
    found = []
    for pkg, rank in ranks.items():
        for path in sorted((root / pkg).rglob("*.py")):
            for line, target in _imports(root, path):
                target_pkg = _package(target, ranks)
                if target_pkg is not None and ranks[target_pkg] > rank:
                    found.append(Arrow(path.relative_to(root), line, pkg, target))
    return found


def test_no_arrow_points_up() -> None:
    arrows = up_arrows(ROOT, RANKS)
    assert not arrows, "imports of a higher layer (move the code down, or the import up):\n" + "\n".join(
        map(str, arrows))


def test_every_package_is_scanned() -> None:
    """The scan sees the real tree: each package has modules, and the top layer imports every other."""
    seen: dict[str, set[str]] = {}
    for pkg in RANKS:
        paths = sorted((ROOT / pkg).rglob("*.py"))
        assert len(paths) >= 2, pkg
        seen[pkg] = {p for path in paths for _, t in _imports(ROOT, path) if (p := _package(t, RANKS))}
    assert seen["steppo"] >= {"steppo_envs", "steppo_agent", "steppo_train"}
    assert "steppo_envs" in seen["steppo_agent"]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_every_kind_of_up_arrow(tmp_path: Path) -> None:
    ranks = {"low": 0, "mid": 1, "high": 2}
    root = _tree(tmp_path, {
        "low/__init__.py": "import os\nimport mid.x\n",
        "low/a.py": "def f():\n    from high.cli import main\n    return main\n",
        "low/b.py": "import importlib\n\n\ndef g():\n    return importlib.import_module('mid.y')\n",
        "mid/__init__.py": "from low import a\nfrom . import x\n",
        "mid/x.py": "from .. import high\n",
        "mid/sub/__init__.py": "from ..x import thing\nfrom ... import low\n",
        "high/__init__.py": "import low, mid\n",
        "high/cli.py": "from mid.x import thing\n",
    })
    found = sorted(str(a) for a in up_arrows(root, ranks))
    assert found == sorted([
        "low/__init__.py:2: low -> mid.x",
        "low/a.py:2: low -> high.cli",
        "low/b.py:5: low -> mid.y",
        "mid/x.py:1: mid -> high",  # `from .. import high` in mid/x.py: the top level, module `high`
    ])


def test_relative_imports_resolve() -> None:
    assert _resolve("pkg.sub.mod", False, 1, "x") == "pkg.sub.x"
    assert _resolve("pkg.sub", True, 1, "x") == "pkg.sub.x"
    assert _resolve("pkg.sub.mod", False, 2, None) == "pkg"
    assert _resolve("pkg.sub", True, 2, "y") == "pkg.y"
