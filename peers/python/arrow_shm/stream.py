"""Streams of record batches through a shared ring (PROTOCOL.md §12).

A :class:`StreamReader` maps the producer's ring and reads each batch in place (its columns are
views of the ring); a :class:`RingProducer` owns a ring and writes batches into it for one
(:meth:`Channel.open_stream`) or many (:func:`publish`) consumers.

Python has no atomic instructions. Every shared field is an aligned 4- or 8-byte word, read and
written with one load or store (a ``memoryview`` item); between "store my position" and "load the
other side's waiting flag" (§12.3) we execute a full fence: acquiring a lock runs a locked
read-modify-write instruction, which on x86-64 orders the store before the load. Sleeps are also
bounded (20 ms), so that even a lost wake-up costs latency, never liveness.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, NoReturn, Optional, Union

import pyarrow as pa

from .errors import (
    ERR_CLOSED,
    ERR_INVALID_ARGUMENT,
    ERR_NO_READER_SLOT,
    ERR_PEER_CLOSED,
    ERR_PROTOCOL,
    ERR_RING_FULL,
    ERR_RING_INVALID,
    ERR_SEGMENT_INVALID,
    ERR_SEGMENT_UNSEALED,
    ERR_TIMEOUT,
    ArrowShmError,
    syscall_error,
)
from .frame import Frame, Kind
from .ipc import HEADER_DICTIONARY_BATCH, HEADER_RECORD_BATCH, _validate_full, map_arrow_error, walk_messages
from .message import close_mapping
from .segment import (
    F_ADD_SEALS,
    F_GET_SEALS,
    F_SEAL_GROW,
    F_SEAL_SEAL,
    F_SEAL_SHRINK,
    Segment,
    check_segment,
    map_readonly,
)

if TYPE_CHECKING:  # pragma: no cover
    from .channel import Channel

RING_MAGIC = b"ASHMRING"
RING_LAYOUT_VERSION = 1
RING_HEADER_BYTES = 4096
MIN_CAPACITY = 65536
MAX_CAPACITY = 2**40
MAX_READERS = 62
DEFAULT_CAPACITY = 16 * 1024 * 1024
RING_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL

RECORD_BATCH = 1
RECORD_PADDING = 2
RECORD_EXTERNAL = 3
RECORD_END = 4
RECORD_HEADER_BYTES = 64
_RECORD_HEADER = struct.Struct("<IIQQ40x")

# Word indexes into the header page (u64 / u32 views), §12.2.
_W_CAPACITY = 2
_W_WRITE_POSITION = 8
_I_LAYOUT = 2
_I_HEADER_LENGTH = 3
_I_MAX_READERS = 6
_I_PRODUCER_WAITING = 18
_I_ENDED = 19
_SLOT_BASE = 128
_SLOT_BYTES = 64

#: Longest single sleep: bounds the cost of a wake-up lost to the missing atomics.
SLEEP_BOUND = 0.02
#: How often a writer that does not sleep looks at its reader's socket for a hang-up (seconds).
SOCKET_CHECK_INTERVAL = 0.01

_fence_lock = threading.Lock()


def _fence() -> None:
    """A full memory fence (see the module docstring)."""
    _fence_lock.acquire()
    _fence_lock.release()


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _eventfd() -> int:
    try:
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    except OSError as e:
        raise syscall_error("eventfd", e) from None


def _eventfd_signal(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass  # the counter is saturated: the waiter is woken anyway
    except OSError as e:
        raise syscall_error("eventfd_write", e) from None


def _eventfd_drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


def check_capacity(capacity: int) -> None:
    if not isinstance(capacity, int) or not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity & (capacity - 1):
        raise ArrowShmError(
            ERR_INVALID_ARGUMENT, f"ring capacity must be a power of two from {MIN_CAPACITY} to 2^40 bytes, got {capacity}"
        )


class _RingHeader:
    """Word views of the header page; each access is one aligned load or store."""

    def __init__(self, page: memoryview) -> None:
        self.page = page
        self.u64 = page.cast("Q")
        self.u32 = page.cast("I")

    @staticmethod
    def _slot(slot: int, field: int) -> int:
        return (_SLOT_BASE + _SLOT_BYTES * slot + field) // 4

    def init(self, capacity: int, max_readers: int) -> None:
        self.page[:] = bytes(RING_HEADER_BYTES)
        self.page[0:8] = RING_MAGIC
        self.u32[_I_LAYOUT] = RING_LAYOUT_VERSION
        self.u32[_I_HEADER_LENGTH] = RING_HEADER_BYTES
        self.u64[_W_CAPACITY] = capacity
        self.u32[_I_MAX_READERS] = max_readers

    @property
    def write_position(self) -> int:
        return self.u64[_W_WRITE_POSITION]

    @write_position.setter
    def write_position(self, value: int) -> None:
        self.u64[_W_WRITE_POSITION] = value

    def read_position(self, slot: int) -> int:
        return self.u64[self._slot(slot, 0) // 2]

    def set_read_position(self, slot: int, value: int) -> None:
        self.u64[self._slot(slot, 0) // 2] = value

    def wake_if_waiting(self, index: int, fd: int) -> None:
        """The waker's half of §12.3, after its position was stored: clear the flag, signal."""
        _fence()
        if self.u32[index] == 1:
            self.u32[index] = 0
            _eventfd_signal(fd)

    def release(self) -> None:
        for view in (self.u64, self.u32, self.page):
            view.release()


def _sleep_on(channel: "Channel", header: _RingHeader, flag: int, fd: int, ready: Callable[[], bool], deadline: Optional[float]) -> None:
    """The waiter's half of §12.3: flag, re-check, sleep (serving the socket), clear the flag."""
    header.u32[flag] = 1
    _fence()
    try:
        if ready():
            return
        remaining = SLEEP_BOUND if deadline is None else min(SLEEP_BOUND, max(0.0, deadline - time.monotonic()))
        _wait_any([channel], [fd], remaining)
        _eventfd_drain(fd)
    finally:
        header.u32[flag] = 0


