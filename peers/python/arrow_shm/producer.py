"""The producing end of a stream (PROTOCOL.md §12): a :class:`RingProducer` owns a ring and writes
batches into it for one (:meth:`StreamWriter.open`, on a channel) or many (a publication) consumers."""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple, TypeVar, Union

import pyarrow as pa

from .errors import (
    ERR_CLOSED,
    ERR_INVALID_ARGUMENT,
    ERR_NO_READER_SLOT,
    ERR_PEER_CLOSED,
    ERR_PROTOCOL,
    ERR_RING_FULL,
    ERR_TIMEOUT,
    ArrowShmError,
    syscall_error,
)
from .frame import Frame, Kind
from .ipc import HEADER_DICTIONARY_BATCH, PipeFile, walk_messages
from .message import close_mapping
from .ring import (
    DEFAULT_CAPACITY,
    MAX_READERS,
    PRODUCER_FLAG,
    Placement,
    RECORD_BATCH,
    RECORD_END,
    RECORD_EXTERNAL,
    RECORD_HEADER_BYTES,
    RECORD_PADDING,
    RING_HEADER_BYTES,
    RING_SEALS,
    RingHeader,
    align_record,
    check_capacity,
    check_spin_micros,
    eventfd,
    eventfd_drain,
    place_record,
    ring_offset,
    sleep_on,
    spin_until,
    write_record_header,
)
from .segment import F_ADD_SEALS, MADV_POPULATE_WRITE, Closing, Segment, close_fds, populate
from .stream_link import StreamLink, Waiter
from .stream_plan import has_dictionaries

if TYPE_CHECKING:  # pragma: no cover
    from .channel import Channel

_E = TypeVar("_E", bound="EndOnExit")

#: How often a writer that does not sleep looks at its reader's socket for a hang-up (seconds).
SOCKET_CHECK_INTERVAL = 0.01

#: How often end() looks whether the readers released everything (seconds).
DRAIN_POLL = 0.001

#: Batches with at most this many buffer bytes are serialized, then copied into the ring: cheaper
#: than positioning the in-place writer and measuring the batch first (~0.6 µs), while the second
#: copy of so few bytes costs less than that.
SMALL_BATCH_BYTES = 4096

#: A record that would end past max(WARM_BYTES, WARM_RECORDS × its length) goes back to the ring's
#: start through a PADDING record when the start is free already (§12.2): readers that keep up then
#: see a few cache-warm records instead of the whole ring (the Rust and C++ producers' rule).
WARM_BYTES = 256 << 10
WARM_RECORDS = 4


class _Capture(PipeFile):
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


class _RingFile:
    """pyarrow's IPC writer straight into the ring, for a stream without dictionaries (each record
    is then one RecordBatch message of a size known beforehand): one copy of each batch over
    SMALL_BATCH_BYTES. It writes through a second, seekable mapping of the ring memfd
    (``pa.memory_map``), positioned at each record. The writer emits the Schema with its first
    batch, so it is primed at creation with an empty batch, written into the data area while
    nothing is published (all of it is free)."""

    def __init__(self, ring_fd: int, schema: pa.Schema) -> None:
        self._file = pa.memory_map(f"/proc/self/fd/{ring_fd}", "r+")
        try:
            self._writer = pa.ipc.new_stream(self._file, schema)
            self._file.seek(RING_HEADER_BYTES)
            # (pa.nulls: pa.array's first call costs a fifth of a second)
            self._writer.write_batch(pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema))
        except BaseException:
            self._file.close()
            raise

    def write(self, offset: int, batch: pa.RecordBatch, size: int) -> None:
        """Write ``batch``'s message (``size`` bytes, pa.ipc.get_record_batch_size) at data ``offset``."""
        self._file.seek(RING_HEADER_BYTES + offset)
        self._writer.write_batch(batch)
        written = self._file.tell() - RING_HEADER_BYTES - offset
        if written != size:  # the same pyarrow code measures and writes: never seen
            raise ArrowShmError(ERR_PROTOCOL, f"pyarrow wrote a {written}-byte batch message, it measured {size}")

    def prefault(self) -> None:
        """Fault every page of this mapping in now (the one batches are written through)."""
        self._file.seek(0)
        whole = self._file.read_buffer(self._file.size())
        populate(whole.address, whole.size)

    def close(self) -> None:
        self._file.close()


