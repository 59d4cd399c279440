"""Connections: listen/connect, handshake, TABLE/ACK/RELEASE/ERROR/GOODBYE (PROTOCOL.md §2-§8)."""

from __future__ import annotations

import array
import errno as _errno
import mmap
import os
import select
import socket
import stat
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Union

from . import __version__
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
)
from .message import Message, open_segment
from .pool import SparePool
from .segment import DEFAULT_MAX_MESSAGE_BYTES, Segment, write_table_segment

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .stream import StreamReader, StreamWriter

IMPLEMENTATION = f"arrow-shm-python/{__version__}"
#: Frame kinds that carry file descriptors.
_FD_KINDS = (Kind.TABLE, Kind.STREAM_OPEN, Kind.STREAM_SEGMENT)
#: Capabilities this peer accepts as a receiver.
CAPABILITIES = ("lease", "stream")
HANDSHAKE_TIMEOUT = 5.0
_MAX_FDS = 16  # ancillary room: more fds than a frame may carry are still received, then closed
_PEERCRED = struct.Struct("3i")


def socket_address(addr: str) -> str:
    """``@name`` → abstract address (leading NUL, no trailing NULs); anything else is a path."""
    if not addr:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, "empty socket address")
    if addr.startswith("@"):
        return "\0" + addr[1:]
    return addr


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def bind_listening_socket(address: str, sock_type: int, backlog: int) -> tuple[socket.socket, Optional[str], Optional[tuple[int, int]]]:
    """A listening socket at ``address``: a stale socket file is removed first; a path is bound,
    chmod 0600, then listened on (§2). Returns (socket, path or None, (st_dev, st_ino) of the file)."""
    target = socket_address(address)
    path: Optional[str] = None if target.startswith("\0") else target
    inode: Optional[tuple[int, int]] = None
    sock = socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC)
    try:
        if path is not None:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{path} exists and is not a socket")
                os.unlink(path)  # a stale socket file
        try:
            sock.bind(target)
        except OSError as e:
            raise syscall_error("bind", e) from None
        if path is not None:
            os.chmod(path, 0o600)
            st = os.stat(path)
            inode = (st.st_dev, st.st_ino)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        if inode is not None and path is not None:
            os.unlink(path)
        raise
    return sock, path, inode


def unlink_socket_file(path: Optional[str], inode: Optional[tuple[int, int]]) -> None:
    """Remove our socket file, unless someone else's file has replaced it since."""
    if path is None or inode is None:
        return
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == inode:
            os.unlink(path)
    except OSError:
        pass


