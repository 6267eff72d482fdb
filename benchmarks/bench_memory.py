"""RSS after every training phase over a StepPO run of the results recipe (docs/results.md).

Runs the recipe of ``experiments/textworld_cpu.py`` (expert records -> SFT warm start -> StepPO on
TextWorld coin_collector, in-process vLLM rollout engine, greedy held-out evaluation every 4
iterations) and reads back the trainer's per-phase memory figures (``memory/rss_<phase>_gib``,
measured in the one process that holds the trainer *and* the rollout engine). Prints a table (one
row per iteration, one column per phase), the peak, and the growth from iteration 2 to the last;
draws ``memory.png``. ``--variants trim,no-trim`` runs the recipe with and without handing freed heap
back to the OS after each phase (``trim_memory``) and prints them side by side.

    python benchmarks/bench_memory.py                              # 16 iterations, trim_memory on
    python benchmarks/bench_memory.py --variants trim,no-trim      # both, side by side (twice the time)
    python benchmarks/bench_memory.py --iterations 4 --out /tmp/mem

Each variant's run folder is kept under ``--out``; a finished variant is not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "old_logprobs", "values", "update", "push", "eval")


def _experiment_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("textworld_cpu", ROOT / "experiments" / "textworld_cpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _run_variant(exp_mod, exp, out: Path, warm: str, variant: str, sets: dict) -> list[dict]:  # type: ignore[no-untyped-def]
    tag = "".join(f"-{k}{v}" for k, v in sorted(sets.items()))
    run = out / f"{variant}-{exp.rl_iterations}it{tag}"
    metrics = run / "metrics.jsonl"
    done = metrics.exists() and len(metrics.read_text().splitlines()) >= exp.rl_iterations
    if not done:
        cmd = exp_mod.rl_command(exp, warm, "steppo", run, {"trim_memory": variant == "trim", **sets})
        print(f"[{variant}] {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True)
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def _table(variant: str, rows: list[dict]) -> list[str]:
    phases = [p for p in PHASES if any(f"memory/rss_{p}_gib" in r for r in rows)]
    lines = [f"[{variant}] RSS GiB after each phase", "iter " + "".join(f"{p:>14}" for p in phases) + f"{'heap free':>11}{'peak':>8}"]
    for r in rows:
        cells = "".join(f"{r[f'memory/rss_{p}_gib']:>14.2f}" if f"memory/rss_{p}_gib" in r else f"{'-':>14}" for p in phases)
        free = r.get("memory/heap_free_push_gib", float("nan"))
        lines.append(f"{r['iteration'] + 1:>4} {cells}{free:>11.2f}{r['memory/peak_rss_gib']:>8.2f}")
    return lines


def _summary(variant: str, rows: list[dict]) -> str:
    end = [r["memory/rss_push_gib"] for r in rows]
    peak = max(r["memory/peak_rss_gib"] for r in rows)
    second = end[1] if len(end) > 1 else end[0]
    return (f"[{variant}] peak RSS {peak:.2f} GiB; RSS after iteration 2 {second:.2f} GiB, after iteration {len(end)} "
            f"{end[-1]:.2f} GiB: growth {100 * (end[-1] / second - 1):+.1f}%")


def _plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (variant, rows), style in zip(results.items(), ("-", "--"), strict=False):
        xs, ys = [], []
        for r in rows:
            for k, p in enumerate(PHASES):
                if f"memory/rss_{p}_gib" in r:
                    xs.append(r["iteration"] + 1 + k / len(PHASES))
                    ys.append(r[f"memory/rss_{p}_gib"])
        ax.plot(xs, ys, style, marker=".", label=f"RSS after each phase ({variant})")
        ax.plot([r["iteration"] + 1 for r in rows], [r["memory/peak_rss_gib"] for r in rows], style, alpha=0.5,
                label=f"peak RSS ({variant})")
    ax.axhline(8.0, color="grey", lw=0.8, ls=":", label="8 GiB target")
    ax.set_xlabel("iteration (points inside an iteration: rollout, old logprobs, values, update, push, eval)")
    ax.set_ylabel("GiB")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_memory"))
    ap.add_argument("--iterations", type=int, default=16)
    ap.add_argument("--variants", default="trim", help="comma-separated: trim, no-trim")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more trainer options (JSON values), e.g. kv_cache_gib=1")
    args = ap.parse_args()
    sets = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    exp_mod = _experiment_module()
    exp = dataclasses.replace(exp_mod.Experiment(), rl_iterations=args.iterations)
    args.out.mkdir(parents=True, exist_ok=True)
    from steppo_train.precision import describe_cpu

    cpu = describe_cpu()
    print(f"cpu: {cpu}", flush=True)
    warm = exp_mod.stage_sft(exp, args.out, exp_mod.stage_expert(exp, args.out))
    results = {v: _run_variant(exp_mod, exp, args.out, warm, v, sets) for v in args.variants.split(",")}
    report = [f"cpu: {cpu}"]
    for variant, rows in results.items():
        report += [*_table(variant, rows), _summary(variant, rows), ""]
    if "trim" in results and "no-trim" in results:
        a, b = (max(r["memory/peak_rss_gib"] for r in results[v]) for v in ("no-trim", "trim"))
        report.append(f"peak RSS no-trim / trim = {a / b:.2f}x")
    print("\n".join(report))
    (args.out / "memory.txt").write_text("\n".join(report) + "\n")
    _plot(results, args.out / "memory.png", f"StepPO, results recipe, {args.iterations} iterations; {cpu[:80]}")
    print(f"wrote {args.out / 'memory.txt'} and {args.out / 'memory.png'}")


if __name__ == "__main__":
    main()