class _Attached:
    __slots__ = ("slot", "link", "data_fd", "attached", "wake")

    def __init__(self, slot: int, link: StreamLink, data_fd: int) -> None:
        self.slot = slot
        self.link = link
        self.data_fd = data_fd
        self.attached = False
        #: Its waiting flag and data eventfd (§12.3).
        self.wake = (RingHeader.reader_flag(slot), data_fd)


def _batches_of(data: Any) -> List[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        batches: List[pa.RecordBatch] = data.to_batches()
        return batches
    if isinstance(data, pa.RecordBatch):
        return [data]
    return list(data)


class RingProducer(Closing):
    """Owns a ring (§12.2) and writes batches into it for the consumers attached to it.

    Options: ``capacity_bytes`` (a power of two, default 16 MiB; batches over a quarter of it go
    through their own segment), ``max_messages`` (most records not yet released by every reader),
    ``on_full`` (``"wait"`` for room, or ``"error"``: fail with ``ERR_RING_FULL``),
    ``write_timeout`` (seconds; ``ERR_TIMEOUT`` when waiting longer for room), ``max_readers``,
    ``metadata`` (sent with STREAM_OPEN), ``attach_timeout`` (seconds for a consumer's ACK),
    ``spin_micros`` (how long a write waiting for room polls the readers' positions before it sleeps),
    ``prefault`` (fault the ring's pages in at creation, about 0.4 ms per MiB of capacity, and
    commit its memory: the first lap around the ring then takes no page fault per 4 KiB).
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
        spin_micros: int = 0,
        prefault: bool = False,
    ) -> None:
        check_capacity(capacity_bytes)
        self._spin_ns = check_spin_micros(spin_micros) * 1000
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
        #: The attached readers' (waiting flag, data eventfd), for each publish's wake-up (§12.3).
        self._wakes: Tuple[Tuple[int, int], ...] = ()
        self._write_position = 0
        self._sequence = 0
        #: The end of each record not yet released by every reader (kept for max_messages only).
        self._unreleased: Deque[int] = deque()
        #: Writes up to this position fit without looking at the readers (they only move on).
        self._room_end = 0
        #: When _reserve next runs its checks (_check_readers) even if the record fits.
        self._next_check = float("inf")
        self._dictionaries: List[tuple[int, bytes]] = []
        self._unsent_dictionaries = b""
        self._ended = self._closed = False
        self._sink = _Capture()
        self._has_dictionaries = has_dictionaries(schema)
        self._ring_file: Optional[_RingFile] = None
        self._waiter = Waiter()
        # write() of many batches publishes (and wakes the readers) once, at its end.
        self._batching = False
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
            self._header = RingHeader(whole[:RING_HEADER_BYTES])
            self._data = whole[RING_HEADER_BYTES:]
            self._signed = self._data.cast("b")
            whole.release()
            self._header.init(capacity_bytes, max_readers)
            self._space_fd = eventfd()
            if not self._has_dictionaries:
                try:
                    self._ring_file = _RingFile(self._ring_fd, schema)
                except (pa.ArrowException, OSError, ValueError, TypeError):
                    pass  # (a Schema message larger than the ring) batches are serialized, then copied
            if prefault:  # through the mapping the batches are written through
                if self._ring_file is not None:
                    self._ring_file.prefault()
                else:
                    try:
                        self._map.madvise(MADV_POPULATE_WRITE)
                    except OSError:
                        pass  # a kernel before 5.14: the pages fault in on the first lap
        except OSError as e:
            self.close()
            raise syscall_error("memfd ring", e) from None
        except BaseException:
            self.close()
            raise

    @property
    def readers(self) -> int:
        """Consumers attached right now (those that left are detached first)."""
        self._detach_departed()
        return sum(1 for r in self._readers.values() if r.attached)

    @property
    def closed(self) -> bool:
        return self._closed

    def attach(self, link: StreamLink, correlation_id: int = 0) -> None:
        """Attach the peer of a channel's ``link`` as a consumer (§12.4 step 2); returns once it
        ACKed the STREAM_OPEN."""
        if self._closed or self._ended:
            raise ArrowShmError(ERR_CLOSED, "the stream has ended")
        peer = link.peer
        if "stream" not in peer.capabilities:
            raise ArrowShmError(ERR_PROTOCOL, f"the peer ({peer.implementation}) does not accept streams")
        slot = next((i for i in range(self._max_readers) if i not in self._readers), -1)
        if slot < 0:
            raise ArrowShmError(ERR_NO_READER_SLOT, f"all {self._max_readers} reader slots of the stream are taken")
        prologue = self._schema_bytes + b"".join(m for _, m in self._dictionaries)
        reader = _Attached(slot, link, eventfd())
        self._readers[slot] = reader
        self._wakes = tuple(r.wake for r in self._readers.values())
        link.producing += 1  # an open stream: the channel is never idle (§14.2)
        self._header.set_read_position(slot, self._write_position)
        self._header.set_slot(slot, state=1, pid=max(peer.pid, 0))
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
                link.send_and_wait_ack(frame, [self._ring_fd, segment.fd, reader.data_fd, self._space_fd], self._attach_timeout)
        except BaseException:
            self._detach(slot)
            raise
        reader.attached = True

    def _detach(self, slot: int) -> None:
        reader = self._readers.pop(slot, None)
        if reader is None:
            return
        self._wakes = tuple(r.wake for r in self._readers.values())
        reader.link.producing -= 1
        if not self._closed:
            self._header.set_slot(slot, state=0)
        close_fds((reader.data_fd,))

    def _detach_departed(self) -> None:
        for reader in list(self._readers.values()):
            if reader.link.failure is not None:
                self._detach(reader.slot)

    def write(self, data: Any) -> None:
        """Append every batch of ``data`` (Table, RecordBatch or batches), in order. Many batches
        are published together: the readers see them (and are woken) once, or whenever the
        writer must wait for room."""
        if isinstance(data, pa.RecordBatch):
            self._write_batch(data)
            return
        batches = _batches_of(data)
        if len(batches) == 1:
            self._write_batch(batches[0])
            return
        self._batching = True
        try:
            for batch in batches:
                self._write_batch(batch)
        finally:
            self._batching = False
            self._flush()

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        if self._closed or self._ended:
            raise ArrowShmError(ERR_CLOSED, "the stream has ended")
        if batch.schema is not self.schema and not batch.schema.equals(self.schema):
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "the batch schema differs from the stream schema")
        if self._ring_file is not None:
            self._write_in_place(batch)
            return
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

    def _write_in_place(self, batch: pa.RecordBatch) -> None:
        """A batch of a stream without dictionaries: its one message, measured, then written by
        pyarrow into the ring (a BATCH record), or serialized for its own segment (EXTERNAL). A
        small batch is serialized, then copied."""
        message: Optional[pa.Buffer] = None
        try:
            if batch.get_total_buffer_size() <= SMALL_BATCH_BYTES:
                message = batch.serialize()
                size = message.size
            else:
                size = pa.ipc.get_record_batch_size(batch)
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"the batch cannot be written: {e}") from None
        record_length = align_record(RECORD_HEADER_BYTES + size)
        if message is not None or record_length > self.capacity // 4:
            self._append_record(batch.serialize() if message is None else message)
        else:
            assert self._ring_file is not None
            offset = self._reserve(record_length)
            self._ring_file.write(offset + RECORD_HEADER_BYTES, batch, size)
            write_record_header(self._data, offset, record_length, RECORD_BATCH, self._sequence, size)
            self._publish(record_length, True)
        self._sequence += 1

    def _append_record(self, payload: Union[bytes, pa.Buffer]) -> None:
        """A BATCH record, or an EXTERNAL one with its own segment (§12.4 step 3)."""
        record_length = align_record(RECORD_HEADER_BYTES + len(payload))
        sequence = self._sequence
        if record_length > self.capacity // 4:
            offset = self._reserve(RECORD_HEADER_BYTES)
            self._send_segment(payload, sequence)
            write_record_header(self._data, offset, RECORD_HEADER_BYTES, RECORD_EXTERNAL, sequence, len(payload))
            self._publish(RECORD_HEADER_BYTES, True)
        else:
            offset = self._reserve(record_length)
            start = offset + RECORD_HEADER_BYTES
            # (memoryviews copy between equal formats only: a pyarrow Buffer's is "b", bytes' "B")
            target = self._data if isinstance(payload, bytes) else self._signed
            target[start : start + len(payload)] = payload
            write_record_header(self._data, offset, record_length, RECORD_BATCH, sequence, len(payload))
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
                    reader.link.send_frame(frame, [segment.fd])
                except ArrowShmError:
                    self._detach(reader.slot)

    def _publish(self, advance: int, counted: bool) -> None:
        """Make ``advance`` more bytes visible and wake sleeping readers (§12.3): now, or at the
        end of a write() of many batches."""
        self._write_position += advance
        if counted and self._max_messages is not None:
            self._unreleased.append(self._write_position)
        if not self._batching:
            self._flush()

    def _flush(self) -> None:
        """Store the write position (if it moved) and wake sleeping readers."""
        header = self._header
        if self._closed or header.write_position == self._write_position:
            return
        header.write_position = self._write_position
        header.wake_waiting(self._wakes)

    def _oldest_held(self) -> int:
        """The lowest position an attached reader still holds (clamped: a reader cannot claim more)."""
        oldest = self._write_position
        for reader in self._readers.values():
            position = min(max(self._header.read_position(reader.slot), self._write_position - self.capacity), self._write_position)
            oldest = min(oldest, position)
        while self._unreleased and self._unreleased[0] <= oldest:
            self._unreleased.popleft()
        self._room_end = oldest + self.capacity
        return oldest

    def _fits(self, needed: int) -> bool:
        self._detach_departed()
        if self.capacity - (self._write_position - self._oldest_held()) < needed:
            return False
        return self._max_messages is None or len(self._unreleased) < self._max_messages

    def _reserve(self, length: int, wait: bool = False) -> int:
        """Room for ``length`` contiguous bytes: their data offset (padding to the end first if
        needed). Waits for room if ``on_full`` is "wait" or ``wait`` (the END record always waits)."""
        position = self._write_position
        offset = ring_offset(position, self.capacity)
        if (
            position + length <= self._room_end
            and length <= self.capacity - offset
            and offset + length <= max(WARM_BYTES, WARM_RECORDS * length)
            and self._max_messages is None
            and time.monotonic() < self._next_check
        ):
            return offset  # the common case: room known from the last look at the readers
        deadline = None if self._write_timeout is None else time.monotonic() + self._write_timeout
        while True:
            self._check_readers()
            offset, padding = self._place(length)
            needed = padding + length
            if self._fits(needed):
                if padding:
                    write_record_header(self._data, ring_offset(self._write_position, self.capacity), padding, RECORD_PADDING)
                    self._publish(padding, False)
                return offset
            if self._on_full == "error" and not wait:
                if self._max_messages is not None and len(self._unreleased) >= self._max_messages:
                    raise ArrowShmError(ERR_RING_FULL, f"{len(self._unreleased)} records are not released yet (max_messages {self._max_messages})")
                held = self._write_position - self._oldest_held()
                raise ArrowShmError(ERR_RING_FULL, f"the ring has no room for a {length}-byte record ({self.capacity} bytes, {held} held by readers)")
            if deadline is not None and time.monotonic() >= deadline:
                raise ArrowShmError(ERR_TIMEOUT, f"no room in the ring within {self._write_timeout} s")
            self._flush()  # what a write() of many batches wrote so far: the readers can release it
            if self._spin_ns and spin_until(lambda: self._fits(needed), self._spin_ns, deadline):
                continue
            self._sleep(lambda: self._fits(needed), deadline)

    def _place(self, length: int) -> Placement:
        """§12.2's place for a record, or back at offset 0 when it would end past the warm part of
        the ring and the start is free already (WARM_BYTES)."""
        offset, padding = place_record(self._write_position, length, self.capacity)
        tail = self.capacity - offset
        warm = max(WARM_BYTES, WARM_RECORDS * length)
        # (A PADDING record's length is a u32.)
        if padding == 0 and offset > 0 and offset + length > warm and tail <= 0xFFFFFFFF and self._fits(tail + length):
            return Placement(0, tail)
        return Placement(offset, padding)

    def _check_readers(self) -> None:
        """Hook: a channel stream fails once its one reader left."""

    def _sleep(self, ready: Callable[[], bool], deadline: Optional[float]) -> None:
        sleep_on(self._header, PRODUCER_FLAG, ready, deadline, self._wait_space)

    def _wait_space(self, seconds: float) -> None:
        """Sleep on the space eventfd, serving the readers' sockets (hang-ups, ACKs)."""
        self._waiter.wait([r.link for r in self._readers.values()], [self._space_fd], seconds)
        eventfd_drain(self._space_fd)

    def end(self, *, timeout: Optional[float] = None) -> None:
        """Publish the END record, then wait until every reader released everything or left."""
        if self._closed:
            raise ArrowShmError(ERR_CLOSED, "the stream is closed")
        if not self._ended:
            offset = self._reserve(RECORD_HEADER_BYTES, wait=True)
            write_record_header(self._data, offset, RECORD_HEADER_BYTES, RECORD_END, self._sequence)
            self._ended = True
            self._header.mark_ended()
            self._publish(RECORD_HEADER_BYTES, False)
        deadline = None if timeout is None else time.monotonic() + timeout

        def drained() -> bool:
            self._detach_departed()
            return self._oldest_held() >= self._write_position

        while not drained():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ArrowShmError(ERR_TIMEOUT, f"the readers did not release every record within {timeout} s")
            # Polled, without raising the waiting flag (§12.3 lets a waiter bound its sleep): readers
            # draining a long backlog then release without an eventfd write per record.
            seconds = DRAIN_POLL if deadline is None else min(DRAIN_POLL, deadline - now)
            self._waiter.wait([r.link for r in self._readers.values()], [], seconds)

    def close(self) -> None:
        """Free the ring, the eventfds and every reader slot."""
        if self._closed:
            return
        self._closed = True
        for slot in list(self._readers):
            self._detach(slot)
        ring_file = getattr(self, "_ring_file", None)
        if ring_file is not None:
            ring_file.close()
            self._ring_file = None
        header = getattr(self, "_header", None)
        if header is not None:
            header.release()
        for name in ("_signed", "_data"):
            view = getattr(self, name, None)
            if view is not None:
                view.release()
        if self._map is not None:
            close_mapping(self._map)
            self._map = None
        close_fds((self._space_fd, self._ring_fd))
        self._space_fd = self._ring_fd = -1


class _ChannelRingProducer(RingProducer):
    """A stream on one channel: it fails once its one reader left. A writer that never waits would
    never read the socket, so it looks (one poll) at most every SOCKET_CHECK_INTERVAL: a busy
    stream still makes no system call per batch."""

    _next_socket_check = 0.0

    def _check_readers(self) -> None:
        now = time.monotonic()
        if now >= self._next_socket_check:
            self._next_check = self._next_socket_check = now + SOCKET_CHECK_INTERVAL
            for reader in list(self._readers.values()):
                self._waiter.wait([reader.link], [], 0)
        self._detach_departed()
        if not self._readers:
            raise ArrowShmError(ERR_PEER_CLOSED, "the reader left the stream")


class EndOnExit:
    """A context manager for a producing end: a clean exit closes it (END record, wait for the
    readers), an exception aborts it."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class StreamWriter(EndOnExit):
    """The writing end of a stream opened on a channel (:meth:`open`). A context manager: a clean
    exit ends the stream and waits for the reader, an exception aborts it."""

    @classmethod
    def open(cls, channel: "Channel", schema: pa.Schema, **options: Any) -> "StreamWriter":
        """Open a stream of record batches to the peer of ``channel`` (which reads it with
        :meth:`StreamReader.accept`); returns once the peer mapped the ring. Options: see
        :class:`RingProducer`."""
        options.setdefault("max_readers", 1)
        producer = _ChannelRingProducer(schema, **options)
        try:
            producer.attach(channel.stream_link)
        except BaseException:
            producer.close()
            raise
        return cls(producer, channel.stream_link)

    def __init__(self, producer: RingProducer, link: StreamLink) -> None:
        self._producer = producer
        self._link = link

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
        self._link.close()



def open_stream(channel: "Channel", schema: pa.Schema, **options: Any) -> StreamWriter:
    """:meth:`StreamWriter.open`."""
    return StreamWriter.open(channel, schema, **options)