# ---------------------------------------------------------------------------------------- consumer


class _PipeFile:
    """What pyarrow asks of a Python file object it reads or writes one way, nothing seekable."""

    closed = False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Feed(_PipeFile):
    """The file pyarrow's stream reader reads from: the prologue, then each record's messages.

    It returns slices of the mappings, which pyarrow wraps without copying: the columns of a batch
    are views of the ring. A read never spans two messages (they were walked and bounded first).
    """

    def __init__(self) -> None:
        self._chunks: Deque[Union[memoryview, bytes]] = deque()

    def push(self, chunk: Union[memoryview, bytes]) -> None:
        self._chunks.append(chunk)

    def clear(self) -> None:
        self._chunks.clear()

    def read(self, n: int = -1) -> Union[memoryview, bytes]:
        if not self._chunks:
            return b""
        head = self._chunks[0]
        if n is None or n < 0 or n >= len(head):
            self._chunks.popleft()
            if n is None or n < 0 or n == len(head):
                return head
            parts = [head]  # the request spans chunks (hostile framing only): copy
            need = n - len(head)
            while need > 0 and self._chunks:
                part = self.read(need)
                parts.append(part)
                need -= len(part)
            return b"".join(bytes(p) for p in parts)
        self._chunks[0] = head[n:]
        return head[:n]

    def readable(self) -> bool:
        return True


class StreamBatch:
    """A batch read in place from the ring: valid until :meth:`release` (then the producer may
    reuse its bytes). A context manager."""

    def __init__(self, batch: pa.RecordBatch, sequence: int, data: memoryview, release: Callable[[], None]) -> None:
        self.batch = batch
        self.sequence = sequence
        #: The record's IPC messages (dictionaries, then the batch), in place.
        self.data = data
        self._release: Optional[Callable[[], None]] = release

    @property
    def released(self) -> bool:
        return self._release is None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> "StreamBatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Held:
    __slots__ = ("end", "released")

    def __init__(self, end: int) -> None:
        self.end = end
        self.released = False


def _decimal(kv: Dict[str, str], key: str) -> int:
    text = kv.get(key, "")
    if not (text.isascii() and text.isdigit() and len(text) <= 16):
        raise ArrowShmError(ERR_PROTOCOL, f"STREAM_OPEN without a valid {key} ({text!r})")
    return int(text)


def _check_eventfd(fd: int, what: str) -> None:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = "unknown"
    if target != "anon_inode:[eventfd]":
        raise ArrowShmError(ERR_SEGMENT_INVALID, f"the {what} fd is not an eventfd ({target})")


