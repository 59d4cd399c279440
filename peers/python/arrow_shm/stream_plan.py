"""Per-stream plans (PROTOCOL.md §12): a stream has one schema, so what is generic per message
elsewhere can be worked out once per stream.

- :func:`has_dictionaries`: whether a schema's batches can carry DictionaryBatch messages (a
  stream without them is decoded and written message by message, without pyarrow's stream state);
- :class:`RecordPlan`: the consumer's check of a dictionary-free record against the RecordBatch
  message it last walked in full.
"""

from __future__ import annotations

import struct
from operator import add, itemgetter
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pyarrow as pa

from .errors import ERR_IPC_INVALID, ERR_IPC_TRUNCATED, ArrowShmError
from .ipc import CONTINUATION
from .limits import FlatBuffer

_u16 = struct.Struct("<H")
_u32 = struct.Struct("<I")
_i32 = struct.Struct("<i")


def _leaf_fields(schema: pa.Schema) -> Iterator[pa.Field]:
    stack = list(schema)
    while stack:
        field = stack.pop()
        yield field
        t = field.type
        if pa.types.is_dictionary(t):
            stack.append(pa.field("values", t.value_type))
        for i in range(getattr(t, "num_fields", 0) or 0):
            stack.append(t.field(i))


def has_dictionaries(schema: pa.Schema) -> bool:
    """A field of ``schema`` (at any depth) is dictionary-encoded."""
    return any(pa.types.is_dictionary(f.type) for f in _leaf_fields(schema))


def _getter(indices: List[int]) -> Callable[[Tuple[Any, ...]], Tuple[Any, ...]]:
    """A tuple of the items at ``indices`` (itemgetter returns a bare item for one index)."""
    if len(indices) == 1:
        only = indices[0]
        return lambda values: (values[only],)
    if not indices:
        return lambda values: ()
    return itemgetter(*indices)


def _vtable_bytes(fb: FlatBuffer, table: int) -> Tuple[int, int]:
    """[start, end) of a (verified) table's vtable."""
    vtable = table - _i32.unpack_from(fb.data, table)[0]
    return vtable, vtable + _u16.unpack_from(fb.data, vtable)[0]


