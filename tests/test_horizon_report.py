"""Issue 14's report: paired bootstrap on hand-built outcomes; the committed page regenerates identically."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "horizon"


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("horizon_report", ROOT / "experiments" / "horizon_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(games: dict[str, float]) -> dict:
    return {"eval": {"4": {g: 0.0 for g in games}, "8": games}}


def test_paired_difference_pairs_by_game_and_pools_seeds() -> None:
    report = _report()
    a = {0: _run({"1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0}), 1: _run({"1": 1.0, "2": 0.0, "3": 0.0, "4": 1.0})}
    b = {0: _run({"1": 0.0, "2": 1.0, "3": 0.0, "4": 1.0}), 1: _run({"1": 0.0, "2": 0.0, "3": 1.0, "4": 1.0}),
         2: _run({"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0})}  # seed 2 has no partner in a: left out
    mean, low, high, seeds = report.paired_difference(a, b)
    # per game, mean over seeds 0 and 1: d = [1, 0, -0.5, 0] -> mean 0.125
    assert seeds == 2
    assert mean == pytest.approx(0.125)
    assert -0.5 <= low <= mean <= high <= 1.0
    assert report.paired_difference(a, b) == (mean, low, high, seeds)  # deterministic
    same = report.paired_difference(a, a)
    assert same == (0.0, 0.0, 0.0, 2)


def test_committed_results_regenerate_the_page_byte_identically() -> None:
    report = _report()
    section, _ = report.render(RESULTS)
    page = (ROOT / "docs" / "results.md").read_text()
    assert section.rstrip("\n") in page, "docs/results.md is stale: run python experiments/horizon_report.py"
    experiment = json.loads((RESULTS / "experiment.json").read_text())
    assert experiment["env"]["level"] >= 10 and len(experiment["seeds"]) >= 3
