"""The shared ring of a stream (PROTOCOL.md §12.2, §12.3): its header page, record headers, where a
record goes, and the sleep/wake handshake. Both ends of a stream use this module; nothing else does.

Python has no atomic instructions. Every shared field is an aligned 4- or 8-byte word, read and
written with one load or store (a ``memoryview`` item); between "store my position" and "load the
other side's waiting flag" (§12.3) we execute a full fence: acquiring a lock runs a locked
read-modify-write instruction, which on x86-64 orders the store before the load. Sleeps are also
bounded (:data:`SLEEP_BOUND`), so that even a lost wake-up costs latency, never liveness.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import Callable, Iterable, NamedTuple, Optional, Tuple

from .errors import ERR_INVALID_ARGUMENT, ERR_RING_INVALID, ArrowShmError, syscall_error
from .segment import F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK

RING_MAGIC = b"ASHMRING"
RING_LAYOUT_VERSION = 1
RING_HEADER_BYTES = 4096
MIN_CAPACITY = 65536
MAX_CAPACITY = 2**40
MAX_READERS = 62
DEFAULT_CAPACITY = 16 * 1024 * 1024
#: The seals a ring carries: never shrinks or grows, rewritten all the time (no F_SEAL_WRITE).
RING_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL

RECORD_BATCH = 1
RECORD_PADDING = 2
RECORD_EXTERNAL = 3
RECORD_END = 4
RECORD_HEADER_BYTES = 64
RECORD_ALIGN = 64
_RECORD_HEADER = struct.Struct("<IIQQ40x")  # length, kind, sequence, ipc_length


class Header:
    """Byte offsets of the header page's fields (§12.2)."""

    MAGIC = 0
    LAYOUT_VERSION = 8
    HEADER_LENGTH = 12
    CAPACITY = 16
    MAX_READERS = 24
    WRITE_POSITION = 64
    PRODUCER_WAITING = 72
    ENDED = 76
    SLOTS = 128


class Slot:
    """Byte offsets inside a reader slot (§12.2)."""

    BYTES = 64
    READ_POSITION = 0
    STATE = 8
    WAITING = 12
    PID = 16


#: Longest single sleep: bounds the cost of a wake-up lost to the missing atomics.
SLEEP_BOUND = 0.02

_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory fence (see the module docstring)."""
    _fence_lock.acquire()
    _fence_lock.release()


def align_record(n: int) -> int:
    return (n + RECORD_ALIGN - 1) // RECORD_ALIGN * RECORD_ALIGN


def ring_offset(position: int, capacity: int) -> int:
    """The data offset of ``position``: the ring's one wrap."""
    return position % capacity


class Placement(NamedTuple):
    offset: int
    padding: int


def place_record(write: int, length: int, capacity: int) -> Placement:
    """Where a record of ``length`` bytes goes when the producer is at ``write`` (§12.2): its data
    offset, after ``padding`` bytes of PADDING that fill the end of the ring when it would not fit
    there (0 when it fits)."""
    offset = ring_offset(write, capacity)
    tail = capacity - offset
    return Placement(offset, 0) if length <= tail else Placement(0, tail)


def check_capacity(capacity: int) -> None:
    if not isinstance(capacity, int) or not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity & (capacity - 1):
        raise ArrowShmError(
            ERR_INVALID_ARGUMENT, f"ring capacity must be a power of two from {MIN_CAPACITY} to 2^40 bytes, got {capacity}"
        )


def _slot_field(slot: int, field: int) -> int:
    return Header.SLOTS + Slot.BYTES * slot + field


#: The producer's waiting flag (§12.3), as an index of the header's 32-bit words.
PRODUCER_FLAG = Header.PRODUCER_WAITING // 4


