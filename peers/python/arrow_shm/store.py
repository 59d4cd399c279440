"""A client of a table store (PROTOCOL.md §15): put, get (zero copy, held until closed), list,
delete, watch, stats over one connection. The Node client is src/store/client.ts; names mirror it.

The connection is a :class:`~arrow_shm.channel.Channel` that lists only ``store``: its handshake,
credentials, frame reading and the §5.1 receive checks are the channel's (one home); this module
adds the STORE frame (kind 11), the requests and the answers.
"""

from __future__ import annotations

import mmap
import socket
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Union

from .channel import Channel, _Pending
from .errors import (
    ERR_CLOSED,
    ERR_INVALID_ARGUMENT,
    ERR_PEER_CLOSED,
    ERR_PROTOCOL,
    ERR_RESOURCE_LIMIT,
    ERR_TOO_LARGE,
    ArrowShmError,
)
from .frame import Flags, Frame, Kind
from .handshake import Agreement
from .ipc import decode_table
from .message import ReceivedTable
from .segment import Segment, close_fds, write_table_segment
from .sockets import connect_socket, deadline_after, time_left
from .store_protocol import (
    DEFAULT_MAX_LIST_ENTRIES,
    MAX_TIMEOUT_MS,
    STORE_CAPABILITY,
    PutResult,
    StoreEntry,
    StoreEvent,
    StoreStats,
    check_name,
    check_prefix,
    list_entries,
    put_metadata,
    put_result,
    store_decimal,
    store_event,
    store_stats,
)

#: A store answers a waiting get with ERR_TIMEOUT itself; the client gives it this much longer (s).
GRACE = 5.0
#: Events a watch keeps for a reader that does not take them (past it: ERR_RESOURCE_LIMIT).
DEFAULT_MAX_QUEUED_EVENTS = 4096
#: Frames that never travel on a store connection (§15.1: fatal ERR_PROTOCOL).
_NOT_ON_A_STORE = (Kind.STREAM_OPEN, Kind.STREAM_SEGMENT, Kind.SUBSCRIBE)


class _StorePending(_Pending):
    """A request's answer: a STORE frame's key/values, a table or an error."""

    __slots__ = ("kv",)

    def __init__(self) -> None:
        super().__init__(True)
        self.kv: Optional[Dict[str, str]] = None

    def answered(self) -> bool:
        return self.kv is not None or self.response is not None or self.error is not None


