"""Benchmark BM25 search over the pooled multi-hop QA corpus: bm25s vs rank-bm25, in one run.

Prints, for each backend, the index build time (no cache) and the p50 / p90 latency of one top-5
query (the queries are the questions of every multi-hop QA file), then the rank-bm25 / bm25s
ratios, how often both backends agree on the top hit, and the in-process cost of building a second
``MultiHopQAEnv``.

    python benchmarks/bench_search.py [--data-dir DIR] [--limit N] [--k 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from tqdm import tqdm

from steppo_envs.multihop.data import DATASETS, load_named, pooled_corpus
from steppo_envs.paths import resolve_data_dir
from steppo_envs.search import Backend, BM25Index, Passage


def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def _time_queries(index: BM25Index, queries: list[str], k: int, label: str) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    tops: list[str] = []
    for q in tqdm(queries, desc=f"queries {label}", leave=False):
        t0 = time.perf_counter()
        hits = index.search(q, k=k)
        latencies.append(time.perf_counter() - t0)
        tops.append(hits[0].id if hits else "")
    return latencies, tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding multihop_qa/ (default: $STEPPO_DATA_DIR or ../shared/data)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N questions (0 = all)")
    parser.add_argument("--k", type=int, default=5, help="passages per query")
    args = parser.parse_args()

    root = str(resolve_data_dir(args.data_dir, subdir="multihop_qa").parent)
    t0 = time.perf_counter()
    corpus = pooled_corpus(root)
    load_s = time.perf_counter() - t0
    passages = [Passage(id=f"p{i}", title=p.title, text=p.text) for i, p in enumerate(corpus)]
    queries = list(dict.fromkeys(ex.question for name in DATASETS for ex in load_named(root, name)))
    if args.limit:
        queries = queries[: args.limit]
    print(f"corpus: {len(passages)} unique paragraphs (files parsed and pooled in {load_s:.2f} s); {len(queries)} queries, top-{args.k}")

    results: dict[Backend, tuple[float, float, list[float], list[str]]] = {}
    for backend in ("bm25s", "rank_bm25"):
        t0 = time.perf_counter()
        index = BM25Index(passages, backend=backend, cache=False)
        build_s = time.perf_counter() - t0
        # save and reload through a private cache folder to measure the cached start-up
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("STEPPO_CACHE_DIR")
            os.environ["STEPPO_CACHE_DIR"] = tmp
            try:
                BM25Index(passages, backend=backend)
                t0 = time.perf_counter()
                cached = BM25Index(passages, backend=backend)
                cached_s = time.perf_counter() - t0
                assert cached.from_cache
            finally:
                if old is None:
                    os.environ.pop("STEPPO_CACHE_DIR", None)
                else:
                    os.environ["STEPPO_CACHE_DIR"] = old
        index.search(queries[0], k=args.k)  # warm-up
        latencies, tops = _time_queries(index, queries, args.k, backend)
        results[backend] = (build_s, cached_s, latencies, tops)
        p50, p90 = _percentile_ms(latencies, 50), _percentile_ms(latencies, 90)
        print(
            f"{backend:>9}: build {build_s:6.2f} s | load from cache {cached_s:6.3f} s | "
            f"query p50 {p50:7.2f} ms  p90 {p90:7.2f} ms  mean {statistics.fmean(latencies) * 1000:7.2f} ms"
        )

    fast, slow = results["bm25s"], results["rank_bm25"]
    print(
        f"ratio rank_bm25 / bm25s: build {slow[0] / fast[0]:.2f}x | "
        f"query p50 {_percentile_ms(slow[2], 50) / _percentile_ms(fast[2], 50):.1f}x  "
        f"p90 {_percentile_ms(slow[2], 90) / _percentile_ms(fast[2], 90):.1f}x"
    )
    agree = sum(a == b for a, b in zip(fast[3], slow[3], strict=True)) / len(queries)
    print(f"top-1 agreement between backends: {agree:.3f}")

    from steppo_envs.multihop import MultiHopQAEnv

    t0 = time.perf_counter()
    MultiHopQAEnv(data_dir=root)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    MultiHopQAEnv(data_dir=root, max_steps=3)
    second_s = time.perf_counter() - t0
    print(f"MultiHopQAEnv construction in this process: first {first_s:.3f} s (index from disk cache or built), second {second_s * 1000:.2f} ms")


if __name__ == "__main__":
    main()
