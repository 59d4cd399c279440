"""One producer, many subscribers (PROTOCOL.md §12.4): :func:`publish` and :func:`subscribe`."""

from __future__ import annotations

import select
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import pyarrow as pa

from .channel import connect
from .consumer import StreamReader
from .errors import ERR_CLOSED, ERR_TIMEOUT, ArrowShmError
from .listener import listen
from .producer import EndOnExit, RingProducer
from .ring import SLEEP_BOUND

if TYPE_CHECKING:  # pragma: no cover
    from .channel import Channel


class Publication(EndOnExit):
    """One producer, any number of subscribers (up to 62) joining at any time (§12.4). Each batch
    is in the ring once, whatever the number of subscribers. Subscribers are admitted between
    writes and while :meth:`wait_for_subscribers` waits. A context manager."""

    def __init__(self, address: str, schema: pa.Schema, *, subscribe_timeout: float = 5.0, **options: Any) -> None:
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
        link = channel.stream_link
        try:
            frame = link.next_subscribe(self._subscribe_timeout)
        except ArrowShmError:
            channel.close()
            return True
        try:
            self._producer.attach(link, frame.message_id)
        except ArrowShmError as e:
            link.send_error(e, frame.message_id)
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



def publish(address: str, schema: pa.Schema, **options: Any) -> Publication:
    """Publish a stream of ``schema`` at ``address`` (a listening socket)."""
    return Publication(address, schema, **options)


def subscribe(
    address: str,
    metadata: Optional[Dict[str, str]] = None,
    *,
    timeout: Optional[float] = None,
    spin_micros: int = 0,
    **channel_options: Any,
) -> StreamReader:
    """Connect to a publication and subscribe; the connection closes with the reader.
    ``spin_micros``: see :meth:`StreamReader.accept`."""
    channel = connect(address, timeout=timeout, **channel_options)
    try:
        reader = StreamReader.subscribe(channel, metadata, timeout=timeout, spin_micros=spin_micros)
    except BaseException:
        channel.close()
        raise
    reader.owns_channel = True
    return reader