class StoreLink(Channel):
    """The channel under a :class:`StoreClient`: capability ``store`` only, held get answers
    checked with the sealed policy, STORE frames dispatched to requests and watches."""

    def __init__(self, sock: socket.socket, *, max_queued_events: int, **options: Any) -> None:
        self.watches: Dict[int, "StoreWatch"] = {}
        self.max_queued_events = max_queued_events
        super().__init__(sock, listener_side=False, spare_segments=False, **options)

    def _handshake(self, timeout: Optional[float]) -> None:
        self.capabilities = (STORE_CAPABILITY,)  # it implies accepting held (LEASED) answers, §15.1
        super()._handshake(timeout)

    def _take(self, peer: Agreement) -> None:
        if STORE_CAPABILITY not in peer.capabilities:
            raise self._fatal(ArrowShmError(ERR_PROTOCOL, "the listener is not a table store (its WELCOME does not list 'store')"))
        super()._take(peer)

    def _map_table(self, frame: Frame, fd: int, leased: bool) -> Union[mmap.mmap, ArrowShmError]:
        # A held answer is still fully sealed (§15.3): the sealed policy, whatever LEASED says.
        return super()._map_table(frame, fd, False)

    def _dispatch(self, frame: Frame, fds: list[int], outbox: list[Frame]) -> Union[None, bool, ArrowShmError]:
        kind = frame.kind
        if kind in _NOT_ON_A_STORE:
            close_fds(fds)
            return ArrowShmError(ERR_PROTOCOL, f"unexpected {kind.name} frame on a store connection")
        if kind == Kind.TABLE:
            pending = self._pending.get(frame.correlation_id) if frame.flags & Flags.RESPONSE else None
            if not isinstance(pending, _StorePending) or pending.answered():
                # Unasked, or the answer to a get that gave up: not mapped, handed back at once.
                close_fds(fds)
                if frame.flags & Flags.LEASED:
                    outbox.append(Frame(kind=Kind.RELEASE, correlation_id=frame.message_id))
                return None
        if kind != Kind.STORE:
            return super()._dispatch(frame, fds, outbox)
        if frame.flags & Flags.RESPONSE:
            st = self._pending.get(frame.correlation_id)
            if isinstance(st, _StorePending) and not st.answered():
                st.kv = frame.metadata
            return None
        watch = self.watches.get(frame.correlation_id) if frame.flags == 0 else None
        if watch is not None and not watch._push(frame.metadata):
            del self.watches[frame.correlation_id]
            outbox.append(_unwatch_frame(frame.correlation_id))
        return None

    def respond(
        self, request: ReceivedTable, data: Any, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None
    ) -> int:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, "a table from a store is not a request")

    def respond_error(self, request: ReceivedTable, code: str, message: str) -> None:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, "a table from a store is not a request")

    def send_request(self, frame: Frame, fd: Optional[int] = None, on_sent: Optional[Callable[[int], None]] = None) -> tuple[int, _StorePending]:
        """Send a REQUEST; ``on_sent(id)`` runs (under the lock) before it leaves."""
        pending = _StorePending()
        frame.flags = Flags.REQUEST
        registered: list[int] = []

        def register(message_id: int) -> None:
            with self._cond:
                self._pending[message_id] = pending
                registered.append(message_id)
                if on_sent is not None:
                    on_sent(message_id)

        try:
            return self._send_frame(frame, fd, register), pending
        except BaseException:
            with self._cond:  # it never left: nothing will answer it
                for message_id in registered:
                    self._pending.pop(message_id, None)
                    self.watches.pop(message_id, None)
            raise

    def await_answer(self, message_id: int, pending: _StorePending, timeout: Optional[float], what: str) -> _StorePending:
        """Pump until ``pending`` is answered; its error is raised."""
        self._await(message_id, pending, pending.answered, timeout, what)
        if pending.error is not None:
            raise pending.error
        return pending

    def unwatch(self, watch_id: int) -> None:
        with self._cond:
            known = self.watches.pop(watch_id, None) is not None
        if known and self._sock is not None:
            try:
                self._send_frame(_unwatch_frame(watch_id))  # its answer is ignored: nobody waits
            except ArrowShmError:
                pass


def _unwatch_frame(watch_id: int) -> Frame:
    return Frame(kind=Kind.STORE, flags=Flags.REQUEST, metadata={"op": "unwatch", "watch": str(watch_id)})


def _kv_only(pending: _StorePending, what: str) -> Dict[str, str]:
    if pending.response is not None:
        pending.response.close()
        raise ArrowShmError(ERR_PROTOCOL, f"the store answered {what} with a table")
    assert pending.kv is not None
    return pending.kv


def _table_only(pending: _StorePending, what: str) -> ReceivedTable:
    if pending.response is None:
        raise ArrowShmError(ERR_PROTOCOL, f"the store answered {what} without a table")
    return pending.response


