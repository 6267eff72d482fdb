"""Process memory per training phase, and keeping glibc's heap from growing over a run.

Resident memory (RSS) of a training process can grow for two reasons that need different fixes:
objects that stay alive (the heap's *in-use* bytes grow) and freed memory that glibc keeps
(*free* bytes inside the heap grow). :class:`PhaseMemory` records RSS and both heap figures after
each phase, so a run's metrics say which it is. Measured on the results recipe without any fix
(benchmarks/bench_memory.py): the heap's free bytes grew 2.1 -> 3.6 GiB in 4 iterations while
in-use grew 3.9 -> 4.4 GiB, and the peak (inside the update) grew faster than either.

Most of the growth is freed memory that glibc keeps: once a large block is freed glibc raises its
mmap threshold (up to 32 MiB), so the update's activation tensors come from the heap, and tensors
of ever-changing sizes (variable-length step batches) leave holes that stay resident.
:func:`release_free_memory` (``gc.collect`` + glibc ``malloc_trim(0)``) returns those free pages to
the OS; the trainer calls it after each phase and after each optimizer step. (A fixed 1 MiB mmap
threshold, which keeps large tensors out of the heap altogether, was tried: it bounded the peak too
but made iterations about 2.5x slower, every large tensor being zero-filled by the kernel anew.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
from dataclasses import dataclass, field

__all__ = ["HeapInfo", "PhaseMemory", "heap_info", "peak_rss_gib", "release_free_memory", "rss_gib"]

GIB = 2**30


def rss_gib() -> float:
    """Current resident set size of this process (``/proc/self/statm``), in GiB."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError, IndexError):
        return peak_rss_gib()


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far, in GiB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


@dataclass(frozen=True)
class HeapInfo:
    """glibc heap figures in GiB: ``in_use`` (live allocations, incl. mmapped blocks) and ``free``
    (freed chunks glibc still holds)."""

    in_use: float
    free: float


def heap_info() -> HeapInfo | None:
    """glibc's ``mallinfo2()`` (None where it is not available, e.g. musl or macOS)."""
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):
        return None
    _LIBC.mallinfo2.restype = _MallInfo2
    info = _LIBC.mallinfo2()
    return HeapInfo(in_use=(info.uordblks + info.hblkhd) / GIB, free=info.fordblks / GIB)


def release_free_memory(collect: bool = True) -> None:
    """Collect garbage (``collect``), then return the heap's free pages to the OS (glibc ``malloc_trim(0)``)."""
    if collect:
        gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


@dataclass
class PhaseMemory:
    """Records ``memory/rss_<phase>_gib`` (and the heap's in-use / free GiB) after each phase.

    ``trim=True`` releases free heap before measuring (the trainer's default): the figures then show
    what the process really keeps.
    """

    trim: bool = True
    metrics: dict[str, float] = field(default_factory=dict)

    def after(self, phase: str) -> None:
        if self.trim:
            release_free_memory()
        self.metrics[f"memory/rss_{phase}_gib"] = rss_gib()
        heap = heap_info()
        if heap is not None:
            self.metrics[f"memory/heap_in_use_{phase}_gib"] = heap.in_use
            self.metrics[f"memory/heap_free_{phase}_gib"] = heap.free

    def take(self) -> dict[str, float]:
        """The figures so far (and start a new iteration)."""
        out, self.metrics = self.metrics, {}
        sampled = [v for k, v in out.items() if k.startswith("memory/rss_")]
        out["memory/peak_rss_gib"] = max([peak_rss_gib(), *sampled])  # statm and ru_maxrss round differently
        return out
