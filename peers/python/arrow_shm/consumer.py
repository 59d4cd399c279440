"""The consuming end of a stream (PROTOCOL.md §12): a :class:`StreamReader` maps the producer's
ring and reads each batch in place (its columns are views of the ring)."""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Callable, Deque, Dict, Iterator, List, NoReturn, Optional, Union

import pyarrow as pa

from .errors import (
    ERR_CLOSED,
    ERR_PEER_CLOSED,
    ERR_PROTOCOL,
    ERR_RING_INVALID,
    ERR_SEGMENT_INVALID,
    ERR_SEGMENT_UNSEALED,
    ERR_TIMEOUT,
    ArrowShmError,
    syscall_error,
)
from .frame import Frame, Kind, error_frame
from .ipc import (
    DEFAULT_VALIDATE,
    HEADER_DICTIONARY_BATCH,
    HEADER_RECORD_BATCH,
    PipeFile,
    batch_validator,
    check_validate,
    map_arrow_error,
    walk_messages,
)
from .limits import IpcLimits, MessageChecker
from .message import close_mapping
from .ring import (
    PRODUCER_FLAG,
    RECORD_BATCH,
    RECORD_END,
    RECORD_EXTERNAL,
    RECORD_HEADER_BYTES,
    RING_HEADER_BYTES,
    RING_SEALS,
    SLEEP_BOUND,
    RingHeader,
    check_capacity,
    check_spin_micros,
    eventfd_drain,
    read_record_header,
    ring_offset,
    sleep_on,
    spin_until,
)
from .segment import F_GET_SEALS, Closing, check_segment, close_fds, map_readonly
from .stream_link import StreamLink, Waiter
from .stream_plan import RecordPlan, has_dictionaries

if TYPE_CHECKING:  # pragma: no cover
    from .channel import Channel


class _Feed(PipeFile):
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

    __slots__ = ("batch", "sequence", "data", "_release")

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
    """A record read and not yet released; ``mapping``: its segment's (EXTERNAL records)."""

    __slots__ = ("end", "released", "mapping")

    def __init__(self, end: int, mapping: Optional[mmap.mmap] = None) -> None:
        self.end = end
        self.released = False
        self.mapping = mapping


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