class StoreClient:
    """One connection to a table store. Create with :func:`open_store`. Thread-safe as a channel
    is; a context manager. Tables received stay readable after :meth:`close` and after the store
    goes away (their segments are sealed)."""

    def __init__(self, link: StoreLink, *, max_list_entries: int = DEFAULT_MAX_LIST_ENTRIES) -> None:
        self._link = link
        self.max_list_entries = max_list_entries

    @property
    def closed(self) -> bool:
        return self._link.closed

    def put(
        self, name: str, data: Any, *, metadata: Optional[Mapping[str, str]] = None, replace: bool = False
    ) -> PutResult:
        """Put a table (pyarrow Table / RecordBatch / list of batches, written once into a new
        sealed segment) or the bytes of an IPC stream under ``name``. ``ERR_EXISTS`` if it has a
        version and ``replace`` is false."""
        kv = put_metadata(name, metadata, replace)
        seg, length = write_table_segment(data, create=Segment.create)
        with seg:  # the store has its own fd once the frame left: ours closes here
            limit = self._link.peer_max_message_bytes
            if limit is not None and length > limit:
                raise ArrowShmError(ERR_TOO_LARGE, f"{length}-byte table exceeds the store's max_message_bytes {limit}")
            frame = Frame(kind=Kind.TABLE, ipc_offset=0, ipc_length=length, metadata=kv)
            message_id, pending = self._link.send_request(frame, seg.fd)
        return put_result(_kv_only(self._link.await_answer(message_id, pending, None, f"the put of {name}"), "a put"))

    def get(self, name: str, *, timeout_ms: Optional[int] = None) -> ReceivedTable:
        """The table under ``name``, mapped read-only (zero copy; ``.table``, ``.ipc_bytes``,
        ``.metadata`` with ``arrow-shm.name`` and ``arrow-shm.version``). The store holds that
        version until ``close()`` on it. ``timeout_ms``: wait that long for a put of the name
        (``ERR_TIMEOUT``); without it a missing name is ``ERR_NOT_FOUND``."""
        check_name(name)
        wait = 0 if timeout_ms is None else timeout_ms
        if not isinstance(wait, int) or isinstance(wait, bool) or not 0 <= wait <= MAX_TIMEOUT_MS:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"timeout_ms must be an int from 0 to {MAX_TIMEOUT_MS}, got {timeout_ms!r}")
        kv = {"op": "get", "name": name}
        if wait:
            kv["timeout_ms"] = str(wait)
        message_id, pending = self._link.send_request(Frame(kind=Kind.STORE, metadata=kv))
        timeout = wait / 1000 + GRACE if wait else None
        return _table_only(self._link.await_answer(message_id, pending, timeout, f"the get of {name}"), "a get")

    def list(self, prefix: str = "") -> List[StoreEntry]:
        """Every name starting with ``prefix``, in byte order."""
        kv = {"op": "list"}
        if check_prefix(prefix):
            kv["prefix"] = prefix
        message_id, pending = self._link.send_request(Frame(kind=Kind.STORE, metadata=kv))
        message = _table_only(self._link.await_answer(message_id, pending, None, "a listing"), "a list")
        with message:
            # A listing is small and read as Python strings: every check, UTF-8 included.
            table = decode_table(message.ipc_bytes, validate="full")
            try:
                return list_entries(table, self.max_list_entries)
            finally:
                del table  # its buffers pin the mapping

    def delete(self, name: str) -> int:
        """Remove ``name`` (holders keep their version); returns the version removed."""
        message_id, pending = self._link.send_request(Frame(kind=Kind.STORE, metadata={"op": "delete", "name": check_name(name)}))
        kv = _kv_only(self._link.await_answer(message_id, pending, None, f"the delete of {name}"), "a delete")
        return store_decimal(kv, "version")

    def stats(self) -> StoreStats:
        """Names, accounted and held bytes, the memory budget, the eviction policy, evictions."""
        message_id, pending = self._link.send_request(Frame(kind=Kind.STORE, metadata={"op": "stats"}))
        return store_stats(_kv_only(self._link.await_answer(message_id, pending, None, "stats"), "stats"))

    def watch(self, prefix: str = "") -> "StoreWatch":
        """Events (:class:`StoreEvent`) for every later put, delete and eviction of a name starting
        with ``prefix``; the store has the watch when this returns. Iterate it; ``close()`` ends it."""
        kv = {"op": "watch"}
        if check_prefix(prefix):
            kv["prefix"] = prefix
        watch = StoreWatch(self._link)

        def on_sent(message_id: int) -> None:  # before any event of it can arrive
            watch.id = message_id
            self._link.watches[message_id] = watch

        message_id, pending = self._link.send_request(Frame(kind=Kind.STORE, metadata=kv), on_sent=on_sent)
        try:
            _kv_only(self._link.await_answer(message_id, pending, None, "a watch"), "a watch")
        except BaseException:
            with self._link._cond:
                self._link.watches.pop(message_id, None)  # refused: nothing to unwatch
            raise
        return watch

    def close(self) -> None:
        """Close the connection: pending requests fail, watches end; received tables stay readable."""
        self._link.close()

    def __enter__(self) -> "StoreClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<arrow_shm.StoreClient {'closed' if self.closed else self._link.peer_implementation}>"