class RingHeader:
    """Word views of the header page; each access is one aligned load or store."""

    def __init__(self, page: memoryview) -> None:
        self._page = page
        self._u64 = page.cast("Q")
        self._u32 = page.cast("I")

    def init(self, capacity: int, max_readers: int) -> None:
        self._page[:] = bytes(RING_HEADER_BYTES)
        self._page[Header.MAGIC : Header.MAGIC + 8] = RING_MAGIC
        self._u32[Header.LAYOUT_VERSION // 4] = RING_LAYOUT_VERSION
        self._u32[Header.HEADER_LENGTH // 4] = RING_HEADER_BYTES
        self._u64[Header.CAPACITY // 8] = capacity
        self._u32[Header.MAX_READERS // 4] = max_readers

    def check(self, capacity: int, slot: int) -> None:
        """A consumer's checks of a ring it was given (§12.2): ERR_RING_INVALID unless it is the
        ring STREAM_OPEN describes."""
        if bytes(self._page[Header.MAGIC : Header.MAGIC + 8]) != RING_MAGIC:
            raise ArrowShmError(ERR_RING_INVALID, "ring header without the ASHMRING magic")
        layout = self._u32[Header.LAYOUT_VERSION // 4]
        if layout != RING_LAYOUT_VERSION:
            raise ArrowShmError(ERR_RING_INVALID, f"ring layout version {layout}, this side reads {RING_LAYOUT_VERSION}")
        header_length = self._u32[Header.HEADER_LENGTH // 4]
        if header_length != RING_HEADER_BYTES:
            raise ArrowShmError(ERR_RING_INVALID, f"ring header length {header_length}, expected {RING_HEADER_BYTES}")
        declared = self._u64[Header.CAPACITY // 8]
        if declared != capacity:
            raise ArrowShmError(ERR_RING_INVALID, f"ring header says capacity {declared}, STREAM_OPEN says {capacity}")
        max_readers = self._u32[Header.MAX_READERS // 4]
        if not 1 <= max_readers <= MAX_READERS or slot >= max_readers:
            raise ArrowShmError(ERR_RING_INVALID, f"reader slot {slot} outside the ring's {max_readers} slots")

    @property
    def write_position(self) -> int:
        return self._u64[Header.WRITE_POSITION // 8]

    @write_position.setter
    def write_position(self, value: int) -> None:
        self._u64[Header.WRITE_POSITION // 8] = value

    def mark_ended(self) -> None:
        self._u32[Header.ENDED // 4] = 1

    def read_position(self, slot: int) -> int:
        return self._u64[_slot_field(slot, Slot.READ_POSITION) // 8]

    def set_read_position(self, slot: int, value: int) -> None:
        self._u64[(Header.SLOTS + Slot.BYTES * slot) // 8] = value  # (Slot.READ_POSITION is 0)

    def set_slot(self, slot: int, *, state: int, pid: int = 0) -> None:
        """Claim (state 1, with the reader's pid) or free (state 0) a reader slot."""
        if state:
            self._u32[_slot_field(slot, Slot.WAITING) // 4] = 0
            self._u32[_slot_field(slot, Slot.PID) // 4] = pid
        self._u32[_slot_field(slot, Slot.STATE) // 4] = state

    # §12.3: the flags each side raises before it sleeps, and the other side's wake-up.

    @staticmethod
    def reader_flag(slot: int) -> int:
        return _slot_field(slot, Slot.WAITING) // 4

    def set_flag(self, flag: int, waiting: bool) -> None:
        self._u32[flag] = 1 if waiting else 0

    def wake_if_waiting(self, flag: int, fd: int) -> None:
        """The waker's half of §12.3, after its position was stored: clear the flag, signal."""
        fence()
        self._wake(flag, fd)

    def wake_waiting(self, waiters: Iterable[Tuple[int, int]]) -> None:
        """:meth:`wake_if_waiting` for many (flag, eventfd) pairs, one fence for all."""
        fence()
        for flag, fd in waiters:
            self._wake(flag, fd)

    def _wake(self, flag: int, fd: int) -> None:
        if self._u32[flag] == 1:
            self._u32[flag] = 0
            eventfd_signal(fd)

    def release(self) -> None:
        for view in (self._u64, self._u32, self._page):
            view.release()


def write_record_header(data: memoryview, offset: int, length: int, kind: int, sequence: int = 0, ipc_length: int = 0) -> None:
    _RECORD_HEADER.pack_into(data, offset, length, kind, sequence, ipc_length)


def read_record_header(data: memoryview, offset: int, capacity: int, available: int) -> Tuple[int, int, int, int]:
    """Reads and checks the record at data ``offset`` (§12.2); ``available`` = bytes published from
    it. Returns (length, kind, sequence, ipc_length)."""
    header: Tuple[int, int, int, int] = _RECORD_HEADER.unpack_from(data, offset)
    length, kind, sequence, ipc_length = header
    # A BATCH record passing every check below, in one test (the common case).
    if (
        kind == RECORD_BATCH
        and 0 < ipc_length <= length - RECORD_HEADER_BYTES
        and not length % RECORD_ALIGN
        and length <= available
        and length <= capacity - offset
    ):
        return header
    if length < RECORD_HEADER_BYTES or length % RECORD_ALIGN:
        raise _invalid_record(offset, f"length {length} is not a positive multiple of 64")
    if length > capacity - offset:
        raise _invalid_record(offset, f"length {length} runs past the end of the {capacity}-byte data area")
    if length > available:
        raise _invalid_record(offset, f"length {length} runs past the write position ({available} bytes published)")
    if kind == RECORD_BATCH:
        if ipc_length == 0 or ipc_length > length - RECORD_HEADER_BYTES:
            raise _invalid_record(offset, f"IPC length {ipc_length} does not fit its {length}-byte record")
    elif kind == RECORD_PADDING:
        if length != capacity - offset:
            raise _invalid_record(offset, f"padding of {length} bytes does not fill the {capacity - offset} bytes left")
    elif kind != RECORD_EXTERNAL and kind != RECORD_END:
        raise _invalid_record(offset, f"unknown record kind {kind}")
    return header


def _invalid_record(offset: int, what: str) -> ArrowShmError:
    return ArrowShmError(ERR_RING_INVALID, f"record at data offset {offset}: {what}")


# ------------------------------------------------------------------------------------- eventfds


def eventfd() -> int:
    try:
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    except OSError as e:
        raise syscall_error("eventfd", e) from None


def eventfd_signal(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass  # the counter is saturated: the waiter is woken anyway
    except OSError as e:
        raise syscall_error("eventfd_write", e) from None


def eventfd_drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


#: Longest ``spin_micros`` a waiter may ask for (one second of busy polling).
MAX_SPIN_MICROS = 1_000_000


def check_spin_micros(value: object) -> int:
    """The ``spin_micros`` option (§12.3: a waiter may poll before it sleeps), 0 to 1,000,000."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SPIN_MICROS:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"spin_micros must be an integer from 0 to {MAX_SPIN_MICROS}, got {value!r}")
    return value


def spin_until(ready: Callable[[], bool], spin_ns: int, deadline: Optional[float]) -> bool:
    """Poll ``ready()`` for up to ``spin_ns`` nanoseconds (never past ``deadline``): whether it became true."""
    until = time.monotonic_ns() + spin_ns
    if deadline is not None:
        until = min(until, int(deadline * 1e9))
    while time.monotonic_ns() < until:
        if ready():
            return True
    return False


def sleep_on(header: RingHeader, flag: int, ready: Callable[[], bool], deadline: Optional[float], wait: Callable[[float], None]) -> None:
    """The waiter's half of §12.3: raise ``flag``, re-check ``ready()``, ``wait(seconds)`` (at most
    SLEEP_BOUND, less near ``deadline``), lower the flag."""
    header.set_flag(flag, True)
    fence()
    try:
        if ready():
            return
        wait(SLEEP_BOUND if deadline is None else min(SLEEP_BOUND, max(0.0, deadline - time.monotonic())))
    finally:
        header.set_flag(flag, False)