class StreamReader(Closing):
    """The consuming end of a stream: ``for batch in reader`` (each batch released when the loop
    moves on) or :meth:`read` (release each :class:`StreamBatch` yourself). A context manager;
    closing before the end leaves the stream (the connection is closed).

    :meth:`accept` takes the next stream a channel's peer opens, :meth:`subscribe` asks a
    publishing peer for its stream."""

    @classmethod
    def accept(
        cls, channel: "Channel", *, timeout: Optional[float] = None, validate: Optional[str] = None, spin_micros: int = 0
    ) -> "StreamReader":
        """The next stream the peer opens on ``channel``; its batches are read in place.
        ``validate``: see :data:`arrow_shm.ipc.VALIDATE_MODES` (default: the channel's);
        ``spin_micros``: how long :meth:`read` polls the ring before it sleeps (default 0)."""
        if validate is not None:
            check_validate(validate)
        check_spin_micros(spin_micros)
        link = channel.stream_link
        frame, fds = link.next_offer(timeout)
        return cls._take_offer(link, frame, fds, validate, spin_micros)

    @classmethod
    def subscribe(
        cls,
        channel: "Channel",
        metadata: Optional[Dict[str, str]] = None,
        *,
        timeout: Optional[float] = None,
        validate: Optional[str] = None,
        spin_micros: int = 0,
    ) -> "StreamReader":
        """Ask the publishing peer of ``channel`` for its stream (SUBSCRIBE, §12.1); options as :meth:`accept`."""
        if validate is not None:
            check_validate(validate)
        check_spin_micros(spin_micros)
        link = channel.stream_link
        frame, fds = link.subscribe(metadata, timeout)
        return cls._take_offer(link, frame, fds, validate, spin_micros)

    @classmethod
    def _take_offer(
        cls, link: StreamLink, frame: Frame, fds: List[int], validate: Optional[str], spin_micros: int = 0
    ) -> "StreamReader":
        """Map an offered stream with the channel's receiving options; ACK it (or answer ERROR)."""
        if link.sink is not None:
            close_fds(fds)
            err = ArrowShmError(ERR_PROTOCOL, "a second stream while one is open on this connection")
            link.send_error(err, frame.message_id)
            raise err
        try:
            reader = cls(
                link,
                frame,
                fds,
                validate=link.validate if validate is None else validate,
                max_message_bytes=link.max_message_bytes,
                ipc_limits=link.ipc_limits,
                spin_micros=spin_micros,
            )
        except ArrowShmError as e:
            link.send_error(e, frame.message_id)
            raise
        link.sink = reader
        link.send_frame(Frame(kind=Kind.ACK, correlation_id=frame.message_id))
        return reader

    def __init__(
        self,
        link: StreamLink,
        frame: Frame,
        fds: List[int],
        *,
        validate: str = DEFAULT_VALIDATE,
        max_message_bytes: int = 2**32,
        owns_channel: bool = False,
        ipc_limits: Optional[IpcLimits] = None,
        spin_micros: int = 0,
    ) -> None:
        """Checks and maps what a STREAM_OPEN carries (§12.1, §12.2). Takes ownership of ``fds``:
        on failure everything is closed and the typed error raised."""
        self._link = link
        self._validate = validate
        self._spin_ns = 0
        self._waiter = Waiter()
        self._plan: Optional[RecordPlan] = None
        # Decoding limits (§14.1); it learns the prologue's schema, so each record's counts are checked against it.
        self._checker = MessageChecker(ipc_limits)
        self._max_message_bytes = max_message_bytes
        self.owns_channel = owns_channel
        self._closed = False
        self._ended = False
        self._header: Optional[RingHeader] = None
        self._header_map: Optional[mmap.mmap] = None
        self._data_map: Optional[mmap.mmap] = None
        self._data: Optional[memoryview] = None
        self._prologue_map: Optional[mmap.mmap] = None
        self._prologue: Optional[memoryview] = None
        self._data_fd = self._space_fd = -1
        self._held: Deque[_Held] = deque()
        self._segments: Dict[int, Union[tuple[mmap.mmap, int, int], ArrowShmError]] = {}
        self._feed = _Feed()
        self.batches_read = 0
        try:
            self._spin_ns = check_spin_micros(spin_micros) * 1000
            self._open(frame, fds)
        except BaseException:
            close_fds(fds)
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
        header = self._header = RingHeader(memoryview(self._header_map))
        header.check(capacity, self._slot)
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
        spans, _ = walk_messages(view, "stream", self._checker)
        if any(s.header_type == HEADER_RECORD_BATCH for s in spans):
            raise ArrowShmError(ERR_RING_INVALID, "the stream prologue holds a RecordBatch")
        self._prologue = view
        for s in spans:
            self._feed.push(view[s.start : s.end])
        try:
            self._reader = pa.ipc.open_stream(self._feed)
        except (pa.ArrowException, EOFError, ValueError, OSError, TypeError) as e:
            raise map_arrow_error(e) from None
        self.schema: pa.Schema = self._reader.schema
        self._check_batch = batch_validator(self.schema, self._validate)
        if not has_dictionaries(self.schema):  # records are single messages: decoded one by one, planned
            self._plan = RecordPlan()
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
        deadline = None
        while True:
            if self._closed:
                raise ArrowShmError(ERR_CLOSED, "the stream reader is closed")
            if self._ended:
                return None
            # The header is loaded again only once this reader caught up with what it saw published.
            write_position = self._published if self._published > self._position else self._load_write_position()
            if write_position > self._position:
                batch = self._read_record(write_position)
                if batch is not None:
                    return batch
                continue
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            gone = self._peer_gone()
            if gone is not None:
                raise gone
            if deadline is not None and time.monotonic() >= deadline:
                raise ArrowShmError(ERR_TIMEOUT, f"no batch within {timeout} s")
            assert self._header is not None
            if self._spin_ns and spin_until(self._published_past, self._spin_ns, deadline):
                continue
            sleep_on(
                self._header,
                RingHeader.reader_flag(self._slot),
                lambda: self._published_past() or self._link.failure is not None,
                deadline,
                self._wait_data,
            )

    def _published_past(self) -> bool:
        """A record was published past this reader's position."""
        return self._header is not None and self._header.write_position > self._position

    def _wait_data(self, seconds: float) -> None:
        """Sleep on the data eventfd, serving the socket (a hang-up, a STREAM_SEGMENT)."""
        self._waiter.wait([self._link], [self._data_fd], seconds)
        eventfd_drain(self._data_fd)

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
        failure = self._link.failure
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

    def _read_record(self, write_position: int) -> Optional[StreamBatch]:
        data = self._data
        assert data is not None
        position = self._position
        offset = ring_offset(position, self._capacity)
        try:
            length, kind, sequence, ipc_length = read_record_header(data, offset, self._capacity, write_position - position)
        except ArrowShmError as e:
            self._broken(e)
        self._position = position + length
        if kind == RECORD_BATCH:
            held = _Held(position + length)
            self._held.append(held)
            start = offset + RECORD_HEADER_BYTES
            return self._decode(data[start : start + ipc_length], sequence, held)
        segment = self._wait_segment(sequence) if kind == RECORD_EXTERNAL else None
        held = _Held(position + length, segment[0] if isinstance(segment, tuple) else None)
        self._held.append(held)
        if not isinstance(segment, tuple):  # PADDING, END, or a segment that did not come
            self._ended = kind == RECORD_END
            self._release(held)
            if segment is not None:
                raise segment
            return None
        mapping, seg_offset, seg_length = segment
        return self._decode(memoryview(mapping)[seg_offset : seg_offset + seg_length], sequence, held)

    def _decode(self, data: memoryview, sequence: int, held: _Held) -> StreamBatch:
        plan = self._plan
        try:
            end = plan.match(data) if plan is not None else None
            try:
                if end is not None:  # checked by the plan: one RecordBatch message
                    batch = pa.ipc.read_record_batch(pa.py_buffer(data if end == len(data) else data[:end]), self.schema)
                else:
                    batch = self._walk_and_read(data)
                self._check_batch(batch)
            except StopIteration:
                raise ArrowShmError(ERR_RING_INVALID, "a stream record without a RecordBatch") from None
            except (pa.ArrowException, EOFError, ValueError, OSError, TypeError, IndexError, OverflowError) as e:
                raise map_arrow_error(e) from None
        except ArrowShmError:
            self._feed.clear()
            self._release(held)
            raise
        self.batches_read += 1
        return StreamBatch(batch, sequence, data, partial(self._release, held))

    def _walk_and_read(self, data: memoryview) -> pa.RecordBatch:
        """The generic path: walk the record's messages, feed them to pyarrow's stream reader."""
        spans, _ = walk_messages(data, "batches", self._checker)
        if self._plan is not None:
            self._plan.learn(data)  # a dictionary-free record: one RecordBatch message, just verified
        for s in spans:
            # Dictionaries outlive their record (later batches use them): copy them out of the ring.
            self._feed.push(bytes(data[s.start : s.end]) if s.header_type == HEADER_DICTIONARY_BATCH else data[s.start : s.end])
        batch: pa.RecordBatch = self._reader.read_next_batch()
        return batch

    def _release(self, held: _Held) -> None:
        """A batch's release: its segment is unmapped, the leading run of released records published."""
        held.released = True
        if held.mapping is not None:
            close_mapping(held.mapping)
            held.mapping = None
        if self._held and self._held[0] is held:  # (else an earlier record still holds the ring)
            self._release_leading()

    def _release_leading(self) -> None:
        """Publish the end of the leading run of released records; wake a waiting producer."""
        queue = self._held
        if not queue or not queue[0].released:
            return
        while queue and queue[0].released:
            self._read_position = queue.popleft().end
        header = self._header
        if self._closed or header is None:
            return
        header.set_read_position(self._slot, self._read_position)
        # After every release (§12.3): a producer may sleep without a bound (Node's does), and this
        # reader cannot know how much room it waits for.
        header.wake_if_waiting(PRODUCER_FLAG, self._space_fd)

    def _wait_segment(self, sequence: int) -> Union[tuple[mmap.mmap, int, int], ArrowShmError]:
        """The segment of an EXTERNAL record: the producer sent it before publishing the record."""
        while True:
            segment = self._segments.pop(sequence, None)
            if segment is not None:
                return segment
            gone = self._peer_gone()
            if gone is not None:
                return gone
            self._waiter.wait([self._link], [self._data_fd], SLEEP_BOUND)

    def on_segment(self, frame: Frame, fds: List[int], outbox: List[Frame]) -> None:
        """A STREAM_SEGMENT for this stream (from the link, under the channel's lock)."""
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
            outbox.append(error_frame(e.code, e.message, frame.message_id))
        finally:
            close_fds(fds)
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
        self._link.send_error(error, 0)
        self.close()
        raise error

    def close(self) -> None:
        """Unmap the ring and close the eventfds. Leaving before the end closes the channel, which
        is how a consumer tells the producer it left (§12.1)."""
        if self._closed:
            return
        self._closed = True
        if self._link.sink is self:
            self._link.sink = None
        if not self._ended or self.owns_channel:
            self._link.close()
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
        close_fds((self._data_fd, self._space_fd))
        self._data_fd = self._space_fd = -1

