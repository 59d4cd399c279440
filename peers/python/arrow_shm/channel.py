"""Connections: connect, handshake, TABLE/ACK/RELEASE/ERROR/GOODBYE (PROTOCOL.md §2-§8). Listening
is in listener.py, sockets in sockets.py; streams (§12) run on a channel's :class:`StreamLink`."""

from __future__ import annotations

import array
import errno as _errno
import mmap
import os
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, Optional, Sequence, Set, Union

import pyarrow as pa

from .errors import (
    CODES,
    ERR_CLOSED,
    ERR_INVALID_ARGUMENT,
    ERR_PEER_CLOSED,
    ERR_PEER_CREDENTIALS,
    ERR_PROTOCOL,
    ERR_PROTOCOL_VERSION,
    ERR_REMOTE,
    ERR_SEGMENT_UNSEALED,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    FATAL_CODES,
    ArrowShmError,
    syscall_error,
)
from .frame import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Flags,
    Frame,
    Kind,
    decode_frame,
    encode_frame,
    error_frame,
    inline_room,
)
from .handshake import Agreement, check_hello, check_welcome, hello_metadata, welcome_metadata
from .ipc import DEFAULT_VALIDATE, check_validate
from .limits import IpcLimits, SchemaCache, resolve_ipc_limits
from .message import ReceivedTable, open_inline, open_segment
from .pool import SparePool
from .segment import DEFAULT_MAX_MESSAGE_BYTES, Segment, _batches, _write_stream, close_fds, write_table_segment
from .sockets import connect_socket, deadline_after, peer_credentials, recv_with_fds, time_left
from .stream_link import PeerInfo, StreamLink
from .trace import trace_stage

if TYPE_CHECKING:  # pragma: no cover
    from .builder import SegmentBuilder
    from .consumer import StreamReader
    from .producer import StreamWriter

#: Frame kinds that carry file descriptors.
_FD_KINDS = (Kind.TABLE, Kind.STREAM_OPEN, Kind.STREAM_SEGMENT)
#: Capabilities this peer accepts as a receiver.
CAPABILITIES = ("lease", "stream", "inline")
HANDSHAKE_TIMEOUT = 5.0
# Resource limits, PROTOCOL.md §14.2 (same names and defaults in every peer).
DEFAULT_MAX_INBOX_MESSAGES = 64
DEFAULT_MAX_INBOX_BYTES = 1024**3
DEFAULT_MAX_STREAM_OFFERS = 16
#: Streams up to this size go inside the TABLE frame when the peer listed `inline` (§5.3).
DEFAULT_MAX_INLINE_BYTES = 65536


class _Pending:
    __slots__ = ("acked", "error", "response", "request")

    def __init__(self, request: bool) -> None:
        self.acked = False
        self.error: Optional[ArrowShmError] = None
        self.response: Optional[ReceivedTable] = None
        self.request = request


def positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{name} must be a positive integer, got {value!r}")
    return value


