"""Decoding limits of an IPC message's flatbuffer (PROTOCOL.md §14.1), checked before pyarrow.

A flatbuffer may point many offsets at one table, string or vector, so :func:`verify_message`
counts every *reference* from the ``Message`` root (bounds-checking each table, vtable, vector and
string it reaches, each once) and adds up what decoding would produce: bytes of strings and
vectors, ``KeyValue`` entries, ``Field`` tables and nesting depth. :class:`MessageChecker` then
checks the node / buffer / variadic counts of each batch against the stream's schema (O(1) per
vector).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import ERR_INVALID_ARGUMENT, ERR_IPC_INVALID, ERR_IPC_LIMIT, ERR_IPC_UNSUPPORTED, ArrowShmError

_u8 = struct.Struct("<B")
_u16 = struct.Struct("<H")
_i16 = struct.Struct("<h")
_i32 = struct.Struct("<i")
_u32 = struct.Struct("<I")
_i64 = struct.Struct("<q")
_vt_head = struct.Struct("<HH")
_slots = [struct.Struct(f"<{k}H") for k in range(16)]  # a vtable's field offsets, by count

#: However the limits are set, the walk visits at most this many tables (§14.1).
MAX_TABLES = 1_000_000


@dataclass(frozen=True)
class IpcLimits:
    """The decoding limits of §14.1, per IPC message (defaults: what an operator can leave alone)."""

    #: Bytes of every string and vector reachable from a Message, each reference counted.
    max_metadata_bytes: int = 64 * 1024 * 1024
    #: KeyValue entries: the Message's custom_metadata, the Schema's and every Field's.
    max_metadata_entries: int = 65_536
    #: Field tables of a Schema, children included.
    max_fields: int = 65_536
    #: Tables nested inside each other.
    max_nesting_depth: int = 64

    def __post_init__(self) -> None:
        for name in ("max_metadata_bytes", "max_metadata_entries", "max_fields", "max_nesting_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = IpcLimits()


def resolve_ipc_limits(limits: Union[IpcLimits, Mapping[str, int], None]) -> IpcLimits:
    """The ``ipc_limits`` option of a receiver: ``None`` (the defaults), an :class:`IpcLimits`, or
    a mapping of some of its fields (the others default). Bad names or values: ERR_INVALID_ARGUMENT."""
    if limits is None:
        return DEFAULT_LIMITS
    if isinstance(limits, IpcLimits):
        return limits
    unknown = set(limits) - set(IpcLimits.__dataclass_fields__)
    if unknown:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"unknown ipc_limits {', '.join(sorted(unknown))}")
    return IpcLimits(**limits)


def _invalid(msg: str) -> ArrowShmError:
    return ArrowShmError(ERR_IPC_INVALID, msg)


class FlatBuffer:
    """Bounds-checked access to one flatbuffer (just the subset the IPC checks need)."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.n = len(data)

    def read(self, fmt: struct.Struct, pos: int) -> int:
        if pos < 0 or pos + fmt.size > self.n:
            raise _invalid(f"flatbuffer read at {pos} outside its {self.n} bytes")
        value: int = fmt.unpack_from(self.data, pos)[0]
        return value

    def root(self) -> int:
        return self.table_at(self.read(_u32, 0))

    def table_at(self, pos: int) -> int:
        if pos < 0 or pos + 4 > self.n or pos % 4:
            raise _invalid(f"flatbuffer table at {pos} outside its {self.n} bytes or misaligned")
        vtable = pos - self.read(_i32, pos)
        if vtable < 0 or vtable % 2:
            raise _invalid("flatbuffer vtable outside the buffer or misaligned")
        vsize = self.read(_u16, vtable)
        tsize = self.read(_u16, vtable + 2)
        if vsize < 4 or vsize % 2 or vtable + vsize > self.n:
            raise _invalid("flatbuffer vtable has a bad size")
        if tsize < 4 or pos + tsize > self.n:
            raise _invalid("flatbuffer table has a bad size")
        return pos

    def field(self, table: int, index: int, size: int) -> Optional[int]:
        vtable = table - self.read(_i32, table)
        vsize, tsize = _vt_head.unpack_from(self.data, vtable)  # checked by table_at
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        off = self.read(_u16, vtable + slot)
        if off == 0:
            return None
        if off < 4 or off + size > tsize:
            raise _invalid("flatbuffer field lies outside its table")
        return table + off

    def scalar(self, table: int, index: int, fmt: struct.Struct, default: int = 0) -> int:
        pos = self.field(table, index, fmt.size)
        return default if pos is None else self.read(fmt, pos)

    def table(self, table: int, index: int) -> Optional[int]:
        pos = self.field(table, index, 4)
        if pos is None:
            return None
        return self.table_at(pos + self.read(_u32, pos))

    def vector(self, table: int, index: int, elem_size: int, terminator: int = 0) -> Tuple[int, int]:
        """(position of the first element, count) of a vector (or string); (0, 0) if absent."""
        pos = self.field(table, index, 4)
        if pos is None:
            return 0, 0
        return self.vector_at(pos + self.read(_u32, pos), elem_size, terminator)

    def vector_at(self, vec: int, elem_size: int, terminator: int = 0) -> Tuple[int, int]:
        count = self.read(_u32, vec)
        start = vec + 4
        if start + count * elem_size + terminator > self.n:
            raise _invalid(f"flatbuffer vector of {count} elements overruns the buffer")
        return start, count


