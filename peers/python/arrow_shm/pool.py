"""Spare segments for sealed sends: memory that is ready before it is needed.

A fresh memfd costs a page allocation (and zeroing) per 4 KiB page at first write. After each send,
a background thread pre-allocates the next segment of the same size class (``posix_fallocate``,
which releases the GIL), so the next send of a similar table copies into pages that already exist.
The TypeScript peer does the same (src/shm/pool.ts).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Dict, List, Optional

from .segment import Segment

_MIN_CLASS = 64 * 1024
_PAGE = 4096


def size_class(size: int) -> int:
    """64 KiB, then four steps per power of two (1, 1.25, 1.5, 1.75 × 2^k, page-aligned)."""
    if size <= _MIN_CLASS:
        return _MIN_CLASS
    power = 2 ** int(math.floor(math.log2(size)))
    for step in (1, 1.25, 1.5, 1.75, 2):
        c = int(math.ceil(power * step / _PAGE)) * _PAGE
        if c >= size:
            return c
    return 2 * power


class SparePool:
    """One spare segment per size class, within ``max_bytes`` in all."""

    def __init__(self, max_bytes: int = 1024**3) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._free: Dict[int, Segment] = {}
        self._threads: Dict[int, threading.Thread] = {}
        self._closed = False

    def take(self, size: int) -> Segment:
        """A writable segment of exactly ``size`` bytes: a spare when one is ready, else a fresh one."""
        cls = size_class(size)
        with self._lock:
            spare = self._free.pop(cls, None)
        self._refill(cls)
        if spare is None:
            return Segment.create(size)
        try:
            spare.truncate(size)
        except BaseException:
            spare.close()
            raise
        return spare

    def _refill(self, cls: int) -> None:
        with self._lock:
            held = sum(self._free) + sum(self._threads)
            if self._closed or cls in self._free or cls in self._threads or held + cls > self._max_bytes:
                return
            thread = threading.Thread(target=self._allocate, args=(cls,), name="arrow-shm-spare", daemon=True)
            self._threads[cls] = thread
        thread.start()

    def _allocate(self, cls: int) -> None:
        segment: Optional[Segment] = None
        try:
            segment = Segment.create(cls, "arrow-shm-spare")
            os.posix_fallocate(segment.fd, 0, cls)
        except OSError:
            if segment is not None:
                segment.close()
            segment = None  # out of memory or fds: the next send allocates as it goes
        with self._lock:
            self._threads.pop(cls, None)
            if segment is not None and not self._closed:
                self._free[cls] = segment
                segment = None
        if segment is not None:
            segment.close()

    def close(self) -> None:
        """Closes the spares; waits for allocations under way, so no fd outlives the pool."""
        with self._lock:
            self._closed = True
            spares: List[Segment] = list(self._free.values())
            self._free.clear()
            threads = list(self._threads.values())
        for thread in threads:
            thread.join()
        for segment in spares:
            segment.close()
