"""Listening: accept connections within max_connections, close idle ones, serve many at once
(PROTOCOL.md §2, §14.2)."""

from __future__ import annotations

import errno as _errno
import os
import select
import socket
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional

from .channel import Channel, positive
from .errors import ERR_CLOSED, ERR_INVALID_ARGUMENT, ERR_RESOURCE_LIMIT, ERR_SYSCALL, ERR_TIMEOUT, ArrowShmError, syscall_error
from .frame import MAX_FRAME_BYTES, encode_frame, error_frame
from .ipc import check_validate
from .segment import close_fds
from .sockets import MAX_FDS, bind_listening_socket, deadline_after, fds_of, time_left, unlink_socket_file

# Resource limits, PROTOCOL.md §14.2 (same names and defaults in every peer).
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT_MS = 300_000
#: At max_connections, the connection idle longest is evicted only if idle at least this long.
EVICTABLE_IDLE = 1.0


class _Accepted:
    """A connection a listener accepted: handshaking (``channel`` None) or a live channel."""

    __slots__ = ("sock", "since", "channel")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.since = time.monotonic()
        self.channel: Optional["weakref.ReferenceType[Channel]"] = None

    def live_channel(self) -> Optional[Channel]:
        ch = self.channel() if self.channel is not None else None
        return None if ch is None or ch.closed else ch

    def done(self) -> bool:
        return self.channel is not None and self.live_channel() is None

    def idle_since(self) -> float:
        ch = self.live_channel()
        return self.since if ch is None else ch.last_activity

    def evict(self, err: ArrowShmError, *, tell: bool = True) -> None:
        ch = self.live_channel()
        if ch is not None:
            ch.evict(err, tell=tell)
        else:  # still handshaking: its thread sees the hang-up and closes the socket
            _refuse(self.sock, err if tell else None, close=False)


def _refuse(sock: socket.socket, err: Optional[ArrowShmError], *, close: bool) -> None:
    """ERROR (correlation 0) on a connection that has no channel (yet), if the socket takes it at
    once; then hang up."""
    if err is not None:
        frame = error_frame(err.code, err.message, 0)
        frame.message_id = 1
        try:
            sock.send(encode_frame(frame), socket.MSG_DONTWAIT)
        except OSError:
            pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    if close:
        # Closing with unread frames (its HELLO) would make the peer's next read ECONNRESET instead
        # of our ERROR: drop what came before the shutdown (after it the peer's sends fail).
        for _ in range(4):
            try:
                data, ancdata, _, _ = sock.recvmsg(MAX_FRAME_BYTES, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_DONTWAIT)
            except OSError:
                break
            close_fds(fds_of(ancdata))
            if not data and not ancdata:
                break
        sock.close()