class StoreWatch:
    """The events of one watch: ``for event in watch`` (blocks until the next one; ends when the
    watch or client is closed, raises if the store went away) or :meth:`next` with a timeout."""

    def __init__(self, link: StoreLink) -> None:
        self._link = link
        self.id = 0
        self._events: Deque[StoreEvent] = deque()
        self._ended = False
        self._error: Optional[ArrowShmError] = None

    def _push(self, kv: Dict[str, str]) -> bool:
        """An event frame (under the link's lock); False ends the watch (malformed, or too many
        events not taken)."""
        if self._ended:
            return False
        try:
            if len(self._events) >= self._link.max_queued_events:
                raise ArrowShmError(ERR_RESOURCE_LIMIT, f"{len(self._events)} store events not taken (max_queued_events {self._link.max_queued_events})")
            self._events.append(store_event(kv))
            return True
        except ArrowShmError as e:
            self._ended, self._error = True, e
            return False

    def next(self, *, timeout: Optional[float] = None) -> Optional[StoreEvent]:
        """The next event; ``None`` once the watch has ended cleanly. ``ERR_TIMEOUT`` after
        ``timeout`` seconds; the error that ended the watch once its queued events are taken."""
        link = self._link
        try:
            link._wait(lambda: bool(self._events) or self._ended, deadline_after(timeout), "a store event")
        except ArrowShmError as e:
            if e.code == ERR_CLOSED:
                return None  # the client was closed: a clean end
            raise
        with link._cond:
            if self._events:
                return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    def __iter__(self) -> Iterator[StoreEvent]:
        return self

    def __next__(self) -> StoreEvent:
        event = self.next()
        if event is None:
            raise StopIteration
        return event

    def close(self) -> None:
        """End the watch (the store stops sending its events)."""
        with self._link._cond:
            self._ended = True
        self._link.unwatch(self.id)

    def __enter__(self) -> "StoreWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(
    address: str,
    *,
    timeout: Optional[float] = None,
    max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS,
    max_list_entries: int = DEFAULT_MAX_LIST_ENTRIES,
    **options: Any,
) -> StoreClient:
    """Connect to the table store at ``address`` (a path or ``@name``) and handshake.

    ``timeout`` (s): retry a store that is not listening yet, and bound the handshake, that long.
    Other options as a channel's: ``allowed_uids``, ``max_message_bytes``, ``validate``,
    ``ipc_limits``. ``max_queued_events`` bounds a watch's untaken events, ``max_list_entries``
    the rows of a listing."""
    for key, value in (("max_queued_events", max_queued_events), ("max_list_entries", max_list_entries)):
        if not isinstance(value, int) or value <= 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{key} must be a positive integer, got {value!r}")
    deadline = deadline_after(timeout)
    sock = connect_socket(address, socket.SOCK_SEQPACKET, deadline)
    if timeout is not None:
        options.setdefault("handshake_timeout", max(0.001, time_left(deadline) or 0.001))
    try:
        link = StoreLink(sock, max_queued_events=max_queued_events, **options)
    except ArrowShmError as e:
        if e.code == ERR_PEER_CLOSED:
            raise ArrowShmError(ERR_PEER_CLOSED, f"the store at {address} hung up during the handshake") from None
        raise
    return StoreClient(link, max_list_entries=max_list_entries)