class RecordPlan:
    """Checks a stream record that holds one RecordBatch message (no dictionaries) in O(1) Python
    steps, when its message is byte for byte the one :meth:`learn` saw except for the values a
    batch changes: ``bodyLength``, the row count, the field nodes and the buffers' offsets and
    lengths (all fixed-width int64s, so they never move the flatbuffer's structure).

    Why that is every check :func:`.ipc.walk_messages` makes: the flatbuffer verification, the
    decoding limits (§14.1) and the counts against the schema depend only on the bytes that must
    match (offsets, vtables, vector lengths, variadic counts, version, header type), which were
    verified when learned; the values are checked again here as the walk checks them
    (``bodyLength`` not negative and inside the record, the row count not negative, each buffer
    inside the body). A record that differs anywhere else is walked in full (:meth:`match` returns
    None) and may be learned.
    """

    def __init__(self) -> None:
        self._layout: Optional[struct.Struct] = None
        self._fixed: Tuple[Any, ...] = ()
        self._fixed_of = _getter([])
        self._offsets_of = _getter([])
        self._lengths_of = _getter([])
        self._body_at = self._rows_at = -1
        # The learned message whole, and where it ends: a batch of the same shape repeats it.
        self._whole = struct.Struct("0s")
        self._learned = b""
        self._learned_end = -1

    def learn(self, data: memoryview) -> None:
        """Remember the message at the start of ``data``, a RecordBatch message that
        :func:`.ipc.walk_messages` just verified (so it reads without bounds checks)."""
        self._layout = None
        prefix = 8 if _u32.unpack_from(data, 0)[0] == CONTINUATION else 4
        meta_size = _i32.unpack_from(data, prefix - 4)[0]
        fb = FlatBuffer(data[prefix : prefix + meta_size])
        message = fb.root()
        header = fb.table(message, 2)
        # Compressed bodies and custom metadata (tables and strings of their own) are walked each time.
        if header is None or fb.field(header, 3, 4) is not None or fb.field(message, 4, 4) is not None:
            return
        # A flatbuffer may overlap anything with anything: the values must not share a byte with
        # what the verification read (root offset, tables, vtables, vector lengths, variadic counts).
        structure = [(0, 4), (message, message + 4), (header, header + 4), _vtable_bytes(fb, message), _vtable_bytes(fb, header)]
        for table, slot, size in ((message, 0, 2), (message, 1, 1), (message, 2, 4), (header, 1, 4), (header, 2, 4), (header, 4, 4)):
            field = fb.field(table, slot, size)
            if field is not None:
                structure.append((field, field + size))
        for slot, size in ((1, 16), (2, 16), (4, 8)):
            if fb.field(header, slot, 4) is not None:
                start, count = fb.vector(header, slot, size)
                structure.append((start - 4, start + (size * count if slot == 4 else 0)))  # variadic counts too
        values: List[Tuple[int, str]] = []  # (position in data, what)
        body = fb.field(message, 3, 8)
        if body is not None:
            values.append((prefix + body, "body"))
        rows = fb.field(header, 0, 8)
        if rows is not None:
            values.append((prefix + rows, "rows"))
        nodes, node_count = fb.vector(header, 1, 16)
        values.extend((prefix + nodes + 8 * k, "node") for k in range(2 * node_count))
        buffers, buffer_count = fb.vector(header, 2, 16)
        values.extend((prefix + buffers + 16 * k + 8 * half, ("offset", "length")[half]) for k in range(buffer_count) for half in (0, 1))
        values.sort()
        fmt, fixed, at, offsets, lengths = ["<"], [], 0, [], []
        body_at = rows_at = -1
        for position, what in values:
            if position < at or position % 8 or any(a < position - prefix + 8 and position - prefix < b for a, b in structure):
                return  # overlapping or unaligned values: not a writer's message, walk it each time
            if position > at:
                fmt.append(f"{position - at}s")
                fixed.append(len(fmt) - 2)
            fmt.append("q")
            index = len(fmt) - 2
            if what == "body":
                body_at = index
            elif what == "rows":
                rows_at = index
            elif what == "offset":
                offsets.append(index)
            elif what == "length":
                lengths.append(index)
            at = position + 8
        end = prefix + meta_size
        if end > at:
            fmt.append(f"{end - at}s")
            fixed.append(len(fmt) - 2)
        layout = struct.Struct("".join(fmt))
        self._fixed_of = _getter(fixed)
        self._offsets_of, self._lengths_of = _getter(offsets), _getter(lengths)
        self._body_at, self._rows_at = body_at, rows_at
        unpacked: Tuple[Any, ...] = layout.unpack_from(data, 0)
        self._fixed = self._fixed_of(unpacked)
        self._whole = struct.Struct(f"{layout.size}s")
        self._learned = bytes(data[: layout.size])
        self._learned_end = layout.size + (unpacked[body_at] if body_at >= 0 else 0)
        self._layout = layout

    def match(self, data: memoryview) -> Optional[int]:
        """The end of the record's RecordBatch message if it matches the learned one (after its
        values were checked: ERR_IPC_INVALID / ERR_IPC_TRUNCATED as the walk raises them); None
        when it must be walked in full."""
        layout = self._layout
        if layout is None or len(data) < layout.size:
            return None
        if self._whole.unpack_from(data, 0)[0] == self._learned and self._learned_end <= len(data):
            return self._learned_end  # the very message the walk checked (same values too)
        values: Tuple[Any, ...] = layout.unpack_from(data, 0)
        if self._fixed_of(values) != self._fixed:
            return None
        body_length: int = values[self._body_at] if self._body_at >= 0 else 0
        if body_length < 0:
            raise ArrowShmError(ERR_IPC_INVALID, f"message 0 at byte 0: negative bodyLength {body_length}")
        end = layout.size + body_length
        if end > len(data):
            raise ArrowShmError(ERR_IPC_TRUNCATED, f"message 0 at byte 0: {body_length}-byte body runs past the end of the {len(data)}-byte stream")
        if self._rows_at >= 0 and values[self._rows_at] < 0:
            raise ArrowShmError(ERR_IPC_INVALID, f"message 0 at byte 0: negative row count {values[self._rows_at]}")
        offsets = self._offsets_of(values)
        if offsets:
            lengths = self._lengths_of(values)
            if min(offsets) < 0 or min(lengths) < 0 or max(map(add, offsets, lengths)) > body_length:
                raise ArrowShmError(ERR_IPC_INVALID, f"message 0 at byte 0: a buffer lies outside the {body_length}-byte body")
        return end
