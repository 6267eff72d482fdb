"""Process memory per training phase, and handing freed heap back to the OS.

Resident memory (RSS) of a training process grows for two different reasons, which need
different fixes: objects that stay alive (a leak: the heap's *in-use* bytes grow) and freed heap
that glibc keeps (fragmentation: *free* bytes inside the heap grow while in-use stays flat). A
rollout's many small Python and tokenizer objects and the update's large, short-lived activation
tensors interleave on the same heap, so after each phase glibc holds on to gigabytes of free
chunks that it never returns on its own. :func:`release_free_memory` collects garbage and calls
glibc's ``malloc_trim(0)``, which gives those pages back; :class:`PhaseMemory` records RSS and the
heap's in-use / free bytes after each phase, so a run's metrics say which of the two it is.
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


def release_free_memory() -> None:
    """Collect garbage, then return the heap's free pages to the OS (glibc ``malloc_trim(0)``)."""
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
        out["memory/peak_rss_gib"] = peak_rss_gib()
        return out