# ------------------------------------------------------------------------------------------------
# The walk: a table spec lists, per slot, what the slot holds.

Spec = List[Tuple[Any, ...]]  # per slot: ("s", size) | ("str",) | ("t", spec) | ("v", elem) | ("tv", spec) | ("u", type_slot, pick)

_KEY_VALUE: Spec = [("str",), ("str",)]
_INT: Spec = [("s", 4), ("s", 1)]
_DICTIONARY_ENCODING: Spec = [("s", 8), ("t", _INT), ("s", 1), ("s", 2)]
_SCALAR_TYPE: Spec = []  # every type table but Timestamp and Union holds scalars only
_TIMESTAMP: Spec = [("s", 2), ("str",)]
_UNION: Spec = [("s", 2), ("v", 4)]


def _type_spec(type_id: int) -> Spec:
    return _TIMESTAMP if type_id == 10 else _UNION if type_id == 14 else _SCALAR_TYPE


_FIELD: Spec = [("str",), ("s", 1), ("s", 1), ("u", 2, _type_spec), ("t", _DICTIONARY_ENCODING), ("tv", None), ("tv", _KEY_VALUE)]
_FIELD[5] = ("tv", _FIELD)  # children
_SCHEMA: Spec = [("s", 2), ("tv", _FIELD), ("tv", _KEY_VALUE), ("v", 8)]
_BODY_COMPRESSION: Spec = [("s", 1), ("s", 1)]
_RECORD_BATCH: Spec = [("s", 8), ("v", 16), ("v", 16), ("t", _BODY_COMPRESSION), ("v", 8)]
_DICTIONARY_BATCH: Spec = [("s", 8), ("t", _RECORD_BATCH), ("s", 1)]
_HEADERS: Dict[int, Spec] = {1: _SCHEMA, 2: _DICTIONARY_BATCH, 3: _RECORD_BATCH}
_MESSAGE: Spec = [("s", 2), ("s", 1), ("u", 1, lambda t: _HEADERS.get(t)), ("s", 8), ("tv", _KEY_VALUE)]