class StreamReader:
    """The consuming end of a stream: ``for batch in reader`` (each batch released when the loop
    moves on) or :meth:`read` (release each :class:`StreamBatch` yourself). A context manager;
    closing before the end leaves the stream (the connection is closed)."""

    def __init__(
        self,
        channel: "Channel",
        frame: Frame,
        fds: List[int],
        *,
        validate_full: bool = True,
        max_message_bytes: int = 2**32,
        owns_channel: bool = False,
    ) -> None:
        """Checks and maps what a STREAM_OPEN carries (§12.1, §12.2). Takes ownership of ``fds``:
        on failure everything is closed and the typed error raised."""
        self._channel = channel
        self._validate_full = validate_full
        self._max_message_bytes = max_message_bytes
        self.owns_channel = owns_channel
        self._closed = False
        self._ended = False
        self._header: Optional[_RingHeader] = None
        self._header_map: Optional[mmap.mmap] = None
        self._data_map: Optional[mmap.mmap] = None
        self._data: Optional[memoryview] = None
        self._prologue_map: Optional[mmap.mmap] = None
        self._prologue = None
        self._data_fd = self._space_fd = -1
        self._held: Deque[_Held] = deque()
        self._segments: Dict[int, Union[tuple[mmap.mmap, int, int], ArrowShmError]] = {}
        self._feed = _Feed()
        self.batches_read = 0
        try:
            self._open(frame, fds)
        except BaseException:
            for fd in fds:
                if fd >= 0:
                    _close_fd(fd)
            self._free()
            raise

    def _open(self, frame: Frame, fds: List[int]) -> None:
        if len(fds) != 4 or frame.fd_count != 4:
            raise ArrowShmError(ERR_PROTOCOL, f"STREAM_OPEN must carry exactly 4 fds, got {len(fds)} (fd_count {frame.fd_count})")
        kv = dict(frame.metadata)
        self.stream_id = _decimal(kv, "stream_id")
        self._slot = _decimal(kv, "reader_slot")
        start = _decimal(kv, "start_position")
        capacity = _decimal(kv, "capacity")
        for key in ("stream_id", "reader_slot", "start_position", "capacity"):
            del kv[key]
        #: The producer's user metadata.
        self.metadata: Dict[str, str] = kv
        check_capacity(capacity)
        _check_eventfd(fds[2], "data")
        _check_eventfd(fds[3], "space")

        ring = fds[0]
        try:
            seals = fcntl.fcntl(ring, F_GET_SEALS)
        except OSError:
            raise ArrowShmError(ERR_SEGMENT_INVALID, "the ring fd is not a memfd") from None
        if seals & RING_SEALS != RING_SEALS:
            raise ArrowShmError(ERR_SEGMENT_UNSEALED, f"ring seals 0x{seals:x} lack the required 0x{RING_SEALS & ~seals:x}")
        size = os.fstat(ring).st_size
        if size != RING_HEADER_BYTES + capacity:
            raise ArrowShmError(ERR_RING_INVALID, f"ring segment of {size} bytes, expected {RING_HEADER_BYTES} + {capacity}")
        try:
            self._header_map = mmap.mmap(ring, RING_HEADER_BYTES, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._data_map = mmap.mmap(ring, capacity, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=RING_HEADER_BYTES)
        except OSError as e:
            raise syscall_error("mmap", e) from None
        os.close(ring)
        fds[0] = -1
        header = self._header = _RingHeader(memoryview(self._header_map))
        if bytes(header.page[0:8]) != RING_MAGIC:
            raise ArrowShmError(ERR_RING_INVALID, "ring header without the ASHMRING magic")
        if header.u32[_I_LAYOUT] != RING_LAYOUT_VERSION:
            raise ArrowShmError(ERR_RING_INVALID, f"ring layout version {header.u32[_I_LAYOUT]}, this side reads {RING_LAYOUT_VERSION}")
        if header.u32[_I_HEADER_LENGTH] != RING_HEADER_BYTES:
            raise ArrowShmError(ERR_RING_INVALID, f"ring header length {header.u32[_I_HEADER_LENGTH]}, expected {RING_HEADER_BYTES}")
        if header.u64[_W_CAPACITY] != capacity:
            raise ArrowShmError(ERR_RING_INVALID, f"ring header says capacity {header.u64[_W_CAPACITY]}, STREAM_OPEN says {capacity}")
        max_readers = header.u32[_I_MAX_READERS]
        if not 1 <= max_readers <= MAX_READERS or self._slot >= max_readers:
            raise ArrowShmError(ERR_RING_INVALID, f"reader slot {self._slot} outside the ring's {max_readers} slots")
        written = header.write_position
        if start > written or written - start > capacity or start % 64:
            raise ArrowShmError(ERR_RING_INVALID, f"start position {start} does not fit the write position {written}")
        self._capacity = capacity
        self._data = memoryview(self._data_map)
        self._position = self._read_position = self._published = start

        prologue = fds[1]
        check_segment(prologue, frame.ipc_offset, frame.ipc_length, max_message_bytes=1024**3)
        self._prologue_map = map_readonly(prologue, os.fstat(prologue).st_size)
        os.close(prologue)
        fds[1] = -1
        view = memoryview(self._prologue_map)[frame.ipc_offset : frame.ipc_offset + frame.ipc_length]
        spans, _ = walk_messages(view, "stream")
        if any(s.header_type == HEADER_RECORD_BATCH for s in spans):
            raise ArrowShmError(ERR_RING_INVALID, "the stream prologue holds a RecordBatch")
        self._prologue: Optional[memoryview] = view
        for s in spans:
            self._feed.push(view[s.start : s.end])
        try:
            self._reader = pa.ipc.open_stream(self._feed)
        except (pa.ArrowException, EOFError, ValueError, OSError, TypeError) as e:
            raise map_arrow_error(e) from None
        self.schema: pa.Schema = self._reader.schema
        self._data_fd, self._space_fd = fds[2], fds[3]
        fds[2] = fds[3] = -1

    # -------------------------------------------------------------------------------- reading

    @property
    def prologue(self) -> memoryview:
        """The start of an IPC stream this reader's batches continue: schema and dictionaries."""
        if self._prologue is None:
            raise ArrowShmError(ERR_CLOSED, "the stream reader is closed")
        return self._prologue

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def closed(self) -> bool:
        return self._closed

    def data_range(self) -> tuple[int, int]:
        """(address, size) of the ring's data area: batches read in place lie inside it."""
        if self._data_map is None:
            raise ArrowShmError(ERR_CLOSED, "the stream reader is closed")
        return pa.py_buffer(self._data_map).address, self._capacity

    def read(self, *, timeout: Optional[float] = None) -> Optional[StreamBatch]:
        """The next batch, or ``None`` at the end of the stream. Raises ``ERR_TIMEOUT`` after
        ``timeout`` seconds without one, ``ERR_PEER_CLOSED`` if the producer left without ending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise ArrowShmError(ERR_CLOSED, "the stream reader is closed")
            if self._ended:
                return None
            write_position = self._load_write_position()
            if write_position > self._position:
                batch = self._read_record(write_position)
                if batch is not None:
                    return batch
                continue
            gone = self._peer_gone()
            if gone is not None:
                raise gone
            if deadline is not None and time.monotonic() >= deadline:
                raise ArrowShmError(ERR_TIMEOUT, f"no batch within {timeout} s")
            assert self._header is not None
            _sleep_on(
                self._channel,
                self._header,
                _SlotField.waiting(self._slot),
                self._data_fd,
                lambda: self._header.write_position > self._position or self._channel._failure is not None,  # type: ignore[union-attr]
                deadline,
            )

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self.read()
            if item is None:
                return
            try:
                yield item.batch
            finally:
                item.release()
                del item  # not kept alive by this frame (a traceback may hold it): it pins the ring

    def _peer_gone(self) -> Optional[ArrowShmError]:
        failure = self._channel._failure
        if failure is None:
            return None
        if failure.code == ERR_CLOSED:
            return failure
        return ArrowShmError(ERR_PEER_CLOSED, f"the producer left the stream after {self.batches_read} batches without ending it")

    def _load_write_position(self) -> int:
        assert self._header is not None
        position = self._header.write_position
        if position < self._published:
            self._broken(ArrowShmError(ERR_RING_INVALID, f"the write position went back from {self._published} to {position}"))
        if position - self._read_position > self._capacity:
            self._broken(
                ArrowShmError(
                    ERR_RING_INVALID,
                    f"the write position {position} is more than the {self._capacity}-byte ring ahead of this reader ({self._read_position})",
                )
            )
        self._published = position
        return position

    def _record_header(self, offset: int, available: int) -> tuple[int, int, int, int]:
        assert self._data is not None
        length, kind, sequence, ipc_length = _RECORD_HEADER.unpack_from(self._data, offset)
        where = f"record at data offset {offset}"
        capacity = self._capacity
        if length < RECORD_HEADER_BYTES or length % 64:
            raise ArrowShmError(ERR_RING_INVALID, f"{where}: length {length} is not a positive multiple of 64")
        if length > capacity - offset:
            raise ArrowShmError(ERR_RING_INVALID, f"{where}: length {length} runs past the end of the {capacity}-byte data area")
        if length > available:
            raise ArrowShmError(ERR_RING_INVALID, f"{where}: length {length} runs past the write position ({available} bytes published)")
        if kind == RECORD_BATCH:
            if ipc_length == 0 or ipc_length > length - RECORD_HEADER_BYTES:
                raise ArrowShmError(ERR_RING_INVALID, f"{where}: IPC length {ipc_length} does not fit its {length}-byte record")
        elif kind == RECORD_PADDING:
            if length != capacity - offset:
                raise ArrowShmError(ERR_RING_INVALID, f"{where}: padding of {length} bytes does not fill the {capacity - offset} bytes left")
        elif kind not in (RECORD_EXTERNAL, RECORD_END):
            raise ArrowShmError(ERR_RING_INVALID, f"{where}: unknown record kind {kind}")
        return length, kind, sequence, ipc_length

    def _read_record(self, write_position: int) -> Optional[StreamBatch]:
        assert self._data is not None
        offset = self._position % self._capacity
        try:
            length, kind, sequence, ipc_length = self._record_header(offset, write_position - self._position)
        except ArrowShmError as e:
            self._broken(e)
        held = _Held(self._position + length)
        self._held.append(held)
        self._position += length

        def release() -> None:
            held.released = True
            self._release_leading()

        if kind in (RECORD_PADDING, RECORD_END):
            self._ended = kind == RECORD_END
            release()
            return None
        if kind == RECORD_BATCH:
            start = offset + RECORD_HEADER_BYTES
            return self._decode(self._data[start : start + ipc_length], sequence, release)
        segment = self._wait_segment(sequence)
        if isinstance(segment, ArrowShmError):
            release()
            raise segment
        mapping, seg_offset, seg_length = segment

        def release_segment() -> None:
            close_mapping(mapping)
            release()

        return self._decode(memoryview(mapping)[seg_offset : seg_offset + seg_length], sequence, release_segment)

    def _decode(self, data: memoryview, sequence: int, release: Callable[[], None]) -> StreamBatch:
        try:
            spans, _ = walk_messages(data, "batches")
            for s in spans:
                # Dictionaries outlive their record (later batches use them): copy them out of the ring.
                self._feed.push(bytes(data[s.start : s.end]) if s.header_type == HEADER_DICTIONARY_BATCH else data[s.start : s.end])
            try:
                batch = self._reader.read_next_batch()
                if self._validate_full:
                    _validate_full(pa.Table.from_batches([batch]))
                else:
                    batch.validate()
            except StopIteration:
                raise ArrowShmError(ERR_RING_INVALID, "a stream record without a RecordBatch") from None
            except (pa.ArrowException, EOFError, ValueError, OSError, TypeError, IndexError, OverflowError) as e:
                raise map_arrow_error(e) from None
        except ArrowShmError:
            self._feed.clear()
            release()
            raise
        self.batches_read += 1
        return StreamBatch(batch, sequence, data, release)

    def _release_leading(self) -> None:
        """Publish the end of the leading run of released records; wake a waiting producer."""
        advanced = False
        while self._held and self._held[0].released:
            self._read_position = self._held.popleft().end
            advanced = True
        if not advanced or self._closed or self._header is None:
            return
        self._header.set_read_position(self._slot, self._read_position)
        self._header.wake_if_waiting(_I_PRODUCER_WAITING, self._space_fd)

    def _wait_segment(self, sequence: int) -> Union[tuple[mmap.mmap, int, int], ArrowShmError]:
        """The segment of an EXTERNAL record: the producer sent it before publishing the record."""
        while True:
            segment = self._segments.pop(sequence, None)
            if segment is not None:
                return segment
            gone = self._peer_gone()
            if gone is not None:
                return gone
            _wait_any([self._channel], [self._data_fd], SLEEP_BOUND)

    def _on_segment(self, frame: Frame, fds: List[int], outbox: List[Frame]) -> None:
        """A STREAM_SEGMENT for this stream (called by the channel, under its lock)."""
        text = frame.metadata.get("sequence", "")
        sequence = int(text) if text.isascii() and text.isdigit() and len(text) <= 16 else -1
        result: Union[tuple[mmap.mmap, int, int], ArrowShmError]
        try:
            if len(fds) != 1 or frame.fd_count != 1:
                raise ArrowShmError(ERR_PROTOCOL, f"STREAM_SEGMENT must carry exactly 1 fd, got {len(fds)}")
            if sequence < 0:
                raise ArrowShmError(ERR_PROTOCOL, "STREAM_SEGMENT without a valid sequence")
            size = check_segment(fds[0], frame.ipc_offset, frame.ipc_length, max_message_bytes=self._max_message_bytes)
            result = (map_readonly(fds[0], size), frame.ipc_offset, frame.ipc_length)
        except ArrowShmError as e:
            result = e
            outbox.append(Frame(kind=Kind.ERROR, correlation_id=frame.message_id, metadata={"code": e.code, "message": e.message[:4096]}))
        finally:
            for fd in fds:
                _close_fd(fd)
        if sequence < 0:
            return
        previous = self._segments.get(sequence)
        if isinstance(previous, tuple):
            close_mapping(previous[0])
        if self._closed:
            if isinstance(result, tuple):
                close_mapping(result[0])
            return
        self._segments[sequence] = result

    def _broken(self, error: ArrowShmError) -> NoReturn:
        """A broken ring ends the stream: tell the producer, close, raise."""
        self._channel._send_error_quietly(error, 0)
        self.close()
        raise error

    def close(self) -> None:
        """Unmap the ring and close the eventfds. Leaving before the end closes the channel, which
        is how a consumer tells the producer it left (§12.1)."""
        if self._closed:
            return
        self._closed = True
        if self._channel._stream_reader is self:
            self._channel._stream_reader = None
        if not self._ended or self.owns_channel:
            self._channel.close()
        self._free()

    def _free(self) -> None:
        self._closed = True
        self._feed.clear()
        self._reader = None
        for segment in self._segments.values():
            if isinstance(segment, tuple):
                close_mapping(segment[0])
        self._segments.clear()
        if self._header is not None:
            self._header.release()
            self._header = None
        for view in (self._data, self._prologue):
            if view is not None:
                view.release()
        self._data = self._prologue = None
        for mapping in (self._header_map, self._data_map, self._prologue_map):
            if mapping is not None:
                close_mapping(mapping)
        self._header_map = self._data_map = self._prologue_map = None
        for fd in (self._data_fd, self._space_fd):
            if fd >= 0:
                _close_fd(fd)
        self._data_fd = self._space_fd = -1

    def __enter__(self) -> "StreamReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _SlotField:
    @staticmethod
    def waiting(slot: int) -> int:
        return _RingHeader._slot(slot, 12)

    @staticmethod
    def state(slot: int) -> int:
        return _RingHeader._slot(slot, 8)

    @staticmethod
    def pid(slot: int) -> int:
        return _RingHeader._slot(slot, 16)



def _wait_any(channels: List["Channel"], fds: List[int], timeout: float) -> None:
    """Sleep until one of ``fds`` is readable or a frame arrived on one of ``channels`` (it is then
    dispatched: hang-ups, STREAM_SEGMENTs and ACKs are seen while a stream waits), at most ``timeout`` s."""
    poller = select.poll()
    sockets: Dict[int, "Channel"] = {}
    for channel in channels:
        sock = channel._sock
        if sock is not None:
            sockets[sock.fileno()] = channel
            poller.register(sock.fileno(), select.POLLIN)
    for fd in fds:
        poller.register(fd, select.POLLIN)
    for fd, _ in poller.poll(max(0, int(timeout * 1000))):
        channel = sockets.get(fd)
        if channel is not None:
            channel._pump_available()


# ---------------------------------------------------------------------------------------- producer


class _Capture(_PipeFile):
    """The sink of pyarrow's stream writer: collects the messages of each ``write_batch``."""

    def __init__(self) -> None:
        self._parts: List[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(self._parts[-1])

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts = []
        return out

    def writable(self) -> bool:
        return True


class _Attached:
    __slots__ = ("slot", "channel", "data_fd", "attached")

    def __init__(self, slot: int, channel: "Channel", data_fd: int) -> None:
        self.slot = slot
        self.channel = channel
        self.data_fd = data_fd
        self.attached = False


def _batches_of(data: Any) -> List[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        return data.to_batches()
    if isinstance(data, pa.RecordBatch):
        return [data]
    return list(data)


class RingProducer:
    """Owns a ring (§12.2) and writes batches into it for the consumers attached to it.

    Options: ``capacity_bytes`` (a power of two, default 16 MiB; batches over a quarter of it go
    through their own segment), ``max_messages`` (most records not yet released by every reader),
    ``on_full`` (``"wait"`` for room, or ``"error"``: fail with ``ERR_RING_FULL``),
    ``write_timeout`` (seconds; ``ERR_TIMEOUT`` when waiting longer for room), ``max_readers``,
    ``metadata`` (sent with STREAM_OPEN), ``attach_timeout`` (seconds for a consumer's ACK).
    """

    _next_stream_id = 1

    def __init__(
        self,
        schema: pa.Schema,
        *,
        capacity_bytes: int = DEFAULT_CAPACITY,
        max_messages: Optional[int] = None,
        on_full: str = "wait",
        write_timeout: Optional[float] = None,
        max_readers: int = MAX_READERS,
        metadata: Optional[Dict[str, str]] = None,
        attach_timeout: float = 5.0,
    ) -> None:
        check_capacity(capacity_bytes)
        if not 1 <= max_readers <= MAX_READERS:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"max_readers must be 1..{MAX_READERS}, got {max_readers}")
        if max_messages is not None and max_messages < 1:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"max_messages must be at least 1, got {max_messages}")
        if on_full not in ("wait", "error"):
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"on_full must be 'wait' or 'error', got {on_full!r}")
        self.schema = schema
        self.capacity = capacity_bytes
        self._max_messages = max_messages
        self._on_full = on_full
        self._write_timeout = write_timeout
        self._max_readers = max_readers
        self._metadata = dict(metadata or {})
        self._attach_timeout = attach_timeout
        self.stream_id = RingProducer._next_stream_id
        RingProducer._next_stream_id += 1
        self._readers: Dict[int, _Attached] = {}
        self._write_position = 0
        self._sequence = 0
        self._unreleased: Deque[int] = deque()
        self._dictionaries: List[tuple[int, bytes]] = []
        self._unsent_dictionaries = b""
        self._ended = self._closed = False
        self._sink = _Capture()
        self._has_dictionaries = any(pa.types.is_dictionary(f.type) for f in _leaf_types(schema))
        self._writer = pa.ipc.new_stream(self._sink, schema, options=pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True))
        # pyarrow's writer emits the Schema with the first batch (it is dropped there); joiners
        # before that need it now.
        self._schema_bytes = schema.serialize().to_pybytes()
        self._schema_pending = True
        self._ring_fd = os.memfd_create("arrow-shm-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self._map: Optional[mmap.mmap] = None
        self._space_fd = -1
        try:
            os.ftruncate(self._ring_fd, RING_HEADER_BYTES + capacity_bytes)
            fcntl.fcntl(self._ring_fd, F_ADD_SEALS, RING_SEALS)
            self._map = mmap.mmap(self._ring_fd, RING_HEADER_BYTES + capacity_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            whole = memoryview(self._map)
            self._header = _RingHeader(whole[:RING_HEADER_BYTES])
            self._data = whole[RING_HEADER_BYTES:]
            whole.release()
            self._header.init(capacity_bytes, max_readers)
            self._space_fd = _eventfd()
        except OSError as e:
            self.close()
            raise syscall_error("memfd ring", e) from None
        except BaseException:
            self.close()
            raise

    @property
    def readers(self) -> int:
        """Consumers attached right now."""
        return sum(1 for r in self._readers.values() if r.attached)

    @property
    def closed(self) -> bool:
        return self._closed

    def attach(self, channel: "Channel", correlation_id: int = 0) -> None:
        """Attach ``channel`` as a consumer (§12.4 step 2); returns once it ACKed the STREAM_OPEN."""
        if self._closed or self._ended:
            raise ArrowShmError(ERR_CLOSED, "the stream has ended")
        if "stream" not in channel.peer_capabilities:
            raise ArrowShmError(ERR_PROTOCOL, f"the peer ({channel.peer_implementation}) does not accept streams")
        slot = next((i for i in range(self._max_readers) if i not in self._readers), -1)
        if slot < 0:
            raise ArrowShmError(ERR_NO_READER_SLOT, f"all {self._max_readers} reader slots of the stream are taken")
        prologue = self._schema_bytes + b"".join(m for _, m in self._dictionaries)
        reader = _Attached(slot, channel, _eventfd())
        self._readers[slot] = reader
        header = self._header
        header.set_read_position(slot, self._write_position)
        header.u32[_SlotField.waiting(slot)] = 0
        header.u32[_SlotField.pid(slot)] = max(channel.peer_pid, 0)
        header.u32[_SlotField.state(slot)] = 1
        metadata = dict(self._metadata)
        metadata.update(
            stream_id=str(self.stream_id),
            reader_slot=str(slot),
            start_position=str(self._write_position),
            capacity=str(self.capacity),
        )
        try:
            with Segment.create(len(prologue), "arrow-shm-prologue") as segment:
                segment.write_at(0, prologue)
                segment.seal()
                frame = Frame(kind=Kind.STREAM_OPEN, correlation_id=correlation_id, ipc_length=len(prologue), metadata=metadata)
                channel._send_and_wait_ack(frame, [self._ring_fd, segment.fd, reader.data_fd, self._space_fd], self._attach_timeout)
        except BaseException:
            self._detach(slot)
            raise
        reader.attached = True

    def _detach(self, slot: int) -> None:
        reader = self._readers.pop(slot, None)
        if reader is None:
            return
        if not self._closed:
            self._header.u32[_SlotField.state(slot)] = 0
        _close_fd(reader.data_fd)

    def _detach_departed(self) -> None:
        for reader in list(self._readers.values()):
            if reader.channel._failure is not None:
                self._detach(reader.slot)

    def write(self, data: Any) -> None:
        """Append every batch of ``data`` (Table, RecordBatch or batches), in order."""
        for batch in _batches_of(data):
            self._write_batch(batch)

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        if self._closed or self._ended:
            raise ArrowShmError(ERR_CLOSED, "the stream has ended")
        if not batch.schema.equals(self.schema):
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "the batch schema differs from the stream schema")
        self._writer.write_batch(batch)
        payload = self._sink.take()
        if self._schema_pending:
            first = walk_messages(payload, "stream")[0][0]
            payload = payload[first.end :]
            self._schema_pending = False
        # Dictionaries pyarrow emitted for a batch that then failed (ring full, timeout) were never
        # published, but pyarrow counts them as sent: they go before this batch instead.
        payload = self._unsent_dictionaries + payload
        spans = walk_messages(payload, "batches")[0] if self._has_dictionaries else []
        try:
            self._append_record(payload)
        except BaseException:
            self._unsent_dictionaries = b"".join(
                payload[s.start : s.end] for s in spans if s.header_type == HEADER_DICTIONARY_BATCH
            )
            raise
        self._unsent_dictionaries = b""
        for span in spans:
            if span.header_type == HEADER_DICTIONARY_BATCH:
                if not span.is_delta:  # a replaced dictionary's earlier messages are not needed any more
                    self._dictionaries = [d for d in self._dictionaries if d[0] != span.dictionary_id]
                self._dictionaries.append((span.dictionary_id, payload[span.start : span.end]))
        self._sequence += 1

    def _append_record(self, payload: bytes) -> None:
        """A BATCH record, or an EXTERNAL one with its own segment (§12.4 step 3)."""
        record_length = _align(RECORD_HEADER_BYTES + len(payload))
        sequence = self._sequence
        if record_length > self.capacity // 4:
            offset = self._reserve(RECORD_HEADER_BYTES)
            self._send_segment(payload, sequence)
            _RECORD_HEADER.pack_into(self._data, offset, RECORD_HEADER_BYTES, RECORD_EXTERNAL, sequence, len(payload))
            self._publish(RECORD_HEADER_BYTES, True)
        else:
            offset = self._reserve(record_length)
            start = offset + RECORD_HEADER_BYTES
            self._data[start : start + len(payload)] = payload
            _RECORD_HEADER.pack_into(self._data, offset, record_length, RECORD_BATCH, sequence, len(payload))
            self._publish(record_length, True)

    def _send_segment(self, payload: bytes, sequence: int) -> None:
        """A record too big for the ring: its own sealed segment, schema first (§12.1)."""
        schema = self._schema_bytes
        with Segment.create(len(schema) + len(payload), "arrow-shm-stream-segment") as segment:
            segment.write_at(0, schema)
            segment.write_at(len(schema), payload)
            segment.seal()
            for reader in list(self._readers.values()):
                frame = Frame(
                    kind=Kind.STREAM_SEGMENT,
                    ipc_offset=len(schema),
                    ipc_length=len(payload),
                    metadata={"stream_id": str(self.stream_id), "sequence": str(sequence)},
                )
                try:
                    reader.channel._send_frame(frame, fds=[segment.fd])
                except ArrowShmError:
                    self._detach(reader.slot)

    def _publish(self, advance: int, counted: bool) -> None:
        """Make ``advance`` more bytes visible and wake sleeping readers (§12.3)."""
        self._write_position += advance
        self._header.write_position = self._write_position
        if counted:
            self._unreleased.append(self._write_position)
        for reader in self._readers.values():
            self._header.wake_if_waiting(_SlotField.waiting(reader.slot), reader.data_fd)

    def _oldest_held(self) -> int:
        """The lowest position an attached reader still holds (clamped: a reader cannot claim more)."""
        oldest = self._write_position
        for reader in self._readers.values():
            position = min(max(self._header.read_position(reader.slot), self._write_position - self.capacity), self._write_position)
            oldest = min(oldest, position)
        while self._unreleased and self._unreleased[0] <= oldest:
            self._unreleased.popleft()
        return oldest

    def _fits(self, needed: int) -> bool:
        self._detach_departed()
        if self.capacity - (self._write_position - self._oldest_held()) < needed:
            return False
        return self._max_messages is None or len(self._unreleased) < self._max_messages

    def _reserve(self, length: int, wait: bool = False) -> int:
        """Room for ``length`` contiguous bytes: their data offset (padding to the end first if
        needed). Waits for room if ``on_full`` is "wait" or ``wait`` (the END record always waits)."""
        deadline = None if self._write_timeout is None else time.monotonic() + self._write_timeout
        while True:
            self._check_readers()
            offset = self._write_position % self.capacity
            tail = self.capacity - offset
            needed = length if length <= tail else tail + length
            if self._fits(needed):
                if length > tail:
                    _RECORD_HEADER.pack_into(self._data, offset, tail, RECORD_PADDING, 0, 0)
                    self._publish(tail, False)
                    return 0
                return offset
            if self._on_full == "error" and not wait:
                if self._max_messages is not None and len(self._unreleased) >= self._max_messages:
                    raise ArrowShmError(ERR_RING_FULL, f"{len(self._unreleased)} records are not released yet (max_messages {self._max_messages})")
                held = self._write_position - self._oldest_held()
                raise ArrowShmError(ERR_RING_FULL, f"the ring has no room for a {length}-byte record ({self.capacity} bytes, {held} held by readers)")
            if deadline is not None and time.monotonic() >= deadline:
                raise ArrowShmError(ERR_TIMEOUT, f"no room in the ring within {self._write_timeout} s")
            self._sleep(lambda: self._fits(needed), deadline)

    def _check_readers(self) -> None:
        """Hook: a channel stream fails once its one reader left."""

    def _sleep(self, ready: Callable[[], bool], deadline: Optional[float]) -> None:
        channels = [r.channel for r in self._readers.values()]
        self._header.u32[_I_PRODUCER_WAITING] = 1
        _fence()
        try:
            if ready():
                return
            remaining = SLEEP_BOUND if deadline is None else min(SLEEP_BOUND, max(0.0, deadline - time.monotonic()))
            _wait_any(channels, [self._space_fd], remaining)
            _eventfd_drain(self._space_fd)
        finally:
            self._header.u32[_I_PRODUCER_WAITING] = 0

    def end(self, *, timeout: Optional[float] = None) -> None:
        """Publish the END record, then wait until every reader released everything or left."""
        if self._closed:
            raise ArrowShmError(ERR_CLOSED, "the stream is closed")
        if not self._ended:
            offset = self._reserve(RECORD_HEADER_BYTES, wait=True)
            _RECORD_HEADER.pack_into(self._data, offset, RECORD_HEADER_BYTES, RECORD_END, self._sequence, 0)
            self._ended = True
            self._header.u32[_I_ENDED] = 1
            self._publish(RECORD_HEADER_BYTES, False)
        deadline = None if timeout is None else time.monotonic() + timeout

        def drained() -> bool:
            self._detach_departed()
            return self._oldest_held() >= self._write_position

        while not drained():
            if deadline is not None and time.monotonic() >= deadline:
                raise ArrowShmError(ERR_TIMEOUT, f"the readers did not release every record within {timeout} s")
            self._sleep(drained, deadline)

    def close(self) -> None:
        """Free the ring, the eventfds and every reader slot."""
        if self._closed:
            return
        self._closed = True
        for slot in list(self._readers):
            self._detach(slot)
        header = getattr(self, "_header", None)
        if header is not None:
            header.release()
        data = getattr(self, "_data", None)
        if data is not None:
            data.release()
        if self._map is not None:
            close_mapping(self._map)
            self._map = None
        if self._space_fd >= 0:
            _close_fd(self._space_fd)
            self._space_fd = -1
        if self._ring_fd >= 0:
            _close_fd(self._ring_fd)
            self._ring_fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _leaf_types(schema: pa.Schema) -> Iterator[pa.Field]:
    stack = list(schema)
    while stack:
        field = stack.pop()
        yield field
        t = field.type
        if pa.types.is_dictionary(t):
            stack.append(pa.field("values", t.value_type))
        for i in range(getattr(t, "num_fields", 0) or 0):
            stack.append(t.field(i))


class _ChannelRingProducer(RingProducer):
    """A stream on one channel: it fails once its one reader left. A writer that never waits would
    never read the socket, so it looks (one poll) at most every SOCKET_CHECK_INTERVAL: a busy
    stream still makes no system call per batch."""

    _next_socket_check = 0.0

    def _check_readers(self) -> None:
        now = time.monotonic()
        if now >= self._next_socket_check:
            self._next_socket_check = now + SOCKET_CHECK_INTERVAL
            for reader in list(self._readers.values()):
                _wait_any([reader.channel], [], 0)
        self._detach_departed()
        if not self._readers:
            raise ArrowShmError(ERR_PEER_CLOSED, "the reader left the stream")


class StreamWriter:
    """The writing end of a stream opened on a channel (:meth:`Channel.open_stream`). A context
    manager: a clean exit ends the stream and waits for the reader, an exception aborts it."""

    def __init__(self, producer: RingProducer, channel: "Channel") -> None:
        self._producer = producer
        self._channel = channel

    @property
    def schema(self) -> pa.Schema:
        return self._producer.schema

    def write(self, data: Any) -> None:
        """Append the batches of ``data``; returns once they are in the ring (waiting for room per ``on_full``)."""
        self._producer.write(data)

    def close(self, *, timeout: Optional[float] = None) -> None:
        """End the stream, wait until the reader released every batch (or left), free the ring."""
        if self._producer.closed:
            return
        try:
            self._producer.end(timeout=timeout)
        finally:
            self._producer.close()

    def abort(self) -> None:
        """Free the ring at once, without an END record, and close the channel."""
        self._producer.close()
        self._channel.close()

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_stream(channel: "Channel", schema: pa.Schema, **options: Any) -> StreamWriter:
    options.setdefault("max_readers", 1)
    producer = _ChannelRingProducer(schema, **options)
    try:
        producer.attach(channel)
    except BaseException:
        producer.close()
        raise
    return StreamWriter(producer, channel)


class Publication:
    """One producer, any number of subscribers (up to 62) joining at any time (§12.4). Each batch
    is in the ring once, whatever the number of subscribers. Subscribers are admitted between
    writes and while :meth:`wait_for_subscribers` waits. A context manager."""

    def __init__(self, address: str, schema: pa.Schema, *, subscribe_timeout: float = 5.0, **options: Any) -> None:
        from .channel import listen

        self._producer = RingProducer(schema, **options)
        try:
            self._listener = listen(address)
        except BaseException:
            self._producer.close()
            raise
        self.address = address
        self._subscribe_timeout = subscribe_timeout
        self._channels: List["Channel"] = []
        self._closed = False

    @property
    def schema(self) -> pa.Schema:
        return self._producer.schema

    @property
    def subscribers(self) -> int:
        """Subscribers attached right now."""
        self._producer._detach_departed()
        return self._producer.readers

    def _admit(self, timeout: float) -> bool:
        """Accept one connection waiting (up to ``timeout`` s) and attach it on its SUBSCRIBE."""
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            return False
        try:
            channel = self._listener.accept(timeout=self._subscribe_timeout)
        except ArrowShmError:
            return True  # a bad or vanished connector: it got its ERROR, the publication goes on
        self._channels.append(channel)
        channel._accept_subscribe = True
        try:
            channel._wait(lambda: bool(channel._subscribe_requests), time.monotonic() + self._subscribe_timeout, "SUBSCRIBE")
            frame = channel._subscribe_requests.popleft()
        except ArrowShmError:
            channel.close()
            return True
        try:
            self._producer.attach(channel, frame.message_id)
        except ArrowShmError as e:
            channel._send_error_quietly(e, frame.message_id)
            channel.close()
        return True

    def _admit_waiting(self) -> None:
        while self._admit(0):
            pass
        self._channels = [c for c in self._channels if not c.closed]

    def wait_for_subscribers(self, count: int, *, timeout: Optional[float] = None) -> None:
        """Return once at least ``count`` subscribers are attached (``ERR_TIMEOUT`` after ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.subscribers < count:
            if self._closed:
                raise ArrowShmError(ERR_CLOSED, "the publication is closed")
            remaining = SLEEP_BOUND * 5 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise ArrowShmError(ERR_TIMEOUT, f"fewer than {count} subscribers within {timeout} s")
            self._admit(min(remaining, 0.1))

    def write(self, data: Any) -> None:
        """Publish the batches of ``data`` to every subscriber (waiting for slow ones per ``on_full``)."""
        if self._closed:
            raise ArrowShmError(ERR_CLOSED, "the publication is closed")
        self._admit_waiting()
        self._producer.write(data)

    def close(self, *, timeout: Optional[float] = None) -> None:
        """End the publication: the END record, then wait until every subscriber released everything or left."""
        if self._closed:
            return
        self._listener.close()
        try:
            self._producer.end(timeout=timeout)
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop at once: subscribers see their connection close before an END record."""
        self._closed = True
        self._listener.close()
        self._producer.close()
        for channel in self._channels:
            channel.close()
        self._channels.clear()

    def __enter__(self) -> "Publication":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def publish(address: str, schema: pa.Schema, **options: Any) -> Publication:
    """Publish a stream of ``schema`` at ``address`` (a listening socket)."""
    return Publication(address, schema, **options)


def subscribe(
    address: str, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None, **channel_options: Any
) -> StreamReader:
    """Connect to a publication and subscribe; the connection closes with the reader."""
    from .channel import connect

    channel = connect(address, timeout=timeout, **channel_options)
    try:
        reader = channel.subscribe(metadata, timeout=timeout)
    except BaseException:
        channel.close()
        raise
    reader.owns_channel = True
    return reader
