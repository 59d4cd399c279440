"""A received table: an IPC stream living in a read-only shared mapping (or, inline, in its own buffer)."""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Callable, Dict, Optional

import pyarrow as pa

from .errors import ERR_CLOSED, ERR_TOO_LARGE, ArrowShmError, syscall_error
from .frame import Flags
from .ipc import DEFAULT_VALIDATE, StreamInfo, check_validate, decode_table, validate_stream
from .limits import IpcLimits, SchemaCache
from .segment import DEFAULT_MAX_MESSAGE_BYTES, check_segment, map_readonly
from .trace import trace_stage

if TYPE_CHECKING:  # pragma: no cover
    from .channel import Channel


def close_mapping(mapping: mmap.mmap) -> None:
    """Unmap now if nothing references the mapping any more; otherwise when the last pyarrow
    buffer over it is collected."""
    try:
        mapping.close()
    except BufferError:
        pass


def open_segment(
    fd: int,
    ipc_offset: int,
    ipc_length: Optional[int] = None,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    allow_unsealed: bool = False,
    leased: bool = False,
    ipc_limits: Optional[IpcLimits] = None,
    schemas: Optional[SchemaCache] = None,
    message_id: int = 0,
) -> tuple[mmap.mmap, StreamInfo]:
    """PROTOCOL §5.1 steps 2-7 on a received fd (which the caller still owns and closes):
    check, map the whole file read-only, validate the IPC framing. ``ipc_length=None`` means "to
    the end of the file" (seed mode). Raises the typed error; nothing stays mapped on failure.
    ``schemas``: the channel's Schema messages already verified; ``message_id``: the frame's, for
    :func:`.trace.trace_stage`."""
    if ipc_length is None:
        try:
            ipc_length = max(0, os.fstat(fd).st_size - ipc_offset)
        except OSError as e:
            raise syscall_error("fstat", e) from None
    size = check_segment(
        fd, ipc_offset, ipc_length, max_message_bytes=max_message_bytes, allow_unsealed=allow_unsealed, leased=leased
    )
    mapping = map_readonly(fd, size)
    trace_stage("map", message_id)
    error: Optional[ArrowShmError] = None
    try:
        with memoryview(mapping) as view:
            info = validate_stream(view[ipc_offset : ipc_offset + ipc_length], ipc_limits, schemas)
    except ArrowShmError as e:
        error = ArrowShmError(e.code, e.message)  # without the traceback: it pins the mapping
    if error is not None:
        close_mapping(mapping)
        raise error
    trace_stage("check", message_id)
    return mapping, info


def open_inline(
    data: memoryview,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ipc_limits: Optional[IpcLimits] = None,
    schemas: Optional[SchemaCache] = None,
    message_id: int = 0,
) -> pa.Buffer:
    """PROTOCOL §5.3: an INLINE TABLE's stream gets §5.1 step 5 (``max_message_bytes``) and step 7
    (the IPC checks), then is copied into a buffer of its own (64-aligned, so pyarrow reads it in
    place) that outlives the frame. Raises the typed error."""
    if len(data) > max_message_bytes:
        raise ArrowShmError(ERR_TOO_LARGE, f"ipc_length {len(data)} exceeds max_message_bytes {max_message_bytes}")
    trace_stage("map", message_id)
    validate_stream(data, ipc_limits, schemas)
    trace_stage("check", message_id)
    owned = pa.allocate_buffer(len(data))
    memoryview(owned).cast("B")[:] = data
    return owned


