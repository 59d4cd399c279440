"""Streams of record batches through a shared ring (PROTOCOL.md §12): the public names, from the
modules that do each job.

- :mod:`.ring`: the ring's layout, record headers, placement and the sleep/wake handshake;
- :mod:`.consumer`: :class:`StreamReader` maps a producer's ring and reads each batch in place;
- :mod:`.producer`: :class:`RingProducer` writes batches into a ring, :class:`StreamWriter` is a
  stream on one channel;
- :mod:`.publication`: one producer, many subscribers (:func:`publish`, :func:`subscribe`);
- :mod:`.stream_plan`: what is worked out once per stream (a record's checks without dictionaries);
- :mod:`.stream_link`: what a stream needs of its channel.
"""

from .consumer import StreamBatch, StreamReader
from .producer import SOCKET_CHECK_INTERVAL, RingProducer, StreamWriter, open_stream
from .publication import Publication, publish, subscribe
from .ring import (
    DEFAULT_CAPACITY,
    MAX_CAPACITY,
    MAX_READERS,
    MIN_CAPACITY,
    RECORD_BATCH,
    RECORD_END,
    RECORD_EXTERNAL,
    RECORD_HEADER_BYTES,
    RECORD_PADDING,
    RING_HEADER_BYTES,
    RING_LAYOUT_VERSION,
    RING_MAGIC,
    RING_SEALS,
    SLEEP_BOUND,
    check_capacity,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "MAX_CAPACITY",
    "MAX_READERS",
    "MIN_CAPACITY",
    "RECORD_BATCH",
    "RECORD_END",
    "RECORD_EXTERNAL",
    "RECORD_HEADER_BYTES",
    "RECORD_PADDING",
    "RING_HEADER_BYTES",
    "RING_LAYOUT_VERSION",
    "RING_MAGIC",
    "RING_SEALS",
    "SLEEP_BOUND",
    "SOCKET_CHECK_INTERVAL",
    "Publication",
    "RingProducer",
    "StreamBatch",
    "StreamReader",
    "StreamWriter",
    "check_capacity",
    "open_stream",
    "publish",
    "subscribe",
]
