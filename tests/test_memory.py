"""Per-phase memory figures, and that trimming really hands freed heap back to the OS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from steppo_train.memory import PhaseMemory, heap_info, rss_gib

FRAGMENT_AND_TRIM = """
import json
from steppo_train.memory import heap_info, release_free_memory, rss_gib
blocks = [bytes(2048) for _ in range(100_000)]         # ~200 MB of glibc heap (not pymalloc: > 512 B)
keep = blocks[::10]                                    # survivors pin the heap: no trim at its top
del blocks
before = rss_gib()
free_before = heap_info().free
release_free_memory()
print(json.dumps({"before": before, "after": rss_gib(), "free_before": free_before, "kept": len(keep)}))
"""


@pytest.mark.skipif(heap_info() is None, reason="needs glibc's mallinfo2")
def test_release_free_memory_returns_fragmented_heap_to_the_os() -> None:
    import json

    out = subprocess.run([sys.executable, "-c", FRAGMENT_AND_TRIM], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["free_before"] > 0.1  # ~180 MB of freed chunks held by glibc between the survivors
    assert r["before"] - r["after"] > 0.1, r  # ... and given back by malloc_trim


def test_phase_memory_records_each_phase_once_per_iteration() -> None:
    memory = PhaseMemory(trim=False)
    memory.after("rollout")
    memory.after("update")
    first = memory.take()
    assert {"memory/rss_rollout_gib", "memory/rss_update_gib", "memory/peak_rss_gib"} <= set(first)
    assert 0 < first["memory/rss_update_gib"] <= first["memory/peak_rss_gib"] + 1e-6
    if heap_info() is not None:
        assert first["memory/heap_in_use_update_gib"] > 0 and first["memory/heap_free_update_gib"] >= 0
    assert set(memory.take()) == {"memory/peak_rss_gib"}  # a new iteration starts empty
    assert rss_gib() > 0
