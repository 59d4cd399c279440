"""Born in shared memory: columns built directly inside a segment, then sealed and sent with no copy.

``channel.allocate(nbytes)`` gives a :class:`SegmentBuilder`. Its :meth:`~SegmentBuilder.buffer`
hands out writable, 64-byte-aligned regions of the segment's body (fill them with numpy:
``np.frombuffer(buf, dtype)``, build arrays with ``pa.Array.from_buffers``);
:meth:`~SegmentBuilder.send` then writes only the IPC metadata in front of the body (the Schema
message and a RecordBatch message whose buffers point at those regions) and the end-of-stream
marker after it, seals and sends. Layout of the segment::

    [ zero ... | Schema message | RecordBatch message ][ body: the buffers ][ EOS ]
    0          ipc_offset                              header_bytes

Sealing needs no shared writable mapping of the file left, but the application's arrays still
point into it: the shared mapping is replaced in place (``MAP_FIXED``) by a private one of the same
pages, so those arrays stay readable, and a write to them after sending goes to a private copy of
that page instead of the sealed bytes (no fault, nothing the receiver sees). Python's ``mmap`` can
do neither, hence ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import pyarrow as pa

from .errors import ERR_CLOSED, ERR_INVALID_ARGUMENT, ArrowShmError, syscall_error
from .ipc import EOS
from .segment import MADV_POPULATE_WRITE, Closing, Segment

if TYPE_CHECKING:  # pragma: no cover
    from .channel import Channel

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_METADATA_V5 = 4
_HEADER_RECORD_BATCH = 3
_ALIGN = 64


def _mmap(addr: Optional[int], size: int, prot: int, flags: int, fd: int) -> int:
    got = _libc.mmap(addr, size, prot, flags, fd, 0)
    if got is None or got == _MAP_FAILED:
        raise syscall_error("mmap", OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())))
    return int(got)


def _record_batch_message(length: int, nodes: List[Tuple[int, int]], buffers: List[Tuple[int, int]], body_length: int) -> bytes:
    """An encapsulated IPC RecordBatch message (continuation, size, flatbuffer ``Message``).
    Laid out front to back, every offset pointing forward, 8-byte fields 8-byte aligned."""
    fb = bytearray(84)  # then the nodes vector: its count at 84, its 16-byte elements from 88
    struct.pack_into("<I", fb, 0, 16)  # root: the Message table at 16
    struct.pack_into("<6H", fb, 4, 12, 24, 4, 6, 8, 16)  # Message vtable: version, header_type, header, bodyLength
    struct.pack_into("<ihBxI4xq", fb, 16, 12, _METADATA_V5, _HEADER_RECORD_BATCH, 56 - 24, body_length)
    struct.pack_into("<5H", fb, 40, 10, 24, 8, 4, 16)  # RecordBatch vtable: length, nodes, buffers
    nodes_at = 84
    buffers_at = nodes_at + 4 + 16 * len(nodes) + 4
    struct.pack_into("<iIqI", fb, 56, 56 - 40, nodes_at - 60, length, buffers_at - 72)
    fb += struct.pack(f"<I{2 * len(nodes)}q", len(nodes), *(v for node in nodes for v in node))
    fb += struct.pack(f"<4xI{2 * len(buffers)}q", len(buffers), *(v for buf in buffers for v in buf))
    fb += bytes(-len(fb) % 8)
    return struct.pack("<Ii", 0xFFFFFFFF, len(fb)) + bytes(fb)


def _layout(array: pa.Array, nodes: List[Tuple[int, int]], buffers: List[Optional[pa.Buffer]]) -> None:
    """The IPC field nodes and buffers of ``array`` (pre-order), for the layouts handled here."""
    t = array.type
    if array.offset != 0:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, "a sliced array (offset != 0) cannot be sent in place")
    own = array.buffers()
    nodes.append((len(array), array.null_count))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        buffers.extend(own[: 1 if pa.types.is_fixed_size_list(t) else 2])
        _layout(array.values, nodes, buffers)
    elif pa.types.is_struct(t):
        buffers.append(own[0])
        for i in range(t.num_fields):
            _layout(array.field(i), nodes, buffers)
    elif pa.types.is_primitive(t) or pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t) or pa.types.is_fixed_size_binary(t):
        buffers.extend(own)
    else:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{t} cannot be sent in place (primitive, binary, list and struct types can)")


class SegmentBuilder(Closing):
    """A segment whose body the application fills (see the module). One send; then closed."""

    def __init__(self, channel: "Channel", nbytes: int, *, header_bytes: int = 65536) -> None:
        if nbytes <= 0 or header_bytes <= 0 or header_bytes % _ALIGN:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "nbytes must be positive, header_bytes a positive multiple of 64")
        self._channel = channel
        self.header_bytes = header_bytes
        self.size = header_bytes + nbytes + len(EOS) + _ALIGN
        self._segment: Optional[Segment] = Segment.create(self.size, "arrow-shm-built")
        try:
            self._address = _mmap(None, self.size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, self._segment.fd)
        except BaseException:
            self._segment.close()
            raise
        self._mapped = True
        _libc.madvise(self._address, self.size, MADV_POPULATE_WRITE)  # best effort: faults otherwise
        self._used = 0  # bytes of the body handed out
        self._capacity = nbytes

    @property
    def body_address(self) -> int:
        return self._address + self.header_bytes

    def buffer(self, nbytes: int) -> pa.Buffer:
        """A writable, zeroed, 64-byte-aligned region of ``nbytes`` of the body."""
        if self._segment is None:
            raise ArrowShmError(ERR_CLOSED, "the segment builder is closed (or sent)")
        start = -(-self._used // _ALIGN) * _ALIGN
        if nbytes < 0 or start + nbytes > self._capacity:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{nbytes} more bytes do not fit in the {self._capacity}-byte body")
        self._used = start + nbytes
        region = (ctypes.c_char * nbytes).from_address(self.body_address + start)
        region.builder = self  # type: ignore[attr-defined]  # the mapping lives as long as any buffer over it
        return pa.py_buffer(region)

    def send(self, data: Union[pa.RecordBatch, pa.Table], metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None) -> int:
        """Send ``data`` (one batch, or a table of one chunk per column), whose every buffer lies
        in this builder's body, with no copy; waits for the ACK. Returns the message_id."""
        if self._segment is None:
            raise ArrowShmError(ERR_CLOSED, "the segment builder is closed (or sent)")
        batch = data.combine_chunks().to_batches()[0] if isinstance(data, pa.Table) else data
        nodes: List[Tuple[int, int]] = []
        found: List[Optional[pa.Buffer]] = []
        for column in batch.columns:
            _layout(column, nodes, found)
        body_end = -(-self._used // 8) * 8
        placed = []
        for buf in found:
            if buf is None or buf.size == 0:
                placed.append((0, 0))
                continue
            offset = buf.address - self.body_address
            if offset < 0 or offset + buf.size > body_end:
                raise ArrowShmError(ERR_INVALID_ARGUMENT, "a buffer of the batch is not in this segment's body")
            placed.append((offset, buf.size))
        schema = batch.schema.serialize().to_pybytes()
        message = _record_batch_message(batch.num_rows, nodes, placed, body_end)
        ipc_offset = self.header_bytes - len(schema) - len(message)
        if ipc_offset < 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"the schema and batch metadata need more than header_bytes ({self.header_bytes})")
        head = schema + message
        ctypes.memmove(self._address + ipc_offset, head, len(head))
        ctypes.memmove(self.body_address + body_end, EOS, len(EOS))
        # The shared writable mapping is replaced in place by a private one of the same pages:
        # no shared writable mapping is left, so F_SEAL_WRITE succeeds, and the application's
        # arrays stay readable; a write to them after sending lands in a private copy of the page
        # (copy on write) instead of faulting, and never reaches the sealed bytes (see the module).
        segment, self._segment = self._segment, None
        ipc_length = self.header_bytes + body_end + len(EOS) - ipc_offset
        with segment:
            _mmap(self._address, self.size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, segment.fd)
            try:
                segment.seal()
            except ArrowShmError as e:
                if e.errno != errno.EBUSY:
                    raise
                # Seen once under a benchmark: the kernel still counted references to the pages
                # (F_SEAL_WRITE waits for them, then gives up). The bytes are intact behind the
                # private mapping: send a sealed copy of them rather than fail the send.
                return self._send_copy(ipc_offset, ipc_length, metadata, timeout)
            return self._channel.send_segment(segment.fd, ipc_offset, ipc_length, metadata, timeout=timeout)

    def _send_copy(self, ipc_offset: int, ipc_length: int, metadata: Optional[Dict[str, str]], timeout: Optional[float]) -> int:
        with Segment.create(ipc_length, "arrow-shm-built") as copy:
            copy.write_at(0, memoryview((ctypes.c_char * ipc_length).from_address(self._address + ipc_offset)).cast("B"))
            copy.seal()
            return self._channel.send_segment(copy.fd, 0, ipc_length, metadata, timeout=timeout)

    def close(self) -> None:
        """Closes the segment if not sent. The mapping stays while the builder lives (the
        application's arrays point into it) and goes with it."""
        segment, self._segment = getattr(self, "_segment", None), None
        if segment is not None:
            segment.close()

    def __del__(self) -> None:
        self.close()
        if getattr(self, "_mapped", False):
            self._mapped = False
            _libc.munmap(self._address, self.size)