def connect_socket(address: str, sock_type: int, deadline: Optional[float]) -> socket.socket:
    """Connect to ``address``. With a deadline, a listener that is not there yet (ENOENT /
    ECONNREFUSED) is retried until then (``ERR_TIMEOUT``); without one, failure is ``ERR_SYSCALL``."""
    target = socket_address(address)
    while True:
        sock = socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC)
        try:
            sock.connect(target)
            return sock
        except OSError as e:
            sock.close()
            retry = e.errno in (_errno.ENOENT, _errno.ECONNREFUSED) and deadline is not None
            if retry and time.monotonic() < deadline:  # type: ignore[operator]
                time.sleep(0.01)
                continue
            if retry:
                raise ArrowShmError(ERR_TIMEOUT, f"no listener at {address}: {e.strerror}") from None
            raise syscall_error("connect", e) from None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer via SO_PEERCRED."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError as e:
        raise syscall_error("getsockopt(SO_PEERCRED)", e) from None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def recv_with_fds(sock: socket.socket, bufsize: int, deadline: Optional[float]) -> tuple[bytes, list[int], int]:
    """One ``recvmsg`` (after waiting for readability until ``deadline``): (data, fds, msg_flags)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        remaining = _remaining(deadline)
        ready = poller.poll(None if remaining is None else int(remaining * 1000) + (1 if remaining else 0))
        if ready:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise ArrowShmError(ERR_TIMEOUT, "timed out waiting for the peer")
    try:
        data, ancdata, msg_flags, _ = sock.recvmsg(
            bufsize, socket.CMSG_SPACE(_MAX_FDS * 4), getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        )
    except ConnectionResetError:
        return b"", [], 0
    except OSError as e:
        raise syscall_error("recvmsg", e) from None
    fds: list[int] = []
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            fa = array.array("i")
            fa.frombytes(cdata[: len(cdata) - (len(cdata) % fa.itemsize)])
            fds.extend(fa)
    return data, fds, msg_flags


def _error_frame(code: str, message: str, correlation_id: int) -> Frame:
    return Frame(kind=Kind.ERROR, correlation_id=correlation_id, metadata={"code": code, "message": message[:4096]})


class _Pending:
    __slots__ = ("acked", "error", "response", "request")

    def __init__(self, request: bool) -> None:
        self.acked = False
        self.error: Optional[ArrowShmError] = None
        self.response: Optional[Message] = None
        self.request = request


class Channel:
    """One handshaken connection. Create with :func:`connect` or :meth:`Listener.accept`.

    Thread-safe: several threads may send, request and receive at once; whichever thread is waiting
    reads the socket and dispatches frames (ACKs for sends, responses for requests, tables for
    :meth:`receive`). Incoming TABLEs are checked (§5.1) and ACKed as soon as they are read.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        listener_side: bool,
        allowed_uids: Optional[Set[int]] = None,
        allow_unsealed: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        validate_full: bool = True,
        handshake_timeout: Optional[float] = HANDSHAKE_TIMEOUT,
        spare_segments: bool = True,
    ) -> None:
        if max_message_bytes <= 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "max_message_bytes must be positive")
        self._sock: Optional[socket.socket] = sock
        self._listener_side = listener_side
        self._allowed_uids = set(allowed_uids) if allowed_uids is not None else {os.geteuid()}
        self.allow_unsealed = allow_unsealed
        self.max_message_bytes = max_message_bytes
        self.validate_full = validate_full
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
        self._incoming: Deque[Union[Message, ArrowShmError]] = deque()
        self._pending: Dict[int, _Pending] = {}
        self._stream_offers: Deque[tuple[Frame, list[int]]] = deque()
        self._stream_reader: Optional["StreamReader"] = None
        #: SUBSCRIBE frames waiting for a publication to answer them.
        self._subscribe_requests: Deque[Frame] = deque()
        self._accept_subscribe = False
        #: Pre-allocated segments for the next sends (pool.py); None: every send allocates as it writes.
        self._spares: Optional[SparePool] = SparePool() if spare_segments else None
        try:
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
        deadline = _deadline(timeout)
        if self._listener_side:
            frame, _ = self._read_frame(deadline, handshake=True)
            if frame.kind != Kind.HELLO:
                raise self._fatal(ArrowShmError(ERR_PROTOCOL, f"expected HELLO, got {frame.kind.name}"))
            kv = frame.metadata
            try:
                lo, hi = int(kv["min_version"]), int(kv["max_version"])
            except (KeyError, ValueError):
                raise self._fatal(ArrowShmError(ERR_PROTOCOL, "HELLO without valid min_version/max_version")) from None
            if not lo <= PROTOCOL_VERSION <= hi:
                raise self._fatal(
                    ArrowShmError(
                        ERR_PROTOCOL_VERSION,
                        f"peer speaks protocol versions {lo}..{hi}, this side speaks {PROTOCOL_VERSION}",
                    )
                )
            self._take_peer_info(kv)
            self._send_frame(
                Frame(
                    kind=Kind.WELCOME,
                    metadata={
                        "version": str(PROTOCOL_VERSION),
                        "capabilities": ",".join(self.capabilities),
                        "implementation": IMPLEMENTATION,
                        "pid": str(os.getpid()),
                        "max_message_bytes": str(self.max_message_bytes),
                    },
                )
            )
        else:
            self._send_frame(
                Frame(
                    kind=Kind.HELLO,
                    metadata={
                        "min_version": str(PROTOCOL_VERSION),
                        "max_version": str(PROTOCOL_VERSION),
                        "capabilities": ",".join(self.capabilities),
                        "implementation": IMPLEMENTATION,
                        "pid": str(os.getpid()),
                    },
                )
            )
            frame, _ = self._read_frame(deadline, handshake=True)
            if frame.kind == Kind.ERROR:
                err = self._remote_error(frame)
                self._drop_socket()
                raise err
            if frame.kind != Kind.WELCOME:
                raise self._fatal(ArrowShmError(ERR_PROTOCOL, f"expected WELCOME, got {frame.kind.name}"))
            kv = frame.metadata
            if kv.get("version") != str(PROTOCOL_VERSION):
                raise self._fatal(
                    ArrowShmError(ERR_PROTOCOL_VERSION, f"peer chose protocol version {kv.get('version')!r}")
                )
            self._take_peer_info(kv)
            if "max_message_bytes" in kv:
                try:
                    self.peer_max_message_bytes = int(kv["max_message_bytes"])
                except ValueError:
                    raise self._fatal(ArrowShmError(ERR_PROTOCOL, "WELCOME with an invalid max_message_bytes")) from None

    def _take_peer_info(self, kv: Dict[str, str]) -> None:
        caps = kv.get("capabilities", "")
        self.peer_capabilities = {c.strip() for c in caps.split(",") if c.strip()}
        self.peer_implementation = kv.get("implementation", "")

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
    ) -> int:
        """Assign the next message_id, send the frame. Returns the id.

        ``register(id)`` runs before the frame leaves (so its ACK cannot be missed). Lock order:
        the send lock, then the condition; never the other way round.
        """
        with self._send_lock:
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
                sock.sendmsg([data], anc)
            except (BrokenPipeError, ConnectionResetError):
                raise ArrowShmError(ERR_PEER_CLOSED, "the peer hung up") from None
            except OSError as e:
                if e.errno == _errno.EMSGSIZE:
                    raise ArrowShmError(ERR_INVALID_ARGUMENT, "frame too large for the socket") from None
                raise syscall_error("sendmsg", e) from None
            self._next_id += 1
            return frame.message_id

    def _send_error_quietly(self, err: ArrowShmError, correlation_id: int, flags: int = 0) -> None:
        try:
            self._send_frame(
                Frame(
                    kind=Kind.ERROR,
                    flags=flags,
                    correlation_id=correlation_id,
                    metadata={"code": err.code, "message": err.message[:4096]},
                )
            )
        except ArrowShmError:
            pass

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
        except ArrowShmError as e:
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
            _close_fds(fds)
            raise self._fatal(e) from None
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
                    if not self._pumping:
                        self._pumping = True
                        break
                    remaining = _remaining(deadline)
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
        outbox: list[Frame] = []
        with self._cond:
            outcome = self._dispatch(frame, fds, outbox)
        # Frames are sent and the socket dropped outside the condition (lock order, see _send_frame).
        for out in outbox:
            try:
                self._send_frame(out)
            except ArrowShmError:
                pass
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
            self._stream_offers.append((frame, fds))
        elif kind == Kind.STREAM_SEGMENT:
            if self._stream_reader is not None:
                self._stream_reader._on_segment(frame, fds, outbox)
            else:
                _close_fds(fds)
                outbox.append(_error_frame(ERR_PROTOCOL, "STREAM_SEGMENT without an open stream", frame.message_id))
        elif kind == Kind.SUBSCRIBE:
            if self._accept_subscribe:
                self._subscribe_requests.append(frame)
            else:
                outbox.append(_error_frame(ERR_INVALID_ARGUMENT, "this side publishes no stream", frame.message_id))
        else:
            return ArrowShmError(ERR_PROTOCOL, f"unexpected {kind.name} frame after the handshake")
        return None

    def _on_table(self, frame: Frame, fds: list[int], outbox: list[Frame]) -> Optional[ArrowShmError]:
        leased = bool(frame.flags & Flags.LEASED)
        error: Optional[ArrowShmError] = None
        if len(fds) != 1 or frame.fd_count != 1:
            # Message-level (PROTOCOL.md §5.1 step 1): refuse this TABLE, keep the connection.
            _close_fds(fds)
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
            outbox.append(
                Frame(
                    kind=Kind.ERROR,
                    flags=Flags.RESPONSE if frame.flags & Flags.REQUEST else 0,
                    correlation_id=frame.message_id,
                    metadata={"code": error.code, "message": error.message[:4096]},
                )
            )
            self._deliver(frame, error)
            return None
        message = Message(
            mapping=mapping,
            ipc_offset=frame.ipc_offset,
            ipc_length=frame.ipc_length,
            message_id=frame.message_id,
            correlation_id=frame.correlation_id,
            flags=frame.flags,
            metadata=frame.metadata,
            channel=self,
            validate_full=self.validate_full,
        )
        outbox.append(Frame(kind=Kind.ACK, correlation_id=frame.message_id))
        self._deliver(frame, message)
        return None

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
            )
        except ArrowShmError as e:
            return e
        finally:
            os.close(fd)  # mapped (or rejected): the fd is no longer needed
        return mapping

    def _deliver(self, frame: Frame, item: Union[Message, ArrowShmError]) -> None:
        if frame.flags & Flags.RESPONSE:
            st = self._pending.get(frame.correlation_id)
            if st is not None and st.request:
                if isinstance(item, Message):
                    st.response = item
                elif st.error is None:
                    st.error = item
                return
            if isinstance(item, Message):
                item.close()  # a late or unknown response: ACKed, released, dropped (§8)
                return
        self._incoming.append(item)

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
            self._wait(ready, _deadline(timeout), what)
        finally:
            with self._cond:
                self._pending.pop(message_id, None)

    def _start_table(
        self, data: Any, metadata: Optional[Dict[str, str]], *, flags: int, correlation_id: int, request: bool
    ) -> tuple[int, _Pending]:
        if self._sock is None:
            raise self._failure or ArrowShmError(ERR_CLOSED, "channel is closed")
        if metadata:
            for key in metadata:
                if isinstance(key, str) and key.startswith("arrow-shm."):
                    raise ArrowShmError(ERR_INVALID_ARGUMENT, f"metadata key {key!r} is reserved")
        seg, length = write_table_segment(data, create=self._spares.take if self._spares else Segment.create)
        with seg:
            if self.peer_max_message_bytes is not None and length > self.peer_max_message_bytes:
                raise ArrowShmError(
                    ERR_TOO_LARGE, f"{length}-byte message exceeds the peer's max_message_bytes {self.peer_max_message_bytes}"
                )
            pending = _Pending(request)
            frame = Frame(
                kind=Kind.TABLE,
                flags=flags,
                correlation_id=correlation_id,
                ipc_offset=0,
                ipc_length=length,
                metadata=dict(metadata or {}),
            )
            message_id = self._send_frame(frame, seg.fd, self._registering(pending))
        return message_id, pending

    def request(
        self, data: Any, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None
    ) -> Message:
        """Send a REQUEST table and wait for its RESPONSE (a :class:`Message`) or ERROR (raised).

        On timeout raises ``ERR_TIMEOUT``; a response arriving later is ACKed and dropped.
        """
        message_id, pending = self._start_table(data, metadata, flags=Flags.REQUEST, correlation_id=0, request=True)
        self._await(message_id, pending, lambda: pending.response is not None or pending.error is not None, timeout, "a response")
        if pending.response is not None:
            return pending.response
        assert pending.error is not None
        raise pending.error

    def respond(
        self, request: Message, data: Any, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None
    ) -> int:
        """Answer ``request`` with a RESPONSE table; waits for the ACK."""
        return self.send(data, metadata, timeout=timeout, flags=Flags.RESPONSE, correlation_id=request.message_id)

    def respond_error(self, request: Message, code: str, message: str) -> None:
        """Answer ``request`` with an ERROR frame carrying flag RESPONSE."""
        self._send_frame(
            Frame(
                kind=Kind.ERROR,
                flags=Flags.RESPONSE,
                correlation_id=request.message_id,
                metadata={"code": code, "message": message[:4096]},
            )
        )

    def receive(self, *, timeout: Optional[float] = None) -> Message:
        """The next received table (not a response to one of our requests).

        A table that failed the receiver's checks raises its typed error here (the sender got an
        ERROR; the connection stays open). Raises ``ERR_PEER_CLOSED`` once the peer has gone and
        every queued table was taken.
        """
        self._wait(lambda: bool(self._incoming), _deadline(timeout), "a table")
        with self._cond:
            item = self._incoming.popleft()
        if isinstance(item, ArrowShmError):
            raise item
        return item

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        try:
            return self.receive()
        except ArrowShmError as e:
            if e.code in (ERR_PEER_CLOSED, ERR_CLOSED):
                raise StopIteration from None
            raise

    def serve(self, handler: Callable[[Message], Any], *, count: Optional[int] = None) -> int:
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
        """Open a stream of record batches to the peer (which reads it with ``accept_stream``);
        returns once the peer mapped the ring. Options: see :class:`arrow_shm.stream.RingProducer`."""
        from .stream import open_stream

        return open_stream(self, schema, **options)

    def accept_stream(self, *, timeout: Optional[float] = None, validate_full: Optional[bool] = None) -> "StreamReader":
        """The next stream the peer opens on this channel; its batches are read in place."""
        self._wait(lambda: bool(self._stream_offers), _deadline(timeout), "a stream")
        with self._cond:
            frame, fds = self._stream_offers.popleft()
        return self._open_reader(frame, fds, validate_full)

    def subscribe(
        self, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None, validate_full: Optional[bool] = None
    ) -> "StreamReader":
        """Ask a publishing peer for its stream (SUBSCRIBE, §12.1)."""
        pending = _Pending(False)
        message_id = self._send_frame(Frame(kind=Kind.SUBSCRIBE, metadata=dict(metadata or {})), register=self._registering(pending))
        self._await(message_id, pending, lambda: bool(self._stream_offers) or pending.error is not None, timeout, "a stream")
        if pending.error is not None and not self._stream_offers:
            raise pending.error
        with self._cond:
            frame, fds = self._stream_offers.popleft()
        return self._open_reader(frame, fds, validate_full)

    def _open_reader(self, frame: Frame, fds: list[int], validate_full: Optional[bool]) -> "StreamReader":
        from .stream import StreamReader

        if self._stream_reader is not None:
            _close_fds(fds)
            err = ArrowShmError(ERR_PROTOCOL, "a second stream while one is open on this connection")
            self._send_error_quietly(err, frame.message_id)
            raise err
        try:
            reader = StreamReader(
                self,
                frame,
                fds,
                validate_full=self.validate_full if validate_full is None else validate_full,
                max_message_bytes=self.max_message_bytes,
            )
        except ArrowShmError as e:
            self._send_error_quietly(e, frame.message_id)
            raise
        self._stream_reader = reader
        self._send_frame(Frame(kind=Kind.ACK, correlation_id=frame.message_id))
        return reader

    def _send_and_wait_ack(self, frame: Frame, fds: Sequence[int], timeout: Optional[float]) -> int:
        """Send a frame with ``fds`` and wait for its ACK (an ERROR answer is raised)."""
        pending = _Pending(False)
        message_id = self._send_frame(frame, register=self._registering(pending), fds=fds)
        self._await(message_id, pending, lambda: pending.acked or pending.error is not None, timeout, f"the ACK of {frame.kind.name}")
        if pending.error is not None:
            raise pending.error
        return message_id

    def _pump_available(self) -> None:
        """Dispatch one frame if the socket has one and no other thread is reading it."""
        with self._cond:
            if self._pumping or self._sock is None:
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
            offers = list(self._stream_offers)
            self._stream_offers.clear()
        self._drop_socket()
        if self._spares is not None:
            self._spares.close()
        for _, fds in offers:
            _close_fds(fds)
        for item in queued:
            if isinstance(item, Message):
                item.close()

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop_socket()
        except Exception:
            pass


