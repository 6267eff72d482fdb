"""Metrics files and plots: torn lines are skipped, plots are real PNGs, empty input is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from steppo_train.logging_utils import MetricsLogger, plot_interval_curves, plot_metrics, read_metrics


def test_metrics_round_trip_and_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(path)
    logger.log(0, {"eval/success_rate": 0.5})
    logger.log(1, {"eval/success_rate": 0.75})
    with open(path, "a") as f:
        f.write('{"iteration": 2, "eval/succ')  # a killed run
    rows = read_metrics(path)
    assert [r["iteration"] for r in rows] == [0, 1] and rows[1]["eval/success_rate"] == 0.75
    png = plot_metrics({"a": path}, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interval_curves_png_and_empty_error(tmp_path: Path) -> None:
    png = plot_interval_curves({"steppo": [(8, 0.7, 0.6, 0.8), (0, 0.6, 0.5, 0.7)], "grpo": []}, tmp_path / "ci.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="no points"):
        plot_interval_curves({"steppo": []}, tmp_path / "none.png")


def test_iteration_line_is_one_readable_line_of_the_known_metrics() -> None:
    from steppo_train.logging_utils import iteration_line

    metrics = {"charts/success_rate": 0.625, "charts/return_mean": 0.5, "losses/policy": -0.00123,
               "time/rollout_s": 21.4, "time/update_s": 30.6, "memory/rss_push_gib": 5.94, "other/x": 3.0}
    assert iteration_line(2, 16, metrics) == (
        "iter 3/16  success 0.62  return +0.50  pi_loss -0.0012  rollout 21s  update 31s  rss 5.9GiB")
    assert iteration_line(0, 1, {}) == "iter 1/1"
