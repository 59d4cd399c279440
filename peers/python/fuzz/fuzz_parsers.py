#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of every parser of the Python peer that reads
untrusted bytes.

Input format: the first byte selects the target (``TARGETS[byte % len(TARGETS)]``), the rest is
that target's input. ``FUZZ_TARGET=<name>`` forces one target; the selector byte is then still
consumed (and ignored), so seeds, corpora and crashers work in both modes.

Targets (each calls the package's real entry point):

=============  ===================================================================================
frame          ``frame.decode_frame`` on one datagram; accepted frames must re-encode identically
kv             ``frame.decode_kv`` on a key/value block; accepted blocks must re-encode identically
handshake      a real ``Channel`` on a SOCK_SEQPACKET socketpair: the input is the peer's HELLO
               (listener side) or WELCOME (connecting side), optionally followed by one more frame
               dispatched after the handshake
ipc_stream     ``ipc.walk_messages(mode="stream")`` / ``validate_stream``; when they accept the
               bytes, ``ipc.decode_table`` (pyarrow decode + full validation) must give a table or
               the typed error
ipc_batches    ``ipc.walk_messages(mode="batches")`` (a ring record's payload)
table          the TABLE receive path: bytes in a sealed memfd, ``message.open_segment`` (segment
               checks, read-only map, framing) then ``Message.table`` (decode in place)
ring           ``stream.StreamReader``: a sealed ring memfd whose header page and data area come
               from the input, a prologue memfd, two eventfds; the ring header checks of
               ``_open``, then ``read()`` (record header checks, ``_decode``) until end or error
file           ``ipc.read_ipc_file_as_stream`` (the CLI's Arrow IPC *file* input)
ipc_shapes     structure-aware: the input picks the parameters of a hostile flatbuffer shape
               (PROTOCOL.md §14.1: offsets shared by many references, a DAG of fields, huge or
               lying declared counts, deep nesting, dictionary ids) and of the decoding limits;
               ``ipc.validate_stream`` must refuse it or pyarrow's decoded schema must respect them
=============  ===================================================================================

Expected behaviour: a valid result or ``ArrowShmError`` with a known code. Anything else escapes
``TestOneInput`` and libFuzzer reports it as a crash: IndexError, struct.error, ValueError,
OverflowError, a pyarrow exception our code let through, a failed round-trip assertion, a leaked
fd or shared mapping, a hang (-timeout) or a native crash.

Usage::

    python fuzz_parsers.py --make-seeds DIR          # seed corpus (shared test data + own frames)
    python fuzz_parsers.py CORPUS_DIR SEED_DIR -max_total_time=30 ...   # fuzz (libFuzzer args)
    python fuzz_parsers.py crashers/*                # replay files (exit 0 = none crashes)
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import sys
import threading
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["arrow_shm"]):
    import arrow_shm  # noqa: F401  (package __init__ pulls in channel, message, seed, ...)
    from arrow_shm import channel as ash_channel
    from arrow_shm import frame as ash_frame
    from arrow_shm import ipc as ash_ipc
    from arrow_shm import message as ash_message
    from arrow_shm import segment as ash_segment
    from arrow_shm import ring as ash_ring
    from arrow_shm import stream as ash_stream
    from arrow_shm import stream_link as ash_link
    from arrow_shm.errors import CODES, ERR_PEER_CLOSED, ArrowShmError

import pyarrow as pa

from arrow_shm.limits import DEFAULT_LIMITS, IpcLimits

# The hand-made flatbuffer builder of the shared attacker (test/python/attacks.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "test" / "python"))
import attacks  # noqa: E402

# New targets go at the end: the selector byte of kept crashers must keep its meaning.
TARGETS = ("frame", "kv", "handshake", "ipc_stream", "ipc_batches", "table", "ring", "file", "ipc_shapes")

_FORCED = os.environ.get("FUZZ_TARGET") or None
if _FORCED is not None and _FORCED not in TARGETS:
    sys.exit(f"FUZZ_TARGET={_FORCED!r} is not one of {', '.join(TARGETS)}")

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
RING_CAPACITY = ash_stream.MIN_CAPACITY  # 64 KiB data area
RING_PREFIX = 72  # header page bytes taken from the input: magic .. write_position (offset 64)


class Finding(AssertionError):
    """An invariant of a parser that accepted its input does not hold."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise Finding(what)


def _consume(table: pa.Table | pa.RecordBatch) -> None:
    """Read the decoded values the way a user would. ``validate(full=True)`` passed, so this must
    not touch memory outside the buffers; conversion errors (out-of-range dates, ...) are the
    user's business, only a native crash here is a finding."""
    try:
        table.slice(0, 64).to_pylist()
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------------------------- targets


def t_frame(data: bytes) -> None:
    f = ash_frame.decode_frame(data)
    again = ash_frame.encode_frame(f)
    # The reserved bytes (52..64) are ignored by the decoder and written as zeros.
    _check(again[:52] == data[:52] and again[64:] == data[64:], "decode_frame/encode_frame round trip differs")
    _check(ash_frame.decode_frame(again) == f, "re-decoded frame differs")


def t_kv(data: bytes) -> None:
    kv = ash_frame.decode_kv(data)
    if len(data) > ash_frame.MAX_METADATA_BYTES:
        return
    again = ash_frame.encode_kv(kv)
    _check(again == data or (not kv and data == b"\0\0\0\0"), "decode_kv/encode_kv round trip differs")


def t_handshake(data: bytes) -> None:
    """byte 0: bit 0 listener side, bit 1 a second frame follows (u16 length of the first one)."""
    if not data:
        return
    mode, rest = data[0], data[1:]
    second = None
    if mode & 2 and len(rest) >= 2:
        n = _U16.unpack_from(rest, 0)[0]
        first, second = rest[2 : 2 + n], rest[2 + n :]
    else:
        first = rest
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ch = None
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        peer.send(first)
        if second is not None:
            peer.send(second)
        ch = ash_channel.Channel(mine, listener_side=bool(mode & 1), handshake_timeout=2.0)
        mine = None  # owned by the channel now
        _check(ch.version == ash_frame.PROTOCOL_VERSION, "channel accepted another protocol version")
        if second is not None:
            try:
                msg = ch.receive(timeout=0.0)
            except ArrowShmError:
                pass
            else:  # a TABLE without fds can never be delivered as a message
                msg.close()
                raise Finding("a table was received without any fd")
    finally:
        if ch is not None:
            ch.close()
        if mine is not None:
            mine.close()
        peer.close()


def _span_invariants(spans: list, end: int, n: int) -> None:
    pos = 0
    for s in spans:
        _check(s.start == pos and s.start < s.end <= n, f"span [{s.start}, {s.end}) not contiguous/in bounds of {n}")
        pos = s.end
    _check(pos <= end <= n, f"walk end {end} outside [{pos}, {n}]")


def t_ipc_stream(data: bytes) -> None:
    view = memoryview(data)
    spans, end = ash_ipc.walk_messages(view, "stream")
    _span_invariants(spans, end, len(data))
    _check(spans[0].header_type == ash_ipc.HEADER_SCHEMA, "stream walk accepted a stream without a leading Schema")
    info = ash_ipc.validate_stream(view)
    _check(info.messages == len(spans) and info.end == end, "validate_stream disagrees with walk_messages")
    # Framing accepted: pyarrow decodes it (Message.table does exactly this).
    table = ash_ipc.decode_table(pa.py_buffer(data))
    _consume(table)


def t_ipc_batches(data: bytes) -> None:
    spans, end = ash_ipc.walk_messages(memoryview(data), "batches")
    _span_invariants(spans, end, len(data))
    _check(spans[-1].header_type == ash_ipc.HEADER_RECORD_BATCH, "batches walk did not end on a RecordBatch")
    _check(all(s.header_type == ash_ipc.HEADER_DICTIONARY_BATCH for s in spans[:-1]), "batches walk: bad message order")


def t_table(data: bytes) -> None:
    """byte 0: ipc_offset; byte 1: length adjustment (<128: shorter by b, >=128: longer by b-128)."""
    if len(data) < 2:
        return
    off, adj, body = data[0], data[1], data[2:]
    length = len(body) - adj if adj < 128 else len(body) + adj - 128
    seg = ash_segment.Segment.create(off + len(body), "fuzz-table")
    try:
        if body:
            seg.write_at(off, body)
        seg.seal()
        mapping, info = ash_message.open_segment(seg.fd, off, length)
    finally:
        seg.close()
    msg = ash_message.ReceivedTable(mapping=mapping, ipc_offset=off, ipc_length=length)
    try:
        table = msg.table
        _consume(table)
        del table
    finally:
        msg.close()


class _StubPort:
    """The channel's side of a StreamLink (stream_link.LinkPort), as far as a StreamReader uses it.
    The producer is already gone, so the reader never sleeps: at the end of the published data it
    raises ERR_PEER_CLOSED."""

    def __init__(self) -> None:
        self.failure = ArrowShmError(ERR_PEER_CLOSED, "fuzz: the producer is gone")
        self.lock = threading.Condition()
        self.sent_errors: list = []

    def send_error(self, err: ArrowShmError, correlation_id: int) -> None:
        self.sent_errors.append(err)

    def poll_fd(self) -> None:
        return None

    def pump_available(self) -> None:
        pass

    def close(self) -> None:
        pass


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def t_ring(data: bytes) -> None:
    """u16 prologue length P | 72 header-page bytes | u8 reader_slot | u32 start_position |
    P prologue bytes (IPC stream: schema, dictionaries) | data area bytes, written from
    start_position % capacity on (wrapping)."""
    fixed = 2 + RING_PREFIX + 1 + 4
    if len(data) < fixed:
        return
    plen = _U16.unpack_from(data, 0)[0]
    page = data[2 : 2 + RING_PREFIX]
    slot = data[2 + RING_PREFIX]
    start = _U32.unpack_from(data, 3 + RING_PREFIX)[0]
    prologue = data[fixed : fixed + plen]
    area = data[fixed + plen : fixed + plen + RING_CAPACITY]

    fds: list[int] = []
    try:
        ring = ash_segment.Segment.create(ash_stream.RING_HEADER_BYTES + RING_CAPACITY, "fuzz-ring")
        try:
            ring.write_at(0, page)
            at = start % RING_CAPACITY
            head = area[: RING_CAPACITY - at]
            if head:
                ring.write_at(ash_stream.RING_HEADER_BYTES + at, head)
            if area[len(head) :]:
                ring.write_at(ash_stream.RING_HEADER_BYTES, area[len(head) :])
            ring.seal(ash_stream.RING_SEALS)
            fds.append(ring.detach_fd())
        finally:
            ring.close()
        pro = ash_segment.Segment.create(len(prologue), "fuzz-prologue")
        try:
            if prologue:
                pro.write_at(0, prologue)
            pro.seal()
            fds.append(pro.detach_fd())
        finally:
            pro.close()
        fds.append(_eventfd())
        fds.append(_eventfd())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    frame = ash_frame.Frame(
        kind=ash_frame.Kind.STREAM_OPEN,
        fd_count=4,
        ipc_offset=0,
        ipc_length=len(prologue),
        metadata={
            "stream_id": "1",
            "reader_slot": str(slot),
            "start_position": str(start),
            "capacity": str(RING_CAPACITY),
        },
    )
    link = ash_link.StreamLink(_StubPort(), max_offers=1)
    reader = ash_stream.StreamReader(link, frame, fds)  # takes the fds (closes them on failure)
    try:
        for _ in range(RING_CAPACITY // 64 + 1):
            item = reader.read(timeout=0.0)
            if item is None:
                _check(reader.ended, "read() returned None before the END record")
                break
            try:
                _consume(item.batch)
            finally:
                item.release()
                del item
        else:
            raise Finding("more records than fit in the ring")
    finally:
        reader.close()


def t_file(data: bytes) -> None:
    out = ash_ipc.read_ipc_file_as_stream(data)
    # The re-framed stream was written by pyarrow from batches it read: every receiver must accept
    # it. A typed error here means hostile file contents went through to the writer unchecked.
    try:
        ash_ipc.validate_stream(out)
        table = ash_ipc.decode_table(pa.py_buffer(out))
    except ArrowShmError as e:
        raise Finding(f"read_ipc_file_as_stream returned a stream receivers reject: {e}") from None
    _consume(table)


# ------------------------------------------------------------ hostile flatbuffer shapes (§14.1)

_STRUCT, _UNION, _TIMESTAMP, _UTF8, _UTF8_VIEW, _NULL = 13, 14, 10, 5, 24, 1


def _some(fdp: "atheris.FuzzedDataProvider", bits: int) -> int:
    """Usually small, up to 2**bits: sizes and counts spread over every order of magnitude."""
    return fdp.ConsumeIntInRange(0, 1 << fdp.ConsumeIntInRange(0, bits))


def _field(b: "attacks.Builder", name: int, type_id: int, type_table: int, children: list[int],
           metadata: int | None = None, dictionary: int | None = None) -> int:
    fields = [(0, "off", name), (1, "bool", 1), (2, "u8", type_id), (3, "off", type_table),
              (5, "off", b.offset_vector(children))]
    if dictionary is not None:
        fields.append((4, "off", dictionary))
    if metadata is not None:
        fields.append((6, "off", metadata))
    return b.table(fields)


def _batch(fdp: "atheris.FuzzedDataProvider", nodes: int, buffers: int, views: int = 0,
           dictionary_id: int | None = None) -> "attacks.Parts":
    """An empty RecordBatch (in a DictionaryBatch of ``dictionary_id`` if given); the input may make
    any count lie (another value, or a declared count past the vector's data)."""
    b = attacks.Builder()
    counts = []
    for honest in (nodes, buffers, views):
        kind = fdp.ConsumeIntInRange(0, 3)
        actual = honest if kind < 2 else _some(fdp, 12)
        declared = fdp.ConsumeIntInRange(0, (1 << 32) - 1) if kind == 3 else None
        counts.append((actual, declared))
    (n, nd), (bf, bd), (v, vd) = counts
    variadic = b.struct_vector(v, 8, b"".join(struct.pack("<q", fdp.ConsumeIntInRange(-1, 2)) for _ in range(v)), vd)
    bufs = b.struct_vector(bf, 16, None, bd)
    nds = b.struct_vector(n, 16, None, nd)
    fields = [(0, "i64", 0), (1, "off", nds), (2, "off", bufs)]
    if v or vd:
        fields.append((4, "off", variadic))
    rb = b.table(fields)
    if dictionary_id is None:
        return attacks._encapsulate(attacks._message(b, attacks.HEADER_RECORD_BATCH, rb, 0))
    db = b.table([(0, "i64", dictionary_id), (1, "off", rb)])
    return attacks._encapsulate(attacks._message(b, 2, db, 0))  # DictionaryBatch


def _shape(fdp: "atheris.FuzzedDataProvider") -> tuple[bytes, int]:
    """One hostile stream and the KeyValue entries of its Schema *Message* (pyarrow hides them)."""
    b = attacks.Builder()
    shape = fdp.ConsumeIntInRange(0, 4)
    message_entries = 0
    message_md = schema_md = field_md = None
    batches: list[tuple] = []  # the honest counts of each batch, for _batch

    def shared_metadata() -> tuple[int, int]:
        count, size = _some(fdp, 17), _some(fdp, 21)
        value, key = b.string(b"v" * size), b.string(b"k" * fdp.ConsumeIntInRange(0, 3))
        return b.offset_vector([b.table([(0, "off", key), (1, "off", value)])] * count), count

    def int32() -> tuple[int, int]:
        return attacks.TYPE_INT, b.table([(0, "i32", 32), (1, "bool", 1)])

    if shape == 0:  # KeyValues sharing one value: in the Message, the Schema or a Field
        where = fdp.ConsumeIntInRange(0, 2)
        md, count = shared_metadata()
        if where == 0:
            message_md, message_entries = md, count
        elif where == 1:
            schema_md = md
        else:
            field_md = md
        top = [_field(b, b.string(b"x"), *int32(), [], field_md)]
        batches.append((1, 2, 0))
    elif shape == 1:  # a DAG of struct fields: width**depth fields from depth tables
        dag, nodes, buffers = attacks._field_dag_schema(
            fdp.ConsumeIntInRange(1, 80), fdp.ConsumeIntInRange(1, 8), fdp.ConsumeIntInRange(1, 8), _some(fdp, 16)
        )
        counts = (nodes, buffers, 0) if nodes <= 4096 else (0, 0, 0)  # past max_fields anyway
        return attacks._parts_bytes(dag + _batch(fdp, *counts) + [attacks.EOS]), 0
    elif shape == 2:  # lying counts of a small schema (int32, utf8, utf8 view, null)
        menu = [(attacks.TYPE_INT, 2, 0), (_UTF8, 3, 0), (_UTF8_VIEW, 2, 1), (_NULL, 0, 0)]
        top, nodes, buffers, views = [], 0, 0, 0
        for i in range(fdp.ConsumeIntInRange(1, 3)):
            type_id, nbuf, nview = menu[fdp.ConsumeIntInRange(0, 3)]
            type_table = b.table([(0, "i32", 32), (1, "bool", 1)]) if type_id == attacks.TYPE_INT else b.table([])
            top.append(_field(b, b.string(b"c%d" % i), type_id, type_table, []))
            nodes, buffers, views = nodes + 1, buffers + nbuf, views + nview
        batches.append((nodes, buffers, views))
    elif shape == 3:  # one union type-id vector or time zone shared by many fields
        if fdp.ConsumeBool():
            ids = b.struct_vector(_some(fdp, 16), 4)
            type_id, type_table = _UNION, b.table([(0, "i16", fdp.ConsumeIntInRange(0, 1)), (1, "off", ids)])
        else:
            tz = b.string(b"Z" * _some(fdp, 20))
            type_id, type_table = _TIMESTAMP, b.table([(0, "i16", 1), (1, "off", tz)])
        top = [_field(b, b.string(b"u"), type_id, type_table, [])] * _some(fdp, 16)
        batches.append((len(top), len(top) * 2, 0))
    else:  # dictionary ids: a batch for an id the schema has, or not
        index = b.table([(0, "i32", 32), (1, "bool", 1)])
        encoding = b.table([(0, "i64", fdp.ConsumeIntInRange(-1, 2)), (1, "off", index)])
        top = [_field(b, b.string(b"d"), *int32(), [], None, encoding)]
        batches.append((1, 2, 0, fdp.ConsumeIntInRange(-1, 2)))  # the dictionary: int32 values
        batches.append((1, 2, 0))
    fields = b.offset_vector(top)
    schema_fields = [(1, "off", fields)] + ([(2, "off", schema_md)] if schema_md is not None else [])
    schema = b.table(schema_fields)
    parts = attacks._encapsulate(attacks._message(b, attacks.HEADER_SCHEMA, schema, 0, message_md))
    for counts in batches:
        parts += _batch(fdp, *counts)
    return attacks._parts_bytes(parts + [attacks.EOS]), message_entries


def _limits(fdp: "atheris.FuzzedDataProvider") -> IpcLimits:
    if fdp.ConsumeBool():
        return DEFAULT_LIMITS
    return IpcLimits(
        max_metadata_bytes=1 + _some(fdp, 27),
        max_metadata_entries=1 + _some(fdp, 17),
        max_fields=1 + _some(fdp, 17),
        max_nesting_depth=1 + _some(fdp, 7),
    )


def _decoded(fields: "list[pa.Field]", level: int = 0) -> tuple[int, int, int, int]:
    """(fields, KeyValue entries, metadata bytes, deepest level) of pyarrow's decoded fields."""
    n = entries = size = deepest = 0
    for f in fields:
        md = f.metadata or {}
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        children = [t.field(i) for i in range(t.num_fields)] if hasattr(t, "field") and t.num_fields else []
        cn, ce, cs, cd = _decoded(children, level + 1)
        n, entries = n + 1 + cn, entries + len(md) + ce
        size += len(f.name.encode()) + sum(len(k) + len(v) for k, v in md.items()) + cs
        deepest = max(deepest, level, cd)
    return n, entries, size, deepest


def t_ipc_shapes(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    limits = _limits(fdp)
    stream, message_entries = _shape(fdp)
    ash_ipc.validate_stream(stream, limits)  # refusing is fine (a typed error)
    # Accepted: what pyarrow decodes must stay within the limits the walk enforced.
    table = ash_ipc.decode_table(pa.py_buffer(stream))
    fields, entries, size, deepest = _decoded(list(table.schema))
    md = table.schema.metadata or {}
    entries += len(md) + message_entries
    size += sum(len(k) + len(v) for k, v in md.items())
    _check(fields <= limits.max_fields, f"{fields} fields decoded under max_fields {limits.max_fields}")
    _check(entries <= limits.max_metadata_entries, f"{entries} entries decoded under max_metadata_entries {limits.max_metadata_entries}")
    _check(size <= limits.max_metadata_bytes, f"{size} metadata bytes decoded under max_metadata_bytes {limits.max_metadata_bytes}")
    # A field L levels down is table 2 + L (Message 0, Schema 1), its type table 3 + L.
    _check(not fields or deepest + 3 <= limits.max_nesting_depth, f"fields {deepest} levels deep under max_nesting_depth {limits.max_nesting_depth}")
    _consume(table)


_FUNCS = {
    "frame": t_frame,
    "kv": t_kv,
    "handshake": t_handshake,
    "ipc_stream": t_ipc_stream,
    "ipc_batches": t_ipc_batches,
    "table": t_table,
    "ring": t_ring,
    "file": t_file,
    "ipc_shapes": t_ipc_shapes,
}
_RESOURCE_TARGETS = ("handshake", "table", "ring")


# ------------------------------------------------------------------------------ leak detection


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _shared_maps() -> int:
    with open("/proc/self/maps", "rb") as f:
        return f.read().count(b"/memfd:")


def _resources() -> tuple[int, int]:
    return _open_fds(), _shared_maps()


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    name = _FORCED or TARGETS[data[0] % len(TARGETS)]
    body = data[1:]
    watch = name in _RESOURCE_TARGETS
    before = _resources() if watch else None
    try:
        _FUNCS[name](body)
    except ArrowShmError as e:
        if e.code not in CODES:
            raise Finding(f"{name}: ArrowShmError with unknown code {e.code!r}") from e
        del e
    if watch:
        after = _resources()
        if after != before:
            gc.collect()  # a reference cycle may hold the last reference: not a leak
            after = _resources()
            if after != before:
                raise Finding(
                    f"{name}: leaked resources: open fds {before[0]} -> {after[0]}, memfd mappings {before[1]} -> {after[1]}"
                )


# ----------------------------------------------------------------------------------- seeds


def _shared_dir() -> Path:
    here = Path(__file__).resolve()
    root = here.parents[3]  # fuzz -> python -> peers -> repo root
    return Path(os.environ.get("ARROW_SHM_SHARED", root.parent / "shared"))


def _sel(name: str) -> bytes:
    return bytes([TARGETS.index(name)])


def _sample_stream() -> tuple[bytes, pa.Schema]:
    dict_type = pa.dictionary(pa.int8(), pa.string())
    schema = pa.schema([("i", pa.int64()), ("s", pa.string()), ("d", dict_type), ("l", pa.list_(pa.int32()))])
    batches = [
        pa.record_batch(
            [
                pa.array([1, None, 3]),
                pa.array(["a", "bc", None]),
                pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), pa.array(["x", "y"])),
                pa.array([[1, 2], [], None], pa.list_(pa.int32())),
            ],
            schema=schema,
        ),
        pa.record_batch(
            [
                pa.array([4]),
                pa.array(["z"]),
                pa.DictionaryArray.from_arrays(pa.array([0], pa.int8()), pa.array(["w"])),
                pa.array([[7]], pa.list_(pa.int32())),
            ],
            schema=schema,
        ),
    ]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(emit_dictionary_deltas=False)) as w:
        for b in batches:
            w.write_batch(b)
    return sink.getvalue().to_pybytes(), schema


def _ring_input(prologue: bytes, records: bytes, start: int, write_position: int, slot: int = 0) -> bytes:
    page = bytearray(RING_PREFIX)
    page[0:8] = ash_stream.RING_MAGIC
    struct.pack_into("<I", page, 8, ash_stream.RING_LAYOUT_VERSION)
    struct.pack_into("<I", page, 12, ash_stream.RING_HEADER_BYTES)
    struct.pack_into("<Q", page, 16, RING_CAPACITY)
    struct.pack_into("<I", page, 24, 4)  # max_readers
    struct.pack_into("<Q", page, 64, write_position)
    return _U16.pack(len(prologue)) + bytes(page) + bytes([slot]) + _U32.pack(start) + prologue + records


def _record(kind: int, payload: bytes, sequence: int, length: int | None = None) -> bytes:
    n = length if length is not None else (64 + len(payload) + 63) // 64 * 64
    rec = bytearray(n)
    ash_ring.write_record_header(rec, 0, n, kind, sequence, len(payload))
    rec[64 : 64 + len(payload)] = payload
    return bytes(rec)


def make_seeds(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, bytes] = {}
    F, K = ash_frame.Frame, ash_frame.Kind

    # Frames and key/value blocks from the package's own encoder.
    frames = {
        "hello": F(kind=K.HELLO, metadata={"min_version": "1", "max_version": "1", "capabilities": "lease,stream", "implementation": "fuzz", "pid": "1"}),
        "welcome": F(kind=K.WELCOME, metadata={"version": "1", "capabilities": "lease,stream", "implementation": "fuzz", "pid": "1", "max_message_bytes": "1048576"}),
        "table": F(kind=K.TABLE, flags=1, message_id=7, ipc_offset=64, ipc_length=4096, fd_count=1, metadata={"k": "v", "ünï": "çødé"}),
        "ack": F(kind=K.ACK, correlation_id=7),
        "error": F(kind=K.ERROR, correlation_id=3, metadata={"code": "ERR_IPC_INVALID", "message": "bad"}),
        "error0": F(kind=K.ERROR, metadata={"code": "ERR_WHATEVER", "message": "x"}),
        "goodbye": F(kind=K.GOODBYE),
        "stream_open": F(kind=K.STREAM_OPEN, fd_count=4, ipc_length=256, metadata={"stream_id": "1", "reader_slot": "0", "start_position": "0", "capacity": "65536"}),
        "stream_segment": F(kind=K.STREAM_SEGMENT, fd_count=1, ipc_offset=8, ipc_length=100, metadata={"stream_id": "1", "sequence": "2"}),
        "subscribe": F(kind=K.SUBSCRIBE, flags=2, message_id=9),
    }
    encoded = {k: ash_frame.encode_frame(v) for k, v in frames.items()}
    for k, b in encoded.items():
        seeds[f"frame-{k}"] = _sel("frame") + b
        seeds[f"kv-{k}"] = _sel("kv") + b[64:]
    seeds["handshake-listener-hello"] = _sel("handshake") + b"\x01" + encoded["hello"]
    seeds["handshake-connect-welcome"] = _sel("handshake") + b"\x00" + encoded["welcome"]
    for k in ("ack", "error", "error0", "goodbye", "table", "stream_segment", "subscribe", "stream_open"):
        seeds[f"handshake-listener-then-{k}"] = _sel("handshake") + b"\x03" + _U16.pack(len(encoded["hello"])) + encoded["hello"] + encoded[k]
        seeds[f"handshake-connect-then-{k}"] = _sel("handshake") + b"\x02" + _U16.pack(len(encoded["welcome"])) + encoded["welcome"] + encoded[k]

    # IPC streams: our own sample, the gold streams and the hostile ones (<= 64 KiB each).
    stream, _ = _sample_stream()
    spans, _ = ash_ipc.walk_messages(stream, "stream")
    streams = {"sample": stream}
    shared = _shared_dir() / "testdata"
    for p in sorted((shared / "arrow-gold").glob("*/*.stream")):
        streams[f"gold-{p.parent.name}-{p.stem}"] = p.read_bytes()
    for p in sorted((shared / "arrow-fuzz").iterdir()):
        if p.is_file() and not p.name.endswith(".md"):
            streams[f"hostile-{p.name[-20:]}"] = p.read_bytes()
    # The shapes of §14.1 at seed size (the full-size bombs are megabytes).
    streams["bomb-metadata"] = attacks.metadata_bomb(300, 200)
    streams["bomb-schema"] = attacks.schema_bomb(300, 100)
    streams["bomb-fields"] = attacks.fields_many(300)
    streams["counts-mismatch"] = attacks.counts_mismatch()
    streams["unknown-type"] = attacks.unknown_type()
    for i in range(16):  # the generator takes any bytes: a spread of parameters to start from
        seeds[f"ipc_shapes-{i}"] = _sel("ipc_shapes") + bytes((i * 37 + k * (2 * i + 1)) % 256 for k in range(48))
    for k, b in streams.items():
        if len(b) > 65536:
            continue
        seeds[f"ipc_stream-{k}"] = _sel("ipc_stream") + b
        seeds[f"table-{k}"] = _sel("table") + b"\x00\x00" + b
    seeds["table-sample-offset8"] = _sel("table") + b"\x08\x00" + stream
    for p in sorted((shared / "arrow-gold").glob("*/*.arrow_file")):
        b = p.read_bytes()
        if len(b) <= 65536:
            seeds[f"file-{p.parent.name}-{p.stem}"] = _sel("file") + b

    # Ring: prologue = the schema message, one BATCH record per RecordBatch (its dictionaries
    # first), then END — the layout RingProducer writes.
    prologue = stream[spans[0].start : spans[0].end]
    payloads, pending = [], b""
    for s in spans[1:]:
        pending += stream[s.start : s.end]
        if s.header_type == ash_ipc.HEADER_RECORD_BATCH:
            payloads.append(pending)
            pending = b""
    for i, p in enumerate(payloads):
        seeds[f"ipc_batches-sample-{i}"] = _sel("ipc_batches") + p
    records = b"".join(_record(ash_stream.RECORD_BATCH, p, i) for i, p in enumerate(payloads))
    records += _record(ash_stream.RECORD_END, b"", len(payloads), 64)
    seeds["ring-sample"] = _sel("ring") + _ring_input(prologue, records, 0, len(records))
    start = RING_CAPACITY - 128
    wrapped = _record(ash_stream.RECORD_PADDING, b"", 0, 128) + records
    seeds["ring-wrap"] = _sel("ring") + _ring_input(prologue, wrapped, start, start + len(wrapped))
    ext = _record(ash_stream.RECORD_EXTERNAL, b"", 0, 64)  # its segment never comes: ERR_PEER_CLOSED
    seeds["ring-external"] = _sel("ring") + _ring_input(prologue, ext, 0, 64)

    for k, b in seeds.items():
        (out / k).write_bytes(b)
    return len(seeds)


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--make-seeds":
        if len(sys.argv) != 3:
            sys.exit("usage: fuzz_parsers.py --make-seeds DIR")
        n = make_seeds(Path(sys.argv[2]))
        print(f"wrote {n} seeds to {sys.argv[2]}")
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
