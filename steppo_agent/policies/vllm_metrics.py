"""vLLM's prefix-cache counters, read from an in-process engine or a server's Prometheus ``/metrics``.

vLLM (v1) counts, per engine, the prompt tokens it looked up in its prefix cache
(``vllm:prefix_cache_queries``) and those it found there (``vllm:prefix_cache_hits``); both are
Prometheus counters (exposed as ``..._total`` in the text format). The hit rate of an interval is
``delta hits / delta queries`` (:func:`hit_rate`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["HITS", "QUERIES", "hit_rate", "parse_prometheus_text", "prometheus_prefix_cache"]

QUERIES = "vllm:prefix_cache_queries"
HITS = "vllm:prefix_cache_hits"
#: ``name{labels} value [timestamp]`` (a label value may hold spaces and braces, so labels end at the last ``}``).
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})?\s+(\S+)(?:\s+\S+)?$")


def parse_prometheus_text(text: str) -> list[tuple[str, float]]:
    """``(metric name, value)`` of every sample line of a Prometheus text exposition (labels dropped;
    comments, blank and unreadable lines skipped)."""
    samples: list[tuple[str, float]] = []
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line.strip())
        if match is None:
            continue
        try:
            samples.append((match.group(1), float(match.group(2))))
        except ValueError:
            continue
    return samples


def prometheus_prefix_cache(samples: Iterable[tuple[str, float]]) -> tuple[int, int] | None:
    """``(queries, hits)`` summed over engines and label sets, or None when no query counter is there.

    Accepts the names with or without Prometheus' ``_total`` suffix."""
    queries = hits = 0.0
    seen = False
    for name, value in samples:
        base = name.removesuffix("_total")
        if base == QUERIES:
            queries, seen = queries + value, True
        elif base == HITS:
            hits += value
    return (int(queries), int(hits)) if seen else None


def hit_rate(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """``(hits_after - hits_before) / (queries_after - queries_before)``, the hit rate of the interval.

    None when either reading is missing or no token was looked up. Counters that went down (an engine
    rebuilt in between restarts them from 0) count from 0: ``after`` alone is the interval."""
    if before is None or after is None:
        return None
    if after[0] < before[0] or after[1] < before[1]:
        before = (0, 0)
    queries, hits = after[0] - before[0], after[1] - before[1]
    return hits / queries if queries > 0 else None