def _open_reserve() -> Optional[int]:
    try:
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Listener:
    """A listening SOCK_SEQPACKET socket (mode 0600). :meth:`accept` returns handshaken channels;
    :meth:`serve` serves many connections at once.

    Options (PROTOCOL.md §14.2), besides ``backlog`` and the :class:`Channel` options every accepted
    channel gets:

    - ``max_connections`` (256): connections accepted and still open, handshaking ones included. At
      the cap, the connection idle longest is closed with ``ERROR ERR_TIMEOUT`` if it has been idle
      at least 1 s; otherwise the new one gets ``ERROR ERR_RESOURCE_LIMIT`` and is closed.
    - ``idle_timeout_ms`` (300,000; 0 = never): an accepted channel with no frame in either
      direction for that long, nothing awaiting an answer and no open stream gets ``ERROR
      ERR_TIMEOUT`` and is closed (by a housekeeping thread, until the listener closes).

    A live listener at the path is ``ERR_ADDRESS_IN_USE``; a stale socket file is replaced. Out of
    file descriptors (EMFILE), a waiting connection gets ``ERROR ERR_SYSCALL`` (a reserve fd is kept
    for that) and the listener goes on.

    ``on_connection_error(error)`` hears of the connections no application code sees: refused
    (``ERR_RESOURCE_LIMIT``, ``ERR_SYSCALL``) or, in :meth:`serve`, failing their handshake.
    """

    def __init__(
        self,
        address: str,
        *,
        backlog: int = 16,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS,
        on_connection_error: Optional[Callable[[ArrowShmError], Any]] = None,
        **channel_options: Any,
    ) -> None:
        self.address = address
        self._on_connection_error = on_connection_error
        self.max_connections = positive("max_connections", max_connections)
        if not isinstance(idle_timeout_ms, int) or idle_timeout_ms < 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"idle_timeout_ms must be a non-negative integer, got {idle_timeout_ms!r}")
        self.idle_timeout_ms = idle_timeout_ms
        if "validate" in channel_options:
            check_validate(channel_options["validate"])  # a bad policy fails here, not at the first accept
        self._channel_options = channel_options
        self._lock = threading.Lock()
        self._accepted: List[_Accepted] = []
        self._stop = threading.Event()
        self._housekeeper: Optional[threading.Thread] = None
        sock, self._path, self._inode = bind_listening_socket(address, socket.SOCK_SEQPACKET, backlog)
        self._sock: Optional[socket.socket] = sock
        #: Held so that one fd is free to refuse a connection when the process runs out (EMFILE).
        self._reserve: Optional[int] = _open_reserve()

    def fileno(self) -> int:
        if self._sock is None:
            raise ArrowShmError(ERR_CLOSED, "listener is closed")
        return self._sock.fileno()

    @property
    def connections(self) -> int:
        """Connections accepted and still open (handshaking ones included)."""
        with self._lock:
            self._accepted = [a for a in self._accepted if not a.done()]
            return len(self._accepted)

    def accept(self, *, timeout: Optional[float] = None, **overrides: Any) -> Channel:
        """Wait for a connection (up to ``timeout`` seconds), check credentials, handshake."""
        return self._handshake(self._accept_one(deadline_after(timeout)), overrides)

    def _accept_one(self, deadline: Optional[float]) -> _Accepted:
        """The next connection within max_connections (refused ones are answered and skipped)."""
        while True:
            if self._sock is None:
                raise ArrowShmError(ERR_CLOSED, "listener is closed")
            poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN)
            remaining = time_left(deadline)
            if not poller.poll(None if remaining is None else int(remaining * 1000)):
                raise ArrowShmError(ERR_TIMEOUT, "timed out waiting for a connection")
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                continue  # another thread took it
            except OSError as e:
                if e.errno not in (_errno.EMFILE, _errno.ENFILE):
                    raise syscall_error("accept", e) from None
                self._shed(e)
                continue
            entry = self._admit(conn)
            if entry is not None:
                return entry

    def _shed(self, error: OSError) -> None:
        """Out of fds: accept(2) fails while the connection waits in the backlog (and poll keeps
        saying so). Spend the reserve fd to take it and refuse it with a reason; without a reserve,
        wait a moment instead of spinning."""
        if self._reserve is None:
            time.sleep(0.1)
        else:
            os.close(self._reserve)
            self._reserve = None
            try:
                conn, _ = self._sock.accept()  # type: ignore[union-attr]
            except OSError:
                pass
            else:
                err = ArrowShmError(ERR_SYSCALL, f"the listener is out of file descriptors ({error.strerror}); try again later")
                _refuse(conn, err, close=True)
                self._report(err)
        self._reserve = _open_reserve()

    def _report(self, err: ArrowShmError) -> None:
        if self._on_connection_error is not None:
            self._on_connection_error(err)

    def _admit(self, conn: socket.socket) -> Optional[_Accepted]:
        """Track ``conn`` within max_connections: evict the connection idle longest (>= 1 s) or refuse."""
        now = time.monotonic()
        victim: Optional[_Accepted] = None
        with self._lock:
            self._accepted = [a for a in self._accepted if not a.done()]
            if len(self._accepted) >= self.max_connections:
                oldest = min(self._accepted, key=_Accepted.idle_since)
                if now - oldest.idle_since() < EVICTABLE_IDLE:
                    refuse = True
                else:
                    refuse = False
                    victim = oldest
                    self._accepted.remove(oldest)
            else:
                refuse = False
            if not refuse:
                entry = _Accepted(conn)
                self._accepted.append(entry)
        if refuse:
            err = ArrowShmError(ERR_RESOURCE_LIMIT, f"the listener holds its maximum of {self.max_connections} connections (max_connections); try again later")
            _refuse(conn, err, close=True)
            self._report(err)
            return None
        if victim is not None:
            idle_ms = round((now - victim.idle_since()) * 1000)
            victim.evict(ArrowShmError(ERR_TIMEOUT, f"closed after {idle_ms} ms idle to make room: the listener holds its maximum of {self.max_connections} connections"))
        self._start_housekeeper()
        return entry

    def _handshake(self, entry: _Accepted, overrides: Dict[str, Any]) -> Channel:
        options = dict(self._channel_options)
        options.update(overrides)
        try:
            channel = Channel(entry.sock, listener_side=True, **options)
        except BaseException:
            with self._lock:
                if entry in self._accepted:
                    self._accepted.remove(entry)
            raise
        entry.channel = weakref.ref(channel)
        return channel

    def _start_housekeeper(self) -> None:
        with self._lock:
            if self.idle_timeout_ms == 0 or self._housekeeper is not None or self._stop.is_set():
                return
            self._housekeeper = threading.Thread(target=self._housekeep, name="arrow-shm-idle", daemon=True)
        self._housekeeper.start()

    def _housekeep(self) -> None:
        """Close accepted channels idle for idle_timeout_ms (checked ~10 times per timeout, at least every s)."""
        limit = self.idle_timeout_ms / 1000.0
        while not self._stop.wait(min(1.0, limit / 10)):
            now = time.monotonic()
            with self._lock:
                idle = [ch for ch in (a.live_channel() for a in self._accepted) if ch is not None and now - ch.last_activity >= limit]
            for ch in idle:
                if not ch.busy:
                    idle_ms = round((now - ch.last_activity) * 1000)
                    ch.evict(ArrowShmError(ERR_TIMEOUT, f"closed after {idle_ms} ms idle (idle_timeout_ms {self.idle_timeout_ms})"))

    def serve(self, handler: Callable[[Channel], Any], *, until: Callable[[], bool], poll_interval: float = 0.1) -> None:
        """Serve connections concurrently until ``until()`` (checked at least every ``poll_interval``
        s) returns true: each connection handshakes and runs ``handler(channel)`` in its own thread,
        then its channel is closed. A failing handshake or an :class:`ArrowShmError` from the handler
        ends only that connection; any other exception stops serving and is raised here. On return
        every connection still open is closed."""
        failures: List[BaseException] = []
        threads: List[threading.Thread] = []

        def run(entry: _Accepted) -> None:
            try:
                channel = self._handshake(entry, {})
            except ArrowShmError as e:
                self._report(e)  # a bad connector: it got its ERROR (if any); the others go on
                return
            try:
                with channel:
                    handler(channel)
            except ArrowShmError:
                pass
            except BaseException as e:  # noqa: BLE001 - stops serve(), raised in its thread
                failures.append(e)

        try:
            while not failures and not until():
                try:
                    entry = self._accept_one(time.monotonic() + poll_interval)
                except ArrowShmError as e:
                    if e.code == ERR_TIMEOUT:
                        continue
                    raise
                thread = threading.Thread(target=run, args=(entry,), name="arrow-shm-conn", daemon=True)
                thread.start()
                threads = [t for t in threads if t.is_alive()] + [thread]
            if failures:
                raise failures[0]
        finally:
            with self._lock:
                entries = list(self._accepted)
            for entry in entries:
                entry.evict(ArrowShmError(ERR_CLOSED, "the listener stopped serving"), tell=False)
            for thread in threads:
                thread.join()

    def close(self) -> None:
        """Stop listening (the socket file goes if it is still ours) and stop the idle timeout;
        channels already accepted stay open."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        unlink_socket_file(self._path, self._inode)
        self._inode = None
        reserve, self._reserve = self._reserve, None
        if reserve is not None:
            os.close(reserve)
        self._stop.set()
        with self._lock:
            housekeeper, self._housekeeper = self._housekeeper, None
        if housekeeper is not None and housekeeper is not threading.current_thread():
            housekeeper.join()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listen(address: str, **options: Any) -> Listener:
    """Listen at ``address`` (path or ``@abstract``). Options: see :class:`Listener` (its own, and
    the :class:`Channel` options every accepted channel gets)."""
    return Listener(address, **options)