def verify_message(meta: Union[memoryview, bytes], limits: IpcLimits = DEFAULT_LIMITS) -> FlatBuffer:
    """Bounds-check the flatbuffer ``Message`` ``meta`` (everything a decoder follows) and refuse
    with ``ERR_IPC_LIMIT`` what decoding it would produce beyond ``limits``. Raises
    ``ERR_IPC_INVALID`` for a malformed flatbuffer or a header other than Schema /
    DictionaryBatch / RecordBatch. Returns the (verified) flatbuffer.

    What a table produces is the same for every reference to it, so each distinct table is
    walked once and its totals (bytes, entries, fields, tables, height) are remembered: the totals
    count every reference, the work is proportional to the bytes stored. Offsets only point
    forward, so the references form a DAG (no cycles)."""
    fb = FlatBuffer(memoryview(meta))
    data, read, n = fb.data, fb.read, fb.n
    max_bytes, max_entries = limits.max_metadata_bytes, limits.max_metadata_entries
    max_fields, max_depth = limits.max_fields, limits.max_nesting_depth
    memo: Dict[Tuple[int, int], Tuple[int, int, int, int, int]] = {}
    visits = 0

    def over(name: str, what: str) -> ArrowShmError:
        return ArrowShmError(ERR_IPC_LIMIT, f"message metadata over {name} ({getattr(limits, name)}): {what}")

    def open_table(t: int, spec: Spec) -> Tuple[List[int], List[Tuple[int, Spec]]]:
        """Check one table; its own totals [bytes, entries, fields, tables, height] and the tables
        it references (to be added)."""
        nonlocal visits
        visits += 1
        if visits > MAX_TABLES:
            raise ArrowShmError(ERR_IPC_LIMIT, f"message metadata has more than {MAX_TABLES} tables")
        if t < 0 or t + 4 > n or t & 3:
            raise _invalid(f"flatbuffer table at {t} outside its {n} bytes or misaligned")
        vt = t - _i32.unpack_from(data, t)[0]
        if vt < 0 or vt & 1 or vt + 4 > n:
            raise _invalid("flatbuffer vtable outside the buffer or misaligned")
        vsize, tsize = _vt_head.unpack_from(data, vt)
        if vsize < 4 or vsize & 1 or vt + vsize > n or tsize < 4 or t + tsize > n:
            raise _invalid("flatbuffer vtable or table has a bad size")
        nslots = min((vsize - 4) // 2, len(spec))  # slots this side does not know are never read
        slots = (_slots[nslots] if nslots < 16 else struct.Struct(f"<{nslots}H")).unpack_from(data, vt + 4)
        produced = 0
        children: List[Tuple[int, Spec]] = []
        for i in range(nslots):
            fo = slots[i]
            if not fo:
                continue
            if fo < 4:
                raise _invalid(f"flatbuffer field at offset {fo} overlaps its table's vtable offset")
            kind = spec[i]
            tag = kind[0]
            if tag == "s":
                if fo + kind[1] > tsize:
                    raise _invalid("flatbuffer scalar overruns its table")
                continue
            if fo + 4 > tsize:
                raise _invalid("flatbuffer offset overruns its table")
            pos = t + fo
            target = pos + _u32.unpack_from(data, pos)[0]  # inside the table, checked above
            if tag == "str":
                produced += fb.vector_at(target, 1, 1)[1]
            elif tag == "v":
                produced += kind[1] * fb.vector_at(target, kind[1])[1]
            elif tag == "t":
                children.append((target, kind[1]))
            elif tag == "tv":
                start, count = fb.vector_at(target, 4)
                produced += 4 * count
                sub = kind[1]
                # Each element adds at least one field or entry: bounded before it is read.
                if sub is _FIELD and count > max_fields:
                    raise over("max_fields", f"a vector of {count} fields")
                if sub is _KEY_VALUE and count > max_entries:
                    raise over("max_metadata_entries", f"a vector of {count} key/value entries")
                offsets = struct.unpack_from(f"<{count}I", data, start)  # inside the checked vector
                children.extend((start + 4 * k + off, sub) for k, off in enumerate(offsets))
            else:  # union: the spec depends on the type slot
                tfo = slots[kind[1]] if kind[1] < nslots else 0
                type_id = read(_u8, t + tfo) if tfo else 0
                sub = kind[2](type_id)
                if sub is None:
                    raise _invalid(f"message header type {type_id} is not Schema/DictionaryBatch/RecordBatch")
                children.append((target, sub))
        return [produced, 1 if spec is _KEY_VALUE else 0, 1 if spec is _FIELD else 0, 1, 0], children

    def check(totals: List[int]) -> None:
        # Every table walked is referenced from the root at least once: its totals are a lower bound.
        if totals[0] > max_bytes:
            raise over("max_metadata_bytes", f"strings and vectors add up to more than {max_bytes} bytes once decoded")
        if totals[1] > max_entries:
            raise over("max_metadata_entries", f"more than {max_entries} key/value entries")
        if totals[2] > max_fields:
            raise over("max_fields", f"more than {max_fields} fields")
        if totals[3] > MAX_TABLES:
            raise ArrowShmError(ERR_IPC_LIMIT, f"message metadata references more than {MAX_TABLES} tables")

    root = read(_u32, 0)
    # Depth-first, children before their parent, with an explicit stack (no recursion limit):
    # frames of [table, spec, depth, totals, children, next child].
    stack: List[List[Any]] = [[root, _MESSAGE, 0, *open_table(root, _MESSAGE), 0]]
    while stack:
        frame = stack[-1]
        t, spec, depth, totals, children, i = frame
        if i < len(children):
            frame[5] = i + 1
            child, sub = children[i]
            done = memo.get((child, id(sub)))
            if done is None:
                if depth + 1 > max_depth:
                    raise over("max_nesting_depth", "tables nested deeper than that")
                stack.append([child, sub, depth + 1, *open_table(child, sub), 0])
                continue
        else:
            stack.pop()
            check(totals)
            done = memo[(t, id(spec))] = tuple(totals)
            if not stack:
                break
            totals = stack[-1][3]
            depth -= 1
        if depth + 1 + done[4] > max_depth:
            raise over("max_nesting_depth", "tables nested deeper than that")
        totals[0] += done[0]
        totals[1] += done[1]
        totals[2] += done[2]
        totals[3] += done[3]
        if done[4] + 1 > totals[4]:
            totals[4] = done[4] + 1
    return fb


# ------------------------------------------------------------------------------------------------
# Counts fixed by the schema (§14.1).

_METADATA_V5 = 4
_LAST_KNOWN_TYPE = 26  # LargeListView
_VIEW_TYPES = (23, 24)  # BinaryView, Utf8View
# Field (Schema.fbs): type_type 2, type 3, dictionary 4, children 5.


def _own_buffers(type_id: int, union_mode: int, version: int) -> int:
    """Buffers of one field's own layout (children not included), by Schema.fbs type id."""
    if type_id in (1, 22):  # Null, RunEndEncoded
        return 0
    if type_id in (13, 16):  # Struct_, FixedSizeList
        return 1
    if type_id == 14:  # Union: type ids (+ offsets when dense) (+ validity before V5)
        return (2 if union_mode == 1 else 1) + (1 if version < _METADATA_V5 else 0)
    if type_id in (4, 5, 19, 20, 25, 26):  # Binary, Utf8, LargeBinary, LargeUtf8, ListView, LargeListView
        return 3
    return 2  # fixed width, List, LargeList, Map, and the views before their variadic buffers


@dataclass
class BatchLayout:
    nodes: int = 0
    #: Buffers before the variadic ones of view types.
    buffers: int = 0
    #: BinaryView / Utf8View fields: one variadicBufferCounts entry each.
    views: int = 0
    #: A type id this side does not know, if a field has one.
    unknown_type: Optional[int] = None


@dataclass
class SchemaLayout:
    batch: BatchLayout = field(default_factory=BatchLayout)
    #: Of each dictionary's DictionaryBatch, by dictionary id.
    dictionaries: Dict[int, BatchLayout] = field(default_factory=dict)


def schema_layout(fb: FlatBuffer, schema: int, version: int) -> SchemaLayout:
    """The layout of every batch of a stream, from its Schema table, already checked by
    :func:`verify_message` (so it reads without bounds checks). Each distinct Field table is laid
    out once (fields may be shared, like everything in a flatbuffer)."""
    data = fb.data
    pending: Dict[int, int] = {}  # dictionary id -> the first field that uses it
    order: List[int] = []  # the ids of pending, in the order they were found
    memo: Dict[Tuple[int, bool], Tuple[int, int, int, Optional[int]]] = {}

    def slot(t: int, i: int) -> int:
        """Position of field ``i`` of table ``t``, 0 if absent."""
        vt = t - _i32.unpack_from(data, t)[0]
        if 6 + 2 * i > _u16.unpack_from(data, vt)[0]:
            return 0
        fo = _u16.unpack_from(data, vt + 4 + 2 * i)[0]
        return t + fo if fo else 0

    def target(pos: int) -> int:
        offset: int = _u32.unpack_from(data, pos)[0]
        return pos + offset

    def children_of(f: int) -> List[int]:
        pos = slot(f, 5)
        if not pos:
            return []
        vec = target(pos)
        return [target(p) for p in range(vec + 4, vec + 4 + 4 * _u32.unpack_from(data, vec)[0], 4)]

    def summary(root: int, as_index: bool) -> Tuple[int, int, int, Optional[int]]:
        """(nodes, buffers, views, unknown type) of a field and its children; ``as_index``: a
        dictionary-encoded field counts as its indices (its values are in a DictionaryBatch)."""
        stack: List[Tuple[int, bool, Optional[List[int]]]] = [(root, as_index, None)]
        while stack:
            f, index, children = stack.pop()
            key = (f, index)
            if key in memo:
                continue
            if children is None:  # first time here
                dictionary = slot(f, 4)
                if dictionary and index:
                    id_pos = slot(target(dictionary), 0)
                    dict_id = _i64.unpack_from(data, id_pos)[0] if id_pos else 0
                    if dict_id not in pending:
                        pending[dict_id] = f
                        order.append(dict_id)
                    memo[key] = (1, 2, 0, None)
                    continue
                children = children_of(f)
                if children:  # children first (offsets point forward: no cycles)
                    stack.append((f, index, children))
                    stack.extend((c, True, None) for c in children)
                    continue
            pos = slot(f, 2)
            type_id = data[pos] if pos else 0
            if type_id == 0:
                raise _invalid("a schema field has no type")
            union_mode = 0
            if type_id == 14 and slot(f, 3):
                mode_pos = slot(target(slot(f, 3)), 0)
                union_mode = _i16.unpack_from(data, mode_pos)[0] if mode_pos else 0
            nodes, views = 1, 1 if type_id in _VIEW_TYPES else 0
            buffers = _own_buffers(type_id, union_mode, version)
            unknown = type_id if type_id > _LAST_KNOWN_TYPE else None
            for c in children:
                cn, cb, cv, cu = memo[(c, True)]
                nodes, buffers, views, unknown = nodes + cn, buffers + cb, views + cv, unknown or cu
            memo[key] = (nodes, buffers, views, unknown)
        return memo[(root, as_index)]

    def layout_of(fields: List[int], as_index: bool) -> BatchLayout:
        out = BatchLayout()
        for f in fields:
            nodes, buffers, views, unknown = summary(f, as_index)
            out.nodes, out.buffers, out.views = out.nodes + nodes, out.buffers + buffers, out.views + views
            out.unknown_type = out.unknown_type or unknown
        return out

    fields_pos = slot(schema, 1)
    top: List[int] = []
    if fields_pos:
        vec = target(fields_pos)
        top = [target(p) for p in range(vec + 4, vec + 4 + 4 * _u32.unpack_from(data, vec)[0], 4)]
    layout = SchemaLayout(batch=layout_of(top, True))
    # A dictionary's value type may hold dictionary-encoded fields itself: until none is new.
    done = 0
    while done < len(order):
        dict_id = order[done]
        done += 1
        layout.dictionaries[dict_id] = layout_of([pending[dict_id]], False)
    return layout


def check_batch_counts(fb: FlatBuffer, record_batch: int, layout: BatchLayout, what: str) -> None:
    """Counts of a verified RecordBatch table against ``layout``, before anything walks them."""
    if layout.unknown_type is not None:
        raise ArrowShmError(ERR_IPC_UNSUPPORTED, f"{what}: the schema has a field of type {layout.unknown_type}, unknown to this side")
    nodes = fb.vector(record_batch, 1, 16)[1]
    if nodes != layout.nodes:
        raise _invalid(f"{what} declares {nodes} field nodes, its schema has {layout.nodes}")
    start, views = fb.vector(record_batch, 4, 8)
    if views != layout.views:
        raise _invalid(f"{what} declares {views} variadic buffer counts, its schema has {layout.views} view fields")
    buffers = layout.buffers
    for k in range(views):
        count = _i64.unpack_from(fb.data, start + 8 * k)[0]
        if count < 0:
            raise _invalid(f"{what} declares a negative variadic buffer count")
        buffers += count
    declared = fb.vector(record_batch, 2, 16)[1]
    if declared != buffers:
        raise _invalid(f"{what} declares {declared} buffers, its schema needs {buffers}")


class SchemaCache:
    """Schema messages a channel already verified, with their layouts: a sender repeats the same
    Schema message with every table, and a byte-identical message verifies the same (against the
    same limits: one cache per channel). Holds at most ``max_entries`` messages of at most
    ``max_message_bytes`` each (copies: never the received mapping), the most recent kept."""

    def __init__(self, max_entries: int = 8, max_message_bytes: int = 64 * 1024) -> None:
        self._entries: Dict[bytes, Tuple[FlatBuffer, SchemaLayout]] = {}
        self._max_entries = max_entries
        self._max_message_bytes = max_message_bytes

    def get(self, meta: memoryview) -> Optional[Tuple[FlatBuffer, SchemaLayout]]:
        return self._entries.get(bytes(meta)) if len(meta) <= self._max_message_bytes else None

    def put(self, meta: memoryview, layout: SchemaLayout) -> None:
        if len(meta) > self._max_message_bytes:
            return
        key = bytes(meta)
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (FlatBuffer(memoryview(key)), layout)


class MessageChecker:
    """Checks one message after another (``walk_messages``), remembering the stream's schema so
    that each batch's counts are checked against it. Share one between a stream's prologue and its
    records (``mode="batches"``). With ``schemas``, a Schema message found there is not verified
    again."""

    def __init__(self, limits: Union[IpcLimits, Mapping[str, int], None] = None, schemas: Optional[SchemaCache] = None) -> None:
        self.limits = resolve_ipc_limits(limits)
        self.layout: Optional[SchemaLayout] = None
        self._schemas = schemas
        self._known: Optional[SchemaLayout] = None  # the layout of the message verify() found in the cache

    def verify(self, meta: memoryview) -> FlatBuffer:
        self._known = None
        if self._schemas is not None:
            hit = self._schemas.get(meta)
            if hit is not None:
                fb, self._known = hit
                return fb
        return verify_message(meta, self.limits)

    def check_counts(self, fb: FlatBuffer, header_type: int, header: int, version: int, where: str) -> None:
        if header_type == 1:  # Schema
            if self._known is not None:
                self.layout = self._known
                return
            self.layout = schema_layout(fb, header, version)
            if self._schemas is not None:
                self._schemas.put(fb.data, self.layout)
            return
        if self.layout is None:
            return  # "batches" mode without the prologue's checker: nothing to compare with
        if header_type == 3:
            check_batch_counts(fb, header, self.layout.batch, f"{where}: the record batch")
            return
        dict_id = fb.scalar(header, 0, _i64)
        layout = self.layout.dictionaries.get(dict_id)
        if layout is None:
            raise _invalid(f"{where}: a dictionary batch for id {dict_id}, which no field of the schema uses")
        data = fb.table(header, 1)
        if data is None:
            raise _invalid(f"{where}: dictionary batch without data")
        check_batch_counts(fb, data, layout, f"{where}: the dictionary batch")
