"""Benchmarks of ``steppo/PaperSearch-v0`` (prints figures; asserts nothing).

(a) Scripted baseline over a split (default: the whole test split): ``Search[<question>]`` once,
    select the top 5 results, ``Finish[]``; prints Recall@all / F1@all (overall and per source).
(b) Search on the 154k-paper corpus: corpus parse and cached-load time, BM25 index build and load
    time, peak memory, and p50/p90 query latency of bm25s (every question of the split) vs rank-bm25
    (a sample: it scans every document per query term), with the ratio.

Usage::

    python benchmarks/bench_paper_search.py              # everything (~3 min on 2 cores, ~4 GB peak)
    python benchmarks/bench_paper_search.py --quick      # baseline + cached load + bm25s latency only
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from steppo_envs.paper_search.data import (
    CORPUS_FILE,
    PaperSearchResources,
    _parse_corpus,
    load_corpus,
    load_tasks,
)
from steppo_envs.paper_search.env import PaperSearchEnv
from steppo_envs.paths import resolve_data_dir


def rss_mb() -> float:
    """Peak resident set size of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Current resident set size (MB), from /proc on Linux (0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def baseline(split: str, top: int) -> None:
    env = PaperSearchEnv(split=split)
    per_source: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    t0 = time.perf_counter()
    for i, task in enumerate(env.tasks):
        env.reset(options={"task_index": i})
        _, _, _, _, info = env.step(f"Search[{task.question}]")
        ids = info["extra"]["surfaced_this_step"][:top]
        if ids:
            env.step(f"Select[{', '.join(ids)}]")
        _, _, _, _, info = env.step("Finish[]")
        m = info["metrics"]
        per_source[task.source].append((m["recall_all"], m["f1_all"], m["surfaced_recall"]))
    seconds = time.perf_counter() - t0
    rows = [r for v in per_source.values() for r in v]
    print(
        f"\n(a) baseline 'search the question once, select the top {top}' on split {split!r}: {len(rows)} questions, {seconds:.1f} s"
    )
    for name, vals in [("all", rows), *sorted(per_source.items())]:
        rec, f1, sur = (statistics.fmean(x[j] for x in vals) for j in range(3))
        print(
            f"    {name:<18} n={len(vals):<4} Recall@all {rec:.3f}  F1@all {f1:.3f}  (gold in top-10: {sur:.3f})"
        )


def latencies(res: PaperSearchResources, queries: list[tuple[str, int]], repeat: int = 1) -> np.ndarray:
    out = []
    for _ in range(repeat):
        for q, year in queries:
            t = time.perf_counter()
            res.search(q, 10, year)
            out.append(time.perf_counter() - t)
    return np.asarray(out) * 1000


def search_bench(split: str, quick: bool, rank_queries: int) -> None:
    print("\n(b) search over the mlanthology corpus")
    tasks = load_tasks(split=split)
    queries = [(t.question, t.year + 1) for t in tasks]
    path = resolve_data_dir(None, subdir="paper_search") / CORPUS_FILE
    if not quick:
        t = time.perf_counter()
        parsed = _parse_corpus(path, show_progress=True)
        print(
            f"    corpus parse from gzip JSON ({len(parsed)} papers, + document frequencies): {time.perf_counter() - t:.1f} s"
        )
        del parsed
        gc.collect()
    before = current_rss_mb()
    corpus = load_corpus()
    res = PaperSearchResources(corpus, show_progress=True)
    print(f"    corpus load (pickle cache: {corpus.from_cache}): {corpus.load_seconds:.2f} s")
    origin = "loaded from cache" if res.index.from_cache else "built"
    print(
        f"    bm25s index {origin}: {res.index_seconds:.2f} s (load {res.index.load_seconds:.2f} s, build {res.index.build_seconds:.1f} s)"
    )
    print(
        f"    memory held by corpus + index: {current_rss_mb() - before:.0f} MB RSS; process peak RSS so far {rss_mb():.0f} MB"
    )

    latencies(res, queries[:20])  # warm-up
    fast = latencies(res, queries, repeat=3)
    p50, p90 = np.percentile(fast, [50, 90])
    print(
        f"    bm25s query (question text, top 10, date mask): p50 {p50:.2f} ms  p90 {p90:.2f} ms over {len(fast)} queries"
        f"  [target p50 <= 2 ms: {'met' if p50 <= 2 else 'NOT met'}]"
    )
    terms = [res.related_terms(i, 12) for i in range(0, len(corpus), len(corpus) // 200)][:200]
    rel = np.asarray([_timed(lambda t=t: res.search(t, 10, 2025)) for t in terms]) * 1000
    print(
        f"    bm25s related query (12 tf-idf terms): p50 {np.percentile(rel, 50):.2f} ms  p90 {np.percentile(rel, 90):.2f} ms"
    )
    if quick:
        return

    t = time.perf_counter()
    fresh = PaperSearchResources(corpus, cache=False, show_progress=True)
    print(
        f"    bm25s index build from scratch (tokenize + index, no cache): {time.perf_counter() - t:.1f} s; peak RSS {rss_mb():.0f} MB"
    )
    del fresh
    gc.collect()
    t = time.perf_counter()
    slow_res = PaperSearchResources(corpus, backend="rank_bm25", cache=False, show_progress=True)
    print(f"    rank-bm25 index build: {time.perf_counter() - t:.1f} s; peak RSS {rss_mb():.0f} MB")
    sample = queries[:: max(1, len(queries) // rank_queries)][:rank_queries]
    slow = latencies(slow_res, sample)
    same = latencies(res, sample)
    s50, s90 = np.percentile(slow, [50, 90])
    f50 = float(np.percentile(same, 50))
    print(
        f"    rank-bm25 query: p50 {s50:.1f} ms  p90 {s90:.1f} ms over {len(slow)} queries (a sample: each query term scans all 154k docs)"
    )
    print(f"    bm25s on the same sample: p50 {f50:.2f} ms -> rank-bm25 / bm25s p50 ratio {s50 / f50:.0f}x")
    overlap = statistics.fmean(
        len({h.id for h in slow_res.search(q, 10, y)} & {h.id for h in res.search(q, 10, y)}) / 10
        for q, y in sample
    )
    print(
        f"    top-10 overlap rank-bm25 vs bm25s (same tokenizer, k1, b; different idf variants): {overlap:.2f}"
    )


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--split", default="test", help="split for the baseline and the query set (default: test)"
    )
    ap.add_argument("--top", type=int, default=5, help="papers the baseline selects (default: 5)")
    ap.add_argument("--quick", action="store_true", help="skip the from-scratch parse/builds and rank-bm25")
    ap.add_argument("--rank-queries", type=int, default=20, help="rank-bm25 sample size (default: 20)")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    print(f"data: {Path(resolve_data_dir(None, subdir='paper_search'))}")
    search_bench(args.split, args.quick, args.rank_queries)
    if not args.skip_baseline:
        baseline(args.split, args.top)


if __name__ == "__main__":
    main()
