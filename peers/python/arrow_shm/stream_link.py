"""What a stream (PROTOCOL.md §12) needs of the channel it runs on, and where the channel hands it
the stream frames. The stream modules use only this; the channel knows nothing of them.

The channel owns one :class:`StreamLink` (``channel.stream_link``) and gives it a *port* (a small
object defined in channel.py) for sending, waiting and closing.
"""

from __future__ import annotations

import select
import threading
from collections import deque
from typing import Callable, Deque, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Protocol, Sequence, Tuple

from .errors import ERR_INVALID_ARGUMENT, ERR_PROTOCOL, ERR_RESOURCE_LIMIT, ArrowShmError
from .frame import Frame, Kind, error_frame
from .limits import IpcLimits
from .segment import close_fds


class PeerInfo(NamedTuple):
    pid: int
    capabilities: FrozenSet[str]
    implementation: str


class SegmentSink(Protocol):
    """Where STREAM_SEGMENT frames of the open stream go (its reader)."""

    def on_segment(self, frame: Frame, fds: List[int], outbox: List[Frame]) -> None: ...


class LinkPort(Protocol):
    """The channel's side of the link."""

    lock: threading.Condition

    @property
    def peer(self) -> PeerInfo: ...

    @property
    def failure(self) -> Optional[ArrowShmError]: ...

    @property
    def receiving(self) -> tuple[str, int, IpcLimits]:
        """validate, max_message_bytes, ipc_limits."""
        ...

    def send_frame(self, frame: Frame, fds: Sequence[int] = ()) -> int: ...

    def send_awaiting(
        self, frame: Frame, fds: Sequence[int], timeout: Optional[float], what: str, done: Optional[Callable[[], bool]] = None
    ) -> Optional[ArrowShmError]: ...

    def send_error(self, err: ArrowShmError, correlation_id: int) -> None: ...

    def wait(self, ready: Callable[[], bool], timeout: Optional[float], what: str) -> None: ...

    def poll_fd(self) -> Optional[int]: ...

    def pump_available(self) -> None: ...

    def close(self) -> None: ...


#: A STREAM_OPEN frame and its fds, not yet taken by a reader.
Offer = Tuple[Frame, List[int]]