class Listener:
    """A listening SOCK_SEQPACKET socket (mode 0600). :meth:`accept` returns handshaken channels."""

    def __init__(self, address: str, *, backlog: int = 16, **channel_options: Any) -> None:
        self.address = address
        self._channel_options = channel_options
        sock, self._path, self._inode = bind_listening_socket(address, socket.SOCK_SEQPACKET, backlog)
        self._sock: Optional[socket.socket] = sock

    def fileno(self) -> int:
        if self._sock is None:
            raise ArrowShmError(ERR_CLOSED, "listener is closed")
        return self._sock.fileno()

    def accept(self, *, timeout: Optional[float] = None, **overrides: Any) -> Channel:
        """Wait for a connection (up to ``timeout`` seconds), check credentials, handshake."""
        if self._sock is None:
            raise ArrowShmError(ERR_CLOSED, "listener is closed")
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        if not poller.poll(None if timeout is None else int(timeout * 1000)):
            raise ArrowShmError(ERR_TIMEOUT, "timed out waiting for a connection")
        try:
            conn, _ = self._sock.accept()
        except OSError as e:
            raise syscall_error("accept", e) from None
        options = dict(self._channel_options)
        options.update(overrides)
        return Channel(conn, listener_side=True, **options)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        unlink_socket_file(self._path, self._inode)
        self._inode = None

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listen(address: str, **channel_options: Any) -> Listener:
    """Listen at ``address`` (path or ``@abstract``)."""
    return Listener(address, **channel_options)


def connect(address: str, *, timeout: Optional[float] = None, **channel_options: Any) -> Channel:
    """Connect to a listener and handshake.

    With a ``timeout``, a listener that is not there yet (ENOENT / ECONNREFUSED) is retried until
    the timeout; without one, the first failure is raised (``ERR_SYSCALL``).
    """
    deadline = _deadline(timeout)
    sock = connect_socket(address, socket.SOCK_SEQPACKET, deadline)
    if "handshake_timeout" not in channel_options and timeout is not None:
        channel_options["handshake_timeout"] = max(0.001, _remaining(deadline) or 0.001)
    return Channel(sock, listener_side=False, **channel_options)
