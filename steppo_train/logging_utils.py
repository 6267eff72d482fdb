"""Metrics: one JSONL line per iteration with grouped names (charts/, rollout/, losses/, eval/, time/),
optional TensorBoard, and a PNG learning-curve plot."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "iteration_line", "plot_interval_curves", "plot_metrics", "read_metrics"]

DEFAULT_PLOT_KEYS: tuple[str, ...] = (
    "charts/success_rate",
    "charts/return_mean",
    "eval/success_rate",
    "rollout/invalid_rate",
    "losses/policy",
    "losses/value",
    "critic/explained_variance_before",
    "critic/explained_variance_after",
    "update/approx_kl",
)


class MetricsLogger:
    """Append-and-flush JSONL metrics (``{"iteration": i, "charts/...": x, ...}``) and TensorBoard scalars."""

    def __init__(self, path: str | Path, *, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # pragma: no cover - optional extra
                raise ImportError("TensorBoard logging needs pip install 'steppo[tensorboard]'.") from exc
            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        row = {"iteration": iteration, **{k: float(v) for k, v in sorted(metrics.items())}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), iteration)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


_LINE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("charts/success_rate", "success", "{:.2f}"),
    ("charts/return_mean", "return", "{:+.2f}"),
    ("charts/steps_mean", "steps", "{:.1f}"),
    ("eval/success_rate", "eval", "{:.2f}"),
    ("losses/policy", "pi_loss", "{:+.4f}"),
    ("losses/value", "v_loss", "{:.4f}"),
    ("critic/explained_variance_before", "ev", "{:+.2f}"),
    ("update/approx_kl", "kl", "{:.1e}"),
    ("time/rollout_s", "rollout", "{:.0f}s"),
    ("time/update_s", "update", "{:.0f}s"),
    ("memory/rss_push_gib", "rss", "{:.1f}GiB"),
    ("memory/peak_rss_gib", "peak", "{:.1f}GiB"),
)


def iteration_line(iteration: int, total: int, metrics: dict[str, float]) -> str:
    """One readable line per iteration for the terminal and logs, e.g.
    ``iter 3/16  success 0.62  return +0.62  pi_loss -0.0012  rollout 21s  update 30s  rss 5.9GiB``."""
    parts = [f"iter {iteration + 1}/{total}"]
    parts += [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in _LINE_FIELDS if key in metrics]
    return "  ".join(parts)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Read a metrics JSONL file (a torn last line from a killed run is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_metrics(
    runs: Mapping[str, str | Path], out_png: str | Path, keys: Sequence[str] = DEFAULT_PLOT_KEYS, *, title: str = ""
) -> Path:
    """Plot ``keys`` against iteration for one or more runs (``{label: metrics.jsonl}``) into a PNG grid."""
    plt = _pyplot()
    data = {label: read_metrics(p) for label, p in runs.items()}
    present = [k for k in keys if any(k in row for rows in data.values() for row in rows)]
    if not present:
        raise ValueError(f"none of {list(keys)} appear in the metrics files: pass keys= that the runs logged.")
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present, strict=False):
        for label, rows in data.items():
            pts = [(r["iteration"], r[key]) for r in rows if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    if len(data) > 1:
        axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, out_png)


def plot_interval_curves(
    curves: Mapping[str, Sequence[tuple[float, float, float, float]]],
    out_png: str | Path,
    *,
    ylabel: str = "held-out success rate",
    xlabel: str = "iteration",
    title: str = "",
) -> Path:
    """One line per label through ``(x, value, ci_low, ci_high)`` points, with the interval shaded
    (e.g. greedy held-out success with its 95% bootstrap CI at each evaluation)."""
    plt = _pyplot()
    if not any(curves.values()):
        raise ValueError("no points to plot: pass at least one (x, value, low, high) point.")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for label, pts in curves.items():
        if not pts:
            continue
        xs, ys, lo, hi = zip(*sorted(pts), strict=True)
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=label)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, out_png)


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, out_png: str | Path) -> Path:
    """Lay out, write ``fig`` to ``out_png`` (creating its folder) and release it."""
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