class StreamLink:
    """One channel's streams: offers waiting to be accepted, SUBSCRIBEs waiting for a publication,
    the open stream's reader, the streams produced on it."""

    def __init__(self, port: LinkPort, *, max_offers: int) -> None:
        self._port = port
        self._max_offers = max_offers
        self._offers: Deque[Offer] = deque()
        self._subscribes: Deque[Frame] = deque()
        self._accept_subscribe = False
        #: The stream being read on this channel (STREAM_SEGMENT frames go to it).
        self.sink: Optional[SegmentSink] = None
        #: Streams this side produces on this channel.
        self.producing = 0

    # --- what streams use ------------------------------------------------------------------

    @property
    def peer(self) -> PeerInfo:
        return self._port.peer

    @property
    def failure(self) -> Optional[ArrowShmError]:
        """Why the channel closed, once it has."""
        return self._port.failure

    # The channel's receiving options, those of a stream read on it.

    @property
    def validate(self) -> str:
        return self._port.receiving[0]

    @property
    def max_message_bytes(self) -> int:
        return self._port.receiving[1]

    @property
    def ipc_limits(self) -> IpcLimits:
        return self._port.receiving[2]

    @property
    def busy(self) -> bool:
        """A stream is open on the channel (it is then never idle, §14.2)."""
        return self.sink is not None or self.producing > 0

    def send_frame(self, frame: Frame, fds: Sequence[int] = ()) -> int:
        return self._port.send_frame(frame, fds)

    def send_and_wait_ack(self, frame: Frame, fds: Sequence[int], timeout: Optional[float]) -> None:
        """Send a frame with ``fds`` and wait for its ACK (an ERROR answer is raised)."""
        error = self._port.send_awaiting(frame, fds, timeout, f"the ACK of {frame.kind.name}")
        if error is not None:
            raise error

    def send_error(self, err: ArrowShmError, correlation_id: int) -> None:
        """ERROR, if the channel still takes it."""
        self._port.send_error(err, correlation_id)

    def close(self) -> None:
        """Close the channel under the stream."""
        self._port.close()

    def poll_fd(self) -> Optional[int]:
        """The channel's socket, to poll for frames; None while it is closed or not read (full inbox, §14.2)."""
        return self._port.poll_fd()

    def pump_available(self) -> None:
        """Dispatch a frame that arrived, if no other thread is reading the socket."""
        self._port.pump_available()

    def next_offer(self, timeout: Optional[float]) -> Offer:
        """The next STREAM_OPEN and its fds (the caller's from then on)."""
        self._port.wait(lambda: bool(self._offers), timeout, "a stream")
        with self._port.lock:
            return self._offers.popleft()

    def subscribe(self, metadata: Optional[Dict[str, str]], timeout: Optional[float]) -> Offer:
        """Ask a publishing peer for its stream (SUBSCRIBE, §12.1): its STREAM_OPEN, or its ERROR raised."""
        frame = Frame(kind=Kind.SUBSCRIBE, metadata=dict(metadata or {}))
        error = self._port.send_awaiting(frame, (), timeout, "a stream", lambda: bool(self._offers))
        if error is not None and not self._offers:
            raise error
        with self._port.lock:
            return self._offers.popleft()

    def next_subscribe(self, timeout: Optional[float]) -> Frame:
        """The next SUBSCRIBE (this side publishes from now on)."""
        self._accept_subscribe = True
        self._port.wait(lambda: bool(self._subscribes), timeout, "SUBSCRIBE")
        with self._port.lock:
            return self._subscribes.popleft()

    # --- called by the channel, under its lock --------------------------------------------

    def on_stream_open(self, frame: Frame, fds: List[int], outbox: List[Frame]) -> None:
        if len(self._offers) >= self._max_offers:
            close_fds(fds)
            outbox.append(error_frame(ERR_RESOURCE_LIMIT, f"{self._max_offers} stream offers are already waiting", frame.message_id))
        else:
            self._offers.append((frame, fds))

    def on_stream_segment(self, frame: Frame, fds: List[int], outbox: List[Frame]) -> None:
        if self.sink is not None:
            self.sink.on_segment(frame, fds, outbox)
        else:
            close_fds(fds)
            outbox.append(error_frame(ERR_PROTOCOL, "STREAM_SEGMENT without an open stream", frame.message_id))

    def on_subscribe(self, frame: Frame, outbox: List[Frame]) -> None:
        if self._accept_subscribe:
            self._subscribes.append(frame)
        else:
            outbox.append(error_frame(ERR_INVALID_ARGUMENT, "this side publishes no stream", frame.message_id))

    def on_closed(self) -> None:
        """The channel closed: the fds of offers nobody accepted are closed."""
        with self._port.lock:
            offers = list(self._offers)
            self._offers.clear()
        for _, fds in offers:
            close_fds(fds)


class Waiter:
    """Sleeps until one of some fds is readable or a frame arrived on one of some links' channels
    (it is then dispatched: hang-ups, STREAM_SEGMENTs and ACKs are seen while a stream waits).
    One per waiting end: its poll object is kept across sleeps and only re-registered when the
    fds change (a channel's socket is not polled while its inbox is full, §14.2)."""

    def __init__(self) -> None:
        self._poller = select.poll()
        self._polled: Dict[int, Optional[StreamLink]] = {}

    def wait(self, links: Iterable[StreamLink], fds: Iterable[int], timeout: float) -> None:
        """Sleep at most ``timeout`` s."""
        wanted: Dict[int, Optional[StreamLink]] = {}
        for link in links:
            fd = link.poll_fd()
            if fd is not None:
                wanted[fd] = link
        for fd in fds:
            wanted[fd] = None
        if wanted.keys() != self._polled.keys():
            for fd in self._polled.keys() - wanted.keys():
                self._poller.unregister(fd)
            for fd in wanted.keys() - self._polled.keys():
                self._poller.register(fd, select.POLLIN)
        self._polled = wanted
        for fd, _ in self._poller.poll(max(0, int(timeout * 1000))):
            ready = wanted.get(fd)
            if ready is not None:
                ready.pump_available()