class Channel:
    """One handshaken connection. Create with :func:`connect` or :meth:`Listener.accept`.

    Thread-safe: several threads may send, request and receive at once; whichever thread is waiting
    reads the socket and dispatches frames (ACKs for sends, responses for requests, tables for
    :meth:`receive`). Incoming TABLEs are checked (§5.1) and ACKed as soon as they are read.

    Resource limits (PROTOCOL.md §14.2), keyword options:

    - ``max_inbox_messages`` (64) and ``max_inbox_bytes`` (1 GiB, counting ``ipc_length``): received
      tables (requests and refused tables included) not yet taken by :meth:`receive`. At the bound
      this side stops reading the socket until the application takes one, so the kernel's socket
      buffer pushes back on the sender. Frames behind them wait too (the ACKs of this side's own
      sends included): keep receiving.
    - ``max_stream_offers`` (16): ``STREAM_OPEN`` offers not yet accepted; the next one is answered
      ``ERROR ERR_RESOURCE_LIMIT``.

    ``max_inline_bytes`` (65536; 0 = always a segment): a table whose IPC stream is at most this
    size and fits in one frame with its metadata goes inside the TABLE frame (§5.3), when the peer
    listed ``inline``.

    Decoding limits (§14.1): ``ipc_limits``, an :class:`IpcLimits` or a mapping of some of its
    fields (the others default), checked on every received table and stream record before pyarrow
    sees it; a table over a limit is refused with ``ERROR ERR_IPC_LIMIT``.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        listener_side: bool,
        allowed_uids: Optional[Set[int]] = None,
        allow_unsealed: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        validate: str = DEFAULT_VALIDATE,
        handshake_timeout: Optional[float] = HANDSHAKE_TIMEOUT,
        spare_segments: bool = True,
        max_inbox_messages: int = DEFAULT_MAX_INBOX_MESSAGES,
        max_inbox_bytes: int = DEFAULT_MAX_INBOX_BYTES,
        max_stream_offers: int = DEFAULT_MAX_STREAM_OFFERS,
        ipc_limits: Union[IpcLimits, Dict[str, int], None] = None,
        max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES,
    ) -> None:
        if not isinstance(max_inline_bytes, int) or max_inline_bytes < 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"max_inline_bytes must be a non-negative integer, got {max_inline_bytes!r}")
        self.max_inline_bytes = max_inline_bytes
        if max_message_bytes <= 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "max_message_bytes must be positive")
        self.max_inbox_messages = positive("max_inbox_messages", max_inbox_messages)
        self.max_inbox_bytes = positive("max_inbox_bytes", max_inbox_bytes)
        self.max_stream_offers = positive("max_stream_offers", max_stream_offers)
        self.ipc_limits = resolve_ipc_limits(ipc_limits)
        #: Schema messages of received tables already verified (a sender repeats its schema).
        self._schemas = SchemaCache()
        self._sock: Optional[socket.socket] = sock
        self._listener_side = listener_side
        self._allowed_uids = set(allowed_uids) if allowed_uids is not None else {os.geteuid()}
        self.allow_unsealed = allow_unsealed
        self.max_message_bytes = max_message_bytes
        self.validate = validate
        self.capabilities: tuple[str, ...] = CAPABILITIES
        self.version = PROTOCOL_VERSION
        self.peer_pid = self.peer_uid = self.peer_gid = -1
        self.peer_capabilities: Set[str] = set()
        self.peer_implementation = ""
        self.peer_max_message_bytes: Optional[int] = None
        self._next_id = 1
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pumping = False
        self._failure: Optional[ArrowShmError] = None
        self._incoming: Deque[Union[ReceivedTable, ArrowShmError]] = deque()
        self._incoming_bytes = 0  # ipc_length of the messages in _incoming
        #: monotonic time of the last frame sent or received (idle timeout, eviction).
        self.last_activity = time.monotonic()
        self._pending: Dict[int, _Pending] = {}
        #: The streams on this channel (§12) see it only through this link.
        self.stream_link = StreamLink(_LinkPort(self), max_offers=self.max_stream_offers)
        #: Pre-allocated segments for the next sends (pool.py); None: every send allocates as it writes.
        self._spares: Optional[SparePool] = SparePool() if spare_segments else None
        try:
            check_validate(validate)  # in here: a bad value closes the socket too
            self._check_credentials()
            self._handshake(handshake_timeout)
        except BaseException:
            self._drop_socket()
            raise

    # ------------------------------------------------------------------ set-up

    def _check_credentials(self) -> None:
        assert self._sock is not None
        self.peer_pid, self.peer_uid, self.peer_gid = peer_credentials(self._sock)
        if self.peer_uid not in self._allowed_uids:
            err = ArrowShmError(
                ERR_PEER_CREDENTIALS,
                f"peer uid {self.peer_uid} (pid {self.peer_pid}) is not allowed",
            )
            if self._listener_side:
                self._send_error_quietly(err, 0)
            raise err

    def _handshake(self, timeout: Optional[float]) -> None:
        deadline = deadline_after(timeout)
        if self._listener_side:
            frame, _ = self._read_frame(deadline, handshake=True)
            if frame.kind != Kind.HELLO:
                raise self._fatal(ArrowShmError(ERR_PROTOCOL, f"expected HELLO, got {frame.kind.name}"))
            try:
                peer = check_hello(frame.metadata)
            except ArrowShmError as e:
                raise self._fatal(e) from None
            self._take(peer)
            self._send_frame(Frame(kind=Kind.WELCOME, metadata=welcome_metadata(self.capabilities, self.max_message_bytes)))
        else:
            self._send_frame(Frame(kind=Kind.HELLO, metadata=hello_metadata(self.capabilities)))
            frame, _ = self._read_frame(deadline, handshake=True)
            if frame.kind == Kind.ERROR:
                err = self._remote_error(frame)
                self._drop_socket()
                raise err
            if frame.kind != Kind.WELCOME:
                raise self._fatal(ArrowShmError(ERR_PROTOCOL, f"expected WELCOME, got {frame.kind.name}"))
            try:
                peer = check_welcome(frame.metadata)
            except ArrowShmError as e:
                raise self._fatal(e) from None
            self._take(peer)

    def _take(self, peer: Agreement) -> None:
        self.peer_capabilities = peer.capabilities
        self.peer_implementation = peer.implementation
        self.peer_max_message_bytes = peer.max_message_bytes

    # ------------------------------------------------------------------ low level

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in poll/recvmsg on it
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    def _send_frame(
        self,
        frame: Frame,
        fd: Optional[int] = None,
        register: Optional[Callable[[int], None]] = None,
        *,
        fds: Sequence[int] = (),
        blocking: bool = True,
    ) -> int:
        """Assign the next message_id, send the frame. Returns the id.

        ``register(id)`` runs before the frame leaves (so its ACK cannot be missed). Lock order:
        the send lock, then the condition; never the other way round. ``blocking=False`` (a
        housekeeping thread closing the channel) gives up with ``ERR_TIMEOUT`` rather than wait
        for another sender or for room in a socket the peer does not read.
        """
        if not self._send_lock.acquire(timeout=-1 if blocking else 0.05):
            raise ArrowShmError(ERR_TIMEOUT, "another thread is sending")
        try:
            sock = self._sock
            if sock is None:
                raise self._failure or ArrowShmError(ERR_CLOSED, "channel is closed")
            frame.message_id = self._next_id
            frame.version = self.version
            passed = list(fds) if fd is None else [fd]
            frame.fd_count = len(passed)
            data = encode_frame(frame)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", passed))] if passed else []
            if register is not None:
                register(frame.message_id)
            try:
                sock.sendmsg([data], anc, 0 if blocking else socket.MSG_DONTWAIT)
            except (BrokenPipeError, ConnectionResetError):
                raise ArrowShmError(ERR_PEER_CLOSED, "the peer hung up") from None
            except BlockingIOError:
                raise ArrowShmError(ERR_TIMEOUT, "the peer's socket buffer is full") from None
            except OSError as e:
                if e.errno == _errno.EMSGSIZE:
                    raise ArrowShmError(ERR_INVALID_ARGUMENT, "frame too large for the socket") from None
                raise syscall_error("sendmsg", e) from None
            self._next_id += 1
            self.last_activity = time.monotonic()
            return frame.message_id
        finally:
            self._send_lock.release()

    def _send_error_quietly(self, err: ArrowShmError, correlation_id: int) -> None:
        try:
            self._send_frame(error_frame(err.code, err.message, correlation_id))
        except ArrowShmError:
            pass

    def evict(self, err: ArrowShmError, *, tell: bool = True) -> None:
        """Close from another thread (a listener's idle timeout, max_connections, end of serve()):
        ERROR ``err`` with correlation 0 (``tell=False``: GOODBYE) if the socket takes it at once,
        then close. Queued tables stay receivable; a thread waiting on the channel gets ``err``."""
        try:
            frame = error_frame(err.code, err.message, 0) if tell else Frame(kind=Kind.GOODBYE)
            self._send_frame(frame, blocking=False)
        except ArrowShmError:
            pass
        with self._cond:
            if self._failure is None:
                self._failure = err
            self._cond.notify_all()
        self._drop_socket()

    @property
    def busy(self) -> bool:
        """Something awaits an answer or a stream is open: never idle (§14.2 idle_timeout_ms)."""
        return bool(self._pending) or self.stream_link.busy

    def _inbox_full(self) -> bool:
        return len(self._incoming) >= self.max_inbox_messages or self._incoming_bytes >= self.max_inbox_bytes

    def _fatal(self, err: ArrowShmError) -> ArrowShmError:
        """A frame-level error detected here: tell the peer (correlation 0), close, remember."""
        self._send_error_quietly(err, 0)
        self._drop_socket()
        if self._failure is None:
            self._failure = err
        return err

    @staticmethod
    def _remote_error(frame: Frame) -> ArrowShmError:
        code = frame.metadata.get("code", "")
        message = frame.metadata.get("message", "")
        if code not in CODES:
            message = f"{code}: {message}" if code else message
            code = ERR_REMOTE
        return ArrowShmError(code, message or "(no message)", remote=True)

    def _read_frame(self, deadline: Optional[float], handshake: bool = False) -> tuple[Frame, list[int]]:
        """Read and decode one frame; fatal problems are reported to the peer and raised.
        Returns the frame and its fds (only a TABLE frame may carry any)."""
        sock = self._sock
        if sock is None:
            raise self._failure or ArrowShmError(ERR_CLOSED, "channel is closed")
        try:
            data, fds, msg_flags = recv_with_fds(sock, MAX_FRAME_BYTES, deadline)
        except ArrowShmError:
            if self._sock is None and self._failure is not None:
                raise self._failure from None  # closed by another thread while we waited
            raise
        if not data and not fds:
            if self._sock is None and self._failure is not None:
                raise self._failure
            self._drop_socket()
            err = ArrowShmError(ERR_PEER_CLOSED, "the peer hung up")
            if self._failure is None:
                self._failure = err
            raise err
        try:
            if msg_flags & socket.MSG_TRUNC:
                raise ArrowShmError(ERR_PROTOCOL, f"frame larger than {MAX_FRAME_BYTES} bytes")
            if msg_flags & socket.MSG_CTRUNC:
                raise ArrowShmError(ERR_PROTOCOL, "too many file descriptors attached to one frame")
            frame = decode_frame(data)
            if handshake:
                if fds:
                    raise ArrowShmError(ERR_PROTOCOL, f"{frame.kind.name} frame carries file descriptors")
            elif frame.version != self.version:
                raise ArrowShmError(
                    ERR_PROTOCOL_VERSION,
                    f"frame of protocol version {frame.version}, agreed version {self.version}",
                )
            elif frame.kind not in _FD_KINDS and fds:
                raise ArrowShmError(ERR_PROTOCOL, f"{frame.kind.name} frame carries {len(fds)} file descriptors")
        except ArrowShmError as e:
            close_fds(fds)
            raise self._fatal(e) from None
        self.last_activity = time.monotonic()
        return frame, fds

    # ------------------------------------------------------------------ dispatch

    def _wait(self, ready: Callable[[], bool], deadline: Optional[float], what: str) -> None:
        """Pump frames until ``ready()`` (checked under the lock) or the deadline."""
        while True:
            with self._cond:
                while True:
                    if ready():
                        return
                    if self._failure is not None:
                        raise self._failure
                    # A full inbox: read nothing more until the application takes a table (§14.2).
                    if not self._pumping and not self._inbox_full():
                        self._pumping = True
                        break
                    remaining = time_left(deadline)
                    if remaining == 0.0:
                        raise ArrowShmError(ERR_TIMEOUT, f"timed out waiting for {what}")
                    self._cond.wait(remaining)
            try:
                self._pump_one(deadline, what)
            finally:
                with self._cond:
                    self._pumping = False
                    self._cond.notify_all()

    def _pump_one(self, deadline: Optional[float], what: str) -> None:
        try:
            frame, fds = self._read_frame(deadline)
        except ArrowShmError as e:
            if e.code == ERR_TIMEOUT:
                raise ArrowShmError(ERR_TIMEOUT, f"timed out waiting for {what}") from None
            if e.code == ERR_PEER_CLOSED or e.code in FATAL_CODES:
                return  # self._failure is set; _wait raises it unless ready() is already true
            raise
        if frame.kind == Kind.TABLE:
            trace_stage("wake", frame.message_id)
        outbox: list[Frame] = []
        with self._cond:
            outcome = self._dispatch(frame, fds, outbox)
        # Frames are sent and the socket dropped outside the condition (lock order, see _send_frame).
        for out in outbox:
            try:
                self._send_frame(out)
            except ArrowShmError:
                pass
        if frame.kind == Kind.TABLE:
            trace_stage("ack", frame.message_id)
        if isinstance(outcome, ArrowShmError):
            self._fatal(outcome)
        elif outcome:
            self._drop_socket()

    def _dispatch(self, frame: Frame, fds: list[int], outbox: list[Frame]) -> Union[None, bool, ArrowShmError]:
        """Apply one frame to the state (under the condition). Returns a fatal error to report,
        True to close the socket, or None."""
        kind = frame.kind
        if kind == Kind.TABLE:
            return self._on_table(frame, fds, outbox)
        elif kind == Kind.ACK:
            st = self._pending.get(frame.correlation_id)
            if st is not None:
                st.acked = True
        elif kind == Kind.RELEASE:
            pass  # this peer never sends LEASED segments
        elif kind == Kind.ERROR:
            err = self._remote_error(frame)
            if frame.correlation_id == 0:
                if self._failure is None:
                    self._failure = err
                return True
            st = self._pending.get(frame.correlation_id)
            if st is not None and st.error is None:
                st.error = err
        elif kind == Kind.GOODBYE:
            if self._failure is None:
                self._failure = ArrowShmError(ERR_PEER_CLOSED, "the peer said GOODBYE")
            return True
        elif kind == Kind.STREAM_OPEN:
            self.stream_link.on_stream_open(frame, fds, outbox)
        elif kind == Kind.STREAM_SEGMENT:
            self.stream_link.on_stream_segment(frame, fds, outbox)
        elif kind == Kind.SUBSCRIBE:
            self.stream_link.on_subscribe(frame, outbox)
        else:
            return ArrowShmError(ERR_PROTOCOL, f"unexpected {kind.name} frame after the handshake")
        return None

    def _on_table(self, frame: Frame, fds: list[int], outbox: list[Frame]) -> Optional[ArrowShmError]:
        leased = bool(frame.flags & Flags.LEASED)
        error: Optional[ArrowShmError] = None
        mapping: Optional[mmap.mmap] = None
        inline: Optional[pa.Buffer] = None
        if frame.inline is not None:
            inlined = self._inline_table(frame, fds)
            if isinstance(inlined, ArrowShmError):
                error = inlined
            else:
                inline = inlined
        elif len(fds) != 1 or frame.fd_count != 1:
            # Message-level (PROTOCOL.md §5.1 step 1): refuse this TABLE, keep the connection.
            close_fds(fds)
            error = ArrowShmError(
                ERR_PROTOCOL, f"TABLE frame must carry exactly 1 fd, got {len(fds)} (fd_count {frame.fd_count})"
            )
        else:
            mapped = self._map_table(frame, fds[0], leased)
            if isinstance(mapped, ArrowShmError):
                error = mapped
            else:
                mapping = mapped
        if error is not None:
            flags = Flags.RESPONSE if frame.flags & Flags.REQUEST else 0
            outbox.append(error_frame(error.code, error.message, frame.message_id, flags))
            self._deliver(frame, error)
            return None
        message_id = frame.message_id
        message = ReceivedTable(
            mapping=mapping,
            inline=inline,
            ipc_offset=0 if inline is not None else frame.ipc_offset,
            ipc_length=frame.ipc_length,
            message_id=frame.message_id,
            correlation_id=frame.correlation_id,
            flags=frame.flags,
            metadata=frame.metadata,
            channel=self,
            validate=self.validate,
            on_release=(lambda: self._release(message_id)) if leased else None,
        )
        outbox.append(Frame(kind=Kind.ACK, correlation_id=frame.message_id))
        self._deliver(frame, message)
        return None

    def _inline_table(self, frame: Frame, fds: list[int]) -> Union[pa.Buffer, ArrowShmError]:
        """PROTOCOL.md §5.3 (decode_frame checked where the stream lies): the table's own bytes, or
        the error to answer. Closes any fd."""
        if fds or frame.fd_count != 0 or frame.flags & Flags.LEASED:
            close_fds(fds)
            return ArrowShmError(
                ERR_PROTOCOL,
                f"INLINE TABLE frame must carry no fd and no LEASED flag (fds {len(fds)}, fd_count {frame.fd_count})",
            )
        assert frame.inline is not None
        try:
            return open_inline(
                memoryview(frame.inline),
                max_message_bytes=self.max_message_bytes,
                ipc_limits=self.ipc_limits,
                schemas=self._schemas,
                message_id=frame.message_id,
            )
        except ArrowShmError as e:
            return e

    def _map_table(self, frame: Frame, fd: int, leased: bool) -> Union[mmap.mmap, ArrowShmError]:
        """PROTOCOL.md §5.1 steps 2-7: the read-only mapping, or the error to answer. Always closes fd."""
        try:
            if leased and "lease" not in self.capabilities:
                raise ArrowShmError(ERR_SEGMENT_UNSEALED, "LEASED segment, but this side did not offer 'lease'")
            mapping, _ = open_segment(
                fd,
                frame.ipc_offset,
                frame.ipc_length,
                max_message_bytes=self.max_message_bytes,
                allow_unsealed=self.allow_unsealed,
                leased=leased,
                ipc_limits=self.ipc_limits,
                schemas=self._schemas,
                message_id=frame.message_id,
            )
        except ArrowShmError as e:
            return e
        finally:
            os.close(fd)  # mapped (or rejected): the fd is no longer needed
        return mapping

    def _deliver(self, frame: Frame, item: Union[ReceivedTable, ArrowShmError]) -> None:
        if frame.flags & Flags.RESPONSE:
            st = self._pending.get(frame.correlation_id)
            if st is not None and st.request:
                if isinstance(item, ReceivedTable):
                    st.response = item
                elif st.error is None:
                    st.error = item
                return
            if isinstance(item, ReceivedTable):
                item.close()  # a late or unknown response: ACKed, released, dropped (§8)
                return
        self._incoming.append(item)
        if isinstance(item, ReceivedTable):
            self._incoming_bytes += item.ipc_length

    def _release(self, message_id: int) -> None:
        try:
            self._send_frame(Frame(kind=Kind.RELEASE, correlation_id=message_id))
        except ArrowShmError:
            pass

    # ------------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        return self._sock is None

    def send(
        self,
        data: Any,
        metadata: Optional[Dict[str, str]] = None,
        *,
        timeout: Optional[float] = None,
        flags: int = 0,
        correlation_id: int = 0,
    ) -> int:
        """Send one table (pyarrow Table / RecordBatch / list of batches, or IPC stream bytes, copied
        byte for byte) in a new sealed segment; wait for the peer's ACK. Returns the message_id."""
        message_id, pending = self._start_table(data, metadata, flags=flags, correlation_id=correlation_id, request=False)
        return self._acked(message_id, pending, timeout)

    def _acked(self, message_id: int, pending: _Pending, timeout: Optional[float]) -> int:
        """``message_id`` once its ACK came; an ERROR answering it is raised."""
        self._await(message_id, pending, lambda: pending.acked or pending.error is not None, timeout, "an ACK")
        if pending.error is not None:
            raise pending.error
        return message_id

    def _registering(self, pending: _Pending) -> Callable[[int], None]:
        """The ``register`` hook of :meth:`_send_frame` that files ``pending`` under the frame's id."""

        def register(message_id: int) -> None:
            with self._cond:
                self._pending[message_id] = pending

        return register

    def _await(self, message_id: int, pending: _Pending, ready: Callable[[], bool], timeout: Optional[float], what: str) -> None:
        """Pump frames until ``ready()``; the answer's slot is freed whatever happens."""
        try:
            self._wait(ready, deadline_after(timeout), what)
        finally:
            with self._cond:
                self._pending.pop(message_id, None)

    def _start_table(
        self, data: Any, metadata: Optional[Dict[str, str]], *, flags: int, correlation_id: int, request: bool
    ) -> tuple[int, _Pending]:
        if self._sock is None:
            raise self._failure or ArrowShmError(ERR_CLOSED, "channel is closed")
        room = min(self.max_inline_bytes, inline_room(metadata)) if "inline" in self.peer_capabilities else 0
        inline, data = _inline_stream(data, room)
        if inline is not None:
            frame = Frame(kind=Kind.TABLE, flags=flags | Flags.INLINE, correlation_id=correlation_id, inline=inline)
            trace_stage("copy", 0)
            return self._send_table(frame, None, len(inline), metadata, request=request)
        seg, length = write_table_segment(data, create=self._spares.take if self._spares else Segment.create)
        trace_stage("copy", 0)
        with seg:
            started = self._send_table_fd(seg.fd, 0, length, metadata, flags=flags, correlation_id=correlation_id, request=request)
        if self._spares is not None:
            self._spares.prepare(length)  # the next send's segment, made while the peer reads this one
        return started

    def _send_table_fd(
        self, fd: int, ipc_offset: int, length: int, metadata: Optional[Dict[str, str]], *, flags: int, correlation_id: int, request: bool
    ) -> tuple[int, _Pending]:
        """The TABLE frame of a written, sealed segment (the caller still owns ``fd``)."""
        frame = Frame(kind=Kind.TABLE, flags=flags, correlation_id=correlation_id, ipc_offset=ipc_offset, ipc_length=length)
        return self._send_table(frame, fd, length, metadata, request=request)

    def _send_table(
        self, frame: Frame, fd: Optional[int], length: int, metadata: Optional[Dict[str, str]], *, request: bool
    ) -> tuple[int, _Pending]:
        """Send a TABLE frame (a segment's ``fd``, or None for an inline one) once its metadata and
        size pass; the answer is filed under its message id."""
        if metadata:
            for key in metadata:
                if isinstance(key, str) and key.startswith("arrow-shm."):
                    raise ArrowShmError(ERR_INVALID_ARGUMENT, f"metadata key {key!r} is reserved")
        if self.peer_max_message_bytes is not None and length > self.peer_max_message_bytes:
            raise ArrowShmError(
                ERR_TOO_LARGE, f"{length}-byte message exceeds the peer's max_message_bytes {self.peer_max_message_bytes}"
            )
        pending = _Pending(request)
        frame.metadata = dict(metadata or {})
        message_id = self._send_frame(frame, fd, self._registering(pending))
        trace_stage("send", message_id)
        return message_id, pending

    def allocate(self, nbytes: int, *, header_bytes: int = 65536) -> "SegmentBuilder":
        """A segment whose body of ``nbytes`` the application fills, then sends with no copy
        (:class:`arrow_shm.builder.SegmentBuilder`)."""
        from .builder import SegmentBuilder

        return SegmentBuilder(self, nbytes, header_bytes=header_bytes)

    def send_segment(
        self, fd: int, ipc_offset: int, ipc_length: int, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None
    ) -> int:
        """Send a sealed segment the caller wrote (the IPC stream at ``ipc_offset``); wait for the
        ACK. The caller keeps ``fd``. Returns the message_id."""
        if self._sock is None:
            raise self._failure or ArrowShmError(ERR_CLOSED, "channel is closed")
        message_id, pending = self._send_table_fd(fd, ipc_offset, ipc_length, metadata, flags=0, correlation_id=0, request=False)
        return self._acked(message_id, pending, timeout)

    def request(
        self, data: Any, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None
    ) -> ReceivedTable:
        """Send a REQUEST table and wait for its RESPONSE (a :class:`ReceivedTable`) or ERROR (raised).

        On timeout raises ``ERR_TIMEOUT``; a response arriving later is ACKed and dropped.
        """
        message_id, pending = self._start_table(data, metadata, flags=Flags.REQUEST, correlation_id=0, request=True)
        self._await(message_id, pending, lambda: pending.response is not None or pending.error is not None, timeout, "a response")
        if pending.response is not None:
            return pending.response
        assert pending.error is not None
        raise pending.error

    def respond(
        self, request: ReceivedTable, data: Any, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None
    ) -> int:
        """Answer ``request`` with a RESPONSE table; waits for the ACK."""
        return self.send(data, metadata, timeout=timeout, flags=Flags.RESPONSE, correlation_id=request.message_id)

    def respond_error(self, request: ReceivedTable, code: str, message: str) -> None:
        """Answer ``request`` with an ERROR frame carrying flag RESPONSE."""
        self._send_frame(error_frame(code, message, request.message_id, Flags.RESPONSE))

    def receive(self, *, timeout: Optional[float] = None) -> ReceivedTable:
        """The next received table (not a response to one of our requests).

        A table that failed the receiver's checks raises its typed error here (the sender got an
        ERROR; the connection stays open). Raises ``ERR_PEER_CLOSED`` once the peer has gone and
        every queued table was taken.
        """
        self._wait(lambda: bool(self._incoming), deadline_after(timeout), "a table")
        with self._cond:
            item = self._incoming.popleft()
            if isinstance(item, ReceivedTable):
                self._incoming_bytes -= item.ipc_length
            self._cond.notify_all()  # room in the inbox: a waiting thread may read again
        if isinstance(item, ArrowShmError):
            raise item
        return item

    def __iter__(self) -> Iterator[ReceivedTable]:
        return self

    def __next__(self) -> ReceivedTable:
        try:
            return self.receive()
        except ArrowShmError as e:
            if e.code in (ERR_PEER_CLOSED, ERR_CLOSED):
                raise StopIteration from None
            raise

    def serve(self, handler: Callable[[ReceivedTable], Any], *, count: Optional[int] = None) -> int:
        """Answer requests until the peer hangs up (or ``count`` requests were answered).

        ``handler(message)`` returns the response table (anything :meth:`send` accepts) or a
        ``(table, metadata)`` tuple. An :class:`ArrowShmError` it raises is sent back with its code,
        any other exception as ``ERR_REMOTE``. Tables that are not requests are closed and ignored.
        Returns the number of requests answered.
        """
        answered = 0
        while count is None or answered < count:
            try:
                msg = self.receive()
            except ArrowShmError as e:
                if e.code in (ERR_PEER_CLOSED, ERR_CLOSED):
                    break
                if e.fatal:
                    raise
                continue  # a bad table: the sender already got its ERROR
            with msg:
                if not msg.is_request:
                    continue
                try:
                    result = handler(msg)
                except ArrowShmError as e:
                    msg.respond_error(e.code, e.message)
                except Exception as e:  # noqa: BLE001 - any handler failure goes back to the requester
                    msg.respond_error(ERR_REMOTE, f"{type(e).__name__}: {e}")
                else:
                    meta = None
                    if isinstance(result, tuple):
                        result, meta = result
                    try:
                        msg.respond(result, meta)
                    except ArrowShmError as e:
                        if e.code in (ERR_PEER_CLOSED, ERR_CLOSED):
                            break
                        if e.remote:
                            pass  # the requester rejected our response; keep serving
                        else:
                            msg.respond_error(e.code, e.message)
            answered += 1
        return answered

    # ------------------------------------------------------------------ streams (§12)

    def open_stream(self, schema: "pa.Schema", **options: Any) -> "StreamWriter":
        """:meth:`arrow_shm.stream.StreamWriter.open` on this channel."""
        from .producer import StreamWriter

        return StreamWriter.open(self, schema, **options)

    def accept_stream(
        self, *, timeout: Optional[float] = None, validate: Optional[str] = None, spin_micros: int = 0
    ) -> "StreamReader":
        """:meth:`arrow_shm.stream.StreamReader.accept` on this channel."""
        from .consumer import StreamReader

        return StreamReader.accept(self, timeout=timeout, validate=validate, spin_micros=spin_micros)

    def subscribe(
        self,
        metadata: Optional[Dict[str, str]] = None,
        *,
        timeout: Optional[float] = None,
        validate: Optional[str] = None,
        spin_micros: int = 0,
    ) -> "StreamReader":
        """:meth:`arrow_shm.stream.StreamReader.subscribe` on this channel."""
        from .consumer import StreamReader

        return StreamReader.subscribe(self, metadata, timeout=timeout, validate=validate, spin_micros=spin_micros)

    def _send_awaiting(
        self, frame: Frame, fds: Sequence[int], timeout: Optional[float], what: str, done: Optional[Callable[[], bool]]
    ) -> Optional[ArrowShmError]:
        """Send ``frame`` with ``fds``; pump until its ACK (or ``done()``) or an ERROR answering it,
        which is returned."""
        pending = _Pending(False)
        message_id = self._send_frame(frame, register=self._registering(pending), fds=fds)
        if done is None:
            ready = lambda: pending.acked or pending.error is not None  # noqa: E731
        else:
            ready = lambda: done() or pending.error is not None  # noqa: E731
        self._await(message_id, pending, ready, timeout, what)
        return pending.error

    def _pump_available(self) -> None:
        """Dispatch one frame if the socket has one, no other thread is reading it and the inbox
        has room."""
        with self._cond:
            if self._pumping or self._sock is None or self._inbox_full():
                return
            self._pumping = True
        try:
            self._pump_one(time.monotonic() + 1.0, "a frame")
        except ArrowShmError as e:
            if e.code != ERR_TIMEOUT:
                raise
        finally:
            with self._cond:
                self._pumping = False
                self._cond.notify_all()

    def close(self) -> None:
        """Say GOODBYE and close the socket. Received messages stay valid until closed."""
        if self._sock is not None:
            try:
                self._send_frame(Frame(kind=Kind.GOODBYE))
            except ArrowShmError:
                pass
        with self._cond:
            if self._failure is None:
                self._failure = ArrowShmError(ERR_CLOSED, "channel is closed")
            queued = list(self._incoming)
            self._incoming.clear()
            self._incoming_bytes = 0
            self._cond.notify_all()
        self._drop_socket()
        if self._spares is not None:
            self._spares.close()
        self.stream_link.on_closed()
        for item in queued:
            if isinstance(item, ReceivedTable):
                item.close()

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop_socket()
            if self._spares is not None:
                self._spares.close()  # its worker thread and spare segments
        except Exception:
            pass



def _inline_stream(data: Any, room: int) -> tuple[Any, Any]:
    """(the IPC stream to send inline, or None; what to write in a segment otherwise). A table is
    serialized only if its buffers alone fit in ``room``, and then not serialized again."""
    if room <= 0:
        return None, data
    if isinstance(data, (bytes, bytearray, memoryview, pa.Buffer)):
        raw = memoryview(data).cast("B")
        return (raw if 0 < len(raw) <= room else None), data
    # The buffers' total size gates the serialization (``nbytes`` crashes on union columns in
    # pyarrow; a slice counts its whole buffers, so a small slice of a big table takes a segment).
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        estimate = data.get_total_buffer_size()
    else:
        data = list(data)  # a list (or iterable) of batches, read once; _batches checks the items
        estimate = sum(b.get_total_buffer_size() if isinstance(b, pa.RecordBatch) else room + 1 for b in data)
    if estimate > room:
        return None, data
    schema, batches = _batches(data)
    sink = pa.BufferOutputStream()
    _write_stream(sink, schema, batches)
    stream = sink.getvalue()
    return (stream if stream.size <= room else None), stream


class _LinkPort:
    """The channel's side of its :class:`StreamLink` (see stream_link.LinkPort): the one place a
    stream's needs meet the channel's internals."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self.lock = channel._cond

    @property
    def peer(self) -> PeerInfo:
        ch = self._channel
        return PeerInfo(ch.peer_pid, frozenset(ch.peer_capabilities), ch.peer_implementation)

    @property
    def failure(self) -> Optional[ArrowShmError]:
        return self._channel._failure

    @property
    def receiving(self) -> tuple[str, int, IpcLimits]:
        ch = self._channel
        return ch.validate, ch.max_message_bytes, ch.ipc_limits

    def send_frame(self, frame: Frame, fds: Sequence[int] = ()) -> int:
        return self._channel._send_frame(frame, fds=fds)

    def send_awaiting(
        self, frame: Frame, fds: Sequence[int], timeout: Optional[float], what: str, done: Optional[Callable[[], bool]] = None
    ) -> Optional[ArrowShmError]:
        return self._channel._send_awaiting(frame, fds, timeout, what, done)

    def send_error(self, err: ArrowShmError, correlation_id: int) -> None:
        self._channel._send_error_quietly(err, correlation_id)

    def wait(self, ready: Callable[[], bool], timeout: Optional[float], what: str) -> None:
        self._channel._wait(ready, deadline_after(timeout), what)

    def poll_fd(self) -> Optional[int]:
        ch = self._channel
        sock = ch._sock
        # A full inbox is not read (§14.2).
        return None if sock is None or ch._inbox_full() else sock.fileno()

    def pump_available(self) -> None:
        self._channel._pump_available()

    def close(self) -> None:
        self._channel.close()


def connect(address: str, *, timeout: Optional[float] = None, **channel_options: Any) -> Channel:
    """Connect to a listener and handshake.

    With a ``timeout``, a listener that is not there yet (ENOENT / ECONNREFUSED) is retried until
    the timeout; without one, the first failure is raised (``ERR_SYSCALL``).
    """
    deadline = deadline_after(timeout)
    sock = connect_socket(address, socket.SOCK_SEQPACKET, deadline)
    if "handshake_timeout" not in channel_options and timeout is not None:
        channel_options["handshake_timeout"] = max(0.001, time_left(deadline) or 0.001)
    return Channel(sock, listener_side=False, **channel_options)