class ReceivedTable:
    """One received TABLE (named apart from ``pyarrow.ipc.Message``, which is one IPC message).

    ``table`` decodes lazily, in place: its column buffers point into the shared mapping (no copy;
    compressed bodies are the exception, pyarrow decompresses them into new memory).

    Lifetime: :meth:`close` (or leaving the ``with`` block) drops this object's references and, for
    a leased segment, sends ``RELEASE``. The mapping itself is unmapped when the last reference to
    it is gone: immediately at ``close()`` if nothing else holds it, otherwise when the last pyarrow
    buffer built over it (the table, its columns, slices of ``ipc_bytes``) is garbage-collected.
    A sealed segment's bytes can never change, so tables kept after ``close()`` stay valid; a
    *leased* segment may be rewritten by its sender after ``RELEASE``, so do not use its table after
    ``close()``.
    """

    def __init__(
        self,
        *,
        mapping: Optional[mmap.mmap],
        ipc_offset: int,
        ipc_length: int,
        message_id: int = 0,
        correlation_id: int = 0,
        flags: int = 0,
        metadata: Optional[Dict[str, str]] = None,
        channel: Optional["Channel"] = None,
        validate: str = DEFAULT_VALIDATE,
        on_release: Optional[Callable[[], None]] = None,
        inline: Optional[pa.Buffer] = None,
    ) -> None:
        self._mapping: Optional[mmap.mmap] = mapping
        #: An INLINE table (§5.3) owns its bytes (``inline``, 8-aligned) instead of a mapping.
        self._buffer: Optional[pa.Buffer] = (
            inline if mapping is None else pa.py_buffer(mapping).slice(ipc_offset, ipc_length)
        )
        self._table: Optional[pa.Table] = None
        self._error: Optional[ArrowShmError] = None
        self._channel = channel
        #: Sends RELEASE for a leased segment (set by the channel that received it).
        self._on_release = on_release
        self._validate = check_validate(validate)
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.flags = flags
        self.metadata: Dict[str, str] = dict(metadata or {})
        self.ipc_offset = ipc_offset
        self.ipc_length = ipc_length
        self.closed = False

    @property
    def leased(self) -> bool:
        return bool(self.flags & Flags.LEASED)

    @property
    def inline(self) -> bool:
        """The table came inside its TABLE frame (§5.3), not in a segment."""
        return bool(self.flags & Flags.INLINE)

    @property
    def is_request(self) -> bool:
        return bool(self.flags & Flags.REQUEST)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flags.RESPONSE)

    @property
    def ipc_bytes(self) -> pa.Buffer:
        """The IPC stream bytes, a zero-copy ``pyarrow.Buffer`` over the mapping."""
        if self._buffer is None:
            raise ArrowShmError(ERR_CLOSED, "message is closed")
        return self._buffer

    @property
    def table(self) -> pa.Table:
        """The decoded table (decoded once, on first access)."""
        if self._buffer is None:
            raise ArrowShmError(ERR_CLOSED, "message is closed")
        if self._table is None:
            if self._error is not None:
                raise ArrowShmError(self._error.code, self._error.message)
            try:
                self._table = decode_table(self._buffer, validate=self._validate, message_id=self.message_id)
            except ArrowShmError as e:
                self._error = ArrowShmError(e.code, e.message)
                raise
        return self._table

    def mapping_range(self) -> tuple[int, int]:
        """(address, size) of the whole read-only mapping (for zero-copy checks); for an inline
        table, of its own buffer."""
        if self._buffer is None:
            raise ArrowShmError(ERR_CLOSED, "message is closed")
        if self._mapping is None:
            return self._buffer.address, self._buffer.size
        start = self._buffer.address - self.ipc_offset
        assert self._mapping is not None
        return start, len(self._mapping)

    def respond(self, data: object, metadata: Optional[Dict[str, str]] = None, *, timeout: Optional[float] = None) -> int:
        """Answer this REQUEST with a RESPONSE table (waits for the requester's ACK)."""
        if self._channel is None:
            raise ArrowShmError(ERR_CLOSED, "message has no channel to respond on")
        return self._channel.respond(self, data, metadata, timeout=timeout)

    def respond_error(self, code: str, message: str) -> None:
        """Answer this REQUEST with an ERROR frame (flag RESPONSE)."""
        if self._channel is None:
            raise ArrowShmError(ERR_CLOSED, "message has no channel to respond on")
        self._channel.respond_error(self, code, message)

    def close(self) -> None:
        """Release this message: drop references, unmap if nothing else holds the mapping, and
        send ``RELEASE`` for a leased segment."""
        if self.closed:
            return
        self.closed = True
        self._table = None
        self._buffer = None
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            close_mapping(mapping)
        self._channel = None
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    def __enter__(self) -> "ReceivedTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.ipc_length} bytes"
        return f"<arrow_shm.ReceivedTable id={self.message_id} {state} metadata={self.metadata!r}>"
