"""Arrow IPC stream framing validation (PROTOCOL.md §7) and decoding with pyarrow.

:func:`validate_stream` walks every encapsulated message of a stream with bounds checks before any
byte is handed to pyarrow: continuation / metadata_size, the flatbuffer ``Message`` (verified and
held to the decoding limits of §14.1 by :mod:`.limits`, batch counts checked against the schema),
``bodyLength`` and every buffer ``(offset, length)`` of record and dictionary batches. All
arithmetic is on Python integers, so nothing can overflow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Optional, Union

import pyarrow as pa

from .errors import (
    ERR_INVALID_ARGUMENT,
    ERR_IPC_INVALID,
    ERR_IPC_TRUNCATED,
    ERR_IPC_UNSUPPORTED,
    ArrowShmError,
)
from .limits import FlatBuffer
from .limits import IpcLimits, MessageChecker, SchemaCache
from .trace import trace_stage

CONTINUATION = 0xFFFFFFFF
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"

# MessageHeader union tags (Message.fbs)
HEADER_SCHEMA = 1
HEADER_DICTIONARY_BATCH = 2
HEADER_RECORD_BATCH = 3
_HEADER_NAMES = {0: "NONE", 1: "Schema", 2: "DictionaryBatch", 3: "RecordBatch", 4: "Tensor", 5: "SparseTensor"}

_u8 = struct.Struct("<B")
_i16 = struct.Struct("<h")
_i32 = struct.Struct("<i")
_u32 = struct.Struct("<I")
_i64 = struct.Struct("<q")


def _invalid(msg: str) -> ArrowShmError:
    return ArrowShmError(ERR_IPC_INVALID, msg)


def _truncated(msg: str) -> ArrowShmError:
    return ArrowShmError(ERR_IPC_TRUNCATED, msg)


@dataclass
class StreamInfo:
    """What :func:`validate_stream` learned about a stream."""

    messages: int
    record_batches: int
    dictionary_batches: int
    #: Offset just past the end-of-stream marker (or the end of the range if it has none).
    end: int


def _check_buffers(fb: FlatBuffer, rb: int, body_length: int, where: str) -> None:
    length = fb.scalar(rb, 0, _i64)
    if length < 0:
        raise _invalid(f"{where}: negative row count {length}")
    _, _nodes = fb.vector(rb, 1, 16)  # bounds-checked; values are checked by pyarrow
    start, count = fb.vector(rb, 2, 16)
    for i in range(count):
        off = _i64.unpack_from(fb.data, start + 16 * i)[0]
        blen = _i64.unpack_from(fb.data, start + 16 * i + 8)[0]
        if off < 0 or blen < 0 or off + blen > body_length:
            raise _invalid(
                f"{where}: buffer {i} (offset {off}, length {blen}) lies outside the {body_length}-byte body"
            )


@dataclass
class MessageSpan:
    """Where one encapsulated message lies in a stream: ``[start, end)``, prefix to end of body."""

    header_type: int
    start: int
    end: int
    #: DictionaryBatch only: the dictionary id and whether it is a delta.
    dictionary_id: int = 0
    is_delta: bool = False


def walk_messages(
    data: Union[memoryview, bytes, pa.Buffer], mode: str = "stream", checker: Optional[MessageChecker] = None
) -> tuple[list[MessageSpan], int]:
    """Walk the encapsulated messages of ``data`` with bounds checks; returns them and the offset
    where the walk stopped (just past an end-of-stream marker, or the end of ``data``).

    ``mode="stream"``: a whole IPC stream, first message (only) a Schema. ``mode="batches"``: the
    payload of a stream record (PROTOCOL.md §12.2): DictionaryBatches then exactly one RecordBatch,
    no Schema, no end-of-stream marker. Raises ``ERR_IPC_TRUNCATED``/``ERR_IPC_INVALID``.

    Each message's flatbuffer is first checked against the decoding limits of §14.1 by
    ``checker`` (``ERR_IPC_LIMIT``), which also checks each batch's counts against the schema it
    saw (``ERR_IPC_INVALID`` / ``ERR_IPC_UNSUPPORTED``): pass the checker that walked a stream's
    prologue when walking its records (``mode="batches"``).
    """
    if checker is None:
        checker = MessageChecker()
    view = memoryview(data).cast("B")
    n = len(view)
    pos = 0
    spans: list[MessageSpan] = []
    while pos < n:
        if n - pos < 4:
            raise _truncated(f"stream ends inside a message prefix at byte {pos}")
        word = _u32.unpack_from(view, pos)[0]
        if word == CONTINUATION:
            if n - pos < 8:
                raise _truncated(f"stream ends inside a message prefix at byte {pos}")
            meta_size = _i32.unpack_from(view, pos + 4)[0]
            prefix = 8
        else:
            meta_size = _i32.unpack_from(view, pos)[0]
            prefix = 4
        if meta_size == 0:
            if mode == "batches":
                raise _invalid(f"end-of-stream marker inside a stream record at byte {pos}")
            pos += prefix
            break
        if meta_size < 0:
            raise _invalid(f"negative metadata_size {meta_size} at byte {pos}")
        meta_start = pos + prefix
        if meta_size > n - meta_start:
            raise _truncated(f"message at byte {pos}: {meta_size}-byte metadata runs past the end of the {n}-byte stream")
        fb = checker.verify(view[meta_start : meta_start + meta_size])
        msg = fb.root()
        header_type = fb.scalar(msg, 1, _u8)
        header = fb.table(msg, 2)
        body_length = fb.scalar(msg, 3, _i64)
        where = f"message {len(spans)} at byte {pos}"
        if header_type not in (HEADER_SCHEMA, HEADER_DICTIONARY_BATCH, HEADER_RECORD_BATCH):
            name = _HEADER_NAMES.get(header_type, str(header_type))
            raise _invalid(f"{where}: header type {name} is not Schema/DictionaryBatch/RecordBatch")
        if header is None:
            raise _invalid(f"{where}: message without a header")
        if mode == "stream" and (header_type == HEADER_SCHEMA) != (not spans):
            raise _invalid(f"{where}: the first message, and only it, must be a Schema")
        if mode == "batches" and header_type == HEADER_SCHEMA:
            raise _invalid(f"{where}: a Schema inside a stream record")
        if body_length < 0:
            raise _invalid(f"{where}: negative bodyLength {body_length}")
        body_start = meta_start + meta_size
        if body_length > n - body_start:
            raise _truncated(f"{where}: {body_length}-byte body runs past the end of the {n}-byte stream")
        checker.check_counts(fb, header_type, header, fb.scalar(msg, 0, _i16), where)
        span = MessageSpan(header_type, pos, body_start + body_length)
        if header_type == HEADER_RECORD_BATCH:
            _check_buffers(fb, header, body_length, where)
        elif header_type == HEADER_DICTIONARY_BATCH:
            data_rb = fb.table(header, 1)
            if data_rb is None:
                raise _invalid(f"{where}: dictionary batch without data")
            _check_buffers(fb, data_rb, body_length, where)
            span.dictionary_id = fb.scalar(header, 0, _i64)
            span.is_delta = bool(fb.scalar(header, 2, _u8))
        spans.append(span)
        pos = span.end
        if mode == "batches" and header_type == HEADER_RECORD_BATCH:
            break
    if mode == "batches":
        if not spans or spans[-1].header_type != HEADER_RECORD_BATCH:
            raise _invalid("a stream record must end with one RecordBatch message")
    elif not spans:
        raise _invalid("stream has no Schema message")
    return spans, pos


def validate_stream(
    data: Union[memoryview, bytes, pa.Buffer], limits: Optional[IpcLimits] = None, schemas: Optional[SchemaCache] = None
) -> StreamInfo:
    """Validate the framing of an IPC stream (§7) and its decoding limits (§14.1, ``limits``:
    the defaults if ``None``). Raises ``ERR_IPC_TRUNCATED``/``ERR_IPC_INVALID``/``ERR_IPC_LIMIT``.

    Accepts the pre-0.15 forms (no continuation marker, 4-byte zero end of stream) and treats the
    end of the range as end of stream. Bytes after an end-of-stream marker are ignored. ``schemas``:
    a channel's cache of Schema messages it already verified (:class:`.limits.SchemaCache`).
    """
    spans, end = walk_messages(data, "stream", MessageChecker(limits, schemas))
    return StreamInfo(
        messages=len(spans),
        record_batches=sum(1 for s in spans if s.header_type == HEADER_RECORD_BATCH),
        dictionary_batches=sum(1 for s in spans if s.header_type == HEADER_DICTIONARY_BATCH),
        end=end,
    )


class PipeFile:
    """What pyarrow asks of a Python file object it reads or writes one way, nothing seekable."""

    closed = False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def map_arrow_error(exc: BaseException) -> ArrowShmError:
    """Translate a pyarrow decoding failure into the protocol's error codes."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, pa.ArrowNotImplementedError):
        return ArrowShmError(ERR_IPC_UNSUPPORTED, text)
    if isinstance(exc, EOFError) or "truncated" in text.lower() or "expected to read" in text.lower():
        return ArrowShmError(ERR_IPC_TRUNCATED, text)
    return ArrowShmError(ERR_IPC_INVALID, text)


def _storage_type(t: pa.DataType) -> pa.DataType:
    """The same physical layout without value-range rules (date64/time/decimal -> ints/bytes)."""
    if pa.types.is_date64(t) or pa.types.is_time64(t):
        return pa.int64()
    if pa.types.is_time32(t):
        return pa.int32()
    if pa.types.is_decimal(t):
        return pa.binary(t.byte_width)
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_storage_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_storage_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_storage_type(t.value_type)), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(
            t.key_field.with_type(_storage_type(t.key_type)),
            t.item_field.with_type(_storage_type(t.item_type)),
            t.keys_sorted,
        )
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_storage_type(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_dictionary(t):
        return pa.dictionary(t.index_type, _storage_type(t.value_type), t.ordered)
    return t


_VALUE_RULES = ("whole number of days", "acceptable range", "does not fit in precision")


def _breaks_only_value_rules(e: pa.ArrowInvalid) -> bool:
    """The failure is one of Arrow's value rules that its own integration files break (harmless to read)."""
    return any(rule in str(e) for rule in _VALUE_RULES)


#: What a received table is checked for after decoding (the ``validate`` option; same names in every peer):
#: ``"bounds"`` (default) everything Arrow C++ kernels need to stay inside the buffers (offsets,
#: sizes, dictionary indices, run ends, union ids, views), which is Arrow's full validation except
#: its O(bytes) UTF-8 scan; ``"full"`` that scan too; ``"framing"`` nothing beyond the IPC framing
#: and buffer bounds checked before decoding (for trusted senders).
VALIDATE_MODES = ("bounds", "full", "framing")
DEFAULT_VALIDATE = "bounds"


def check_validate(validate: object) -> str:
    """``validate`` if it is one of :data:`VALIDATE_MODES`, else ``ERR_INVALID_ARGUMENT``."""
    if validate not in VALIDATE_MODES:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"validate must be one of {', '.join(VALIDATE_MODES)}; got {validate!r}")
    return str(validate)


def _binary_type(t: pa.DataType) -> Optional[pa.DataType]:
    """``t`` with every utf8 / large_utf8 / string_view (nested ones too) replaced by the binary
    type of the same layout; ``None`` when ``t`` holds no strings."""
    if pa.types.is_string(t):
        return pa.binary()
    if pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_string_view(t):
        return pa.binary_view()
    if isinstance(t, pa.BaseExtensionType):
        return _binary_type(t.storage_type)
    if pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t):
        values = _binary_type(t.value_type)
        if values is None:
            return None
        if pa.types.is_dictionary(t):
            return pa.dictionary(t.index_type, values, t.ordered)
        return pa.run_end_encoded(t.run_end_type, values)
    fields = [t.field(i) for i in range(t.num_fields)]
    children = [_binary_type(f.type) for f in fields]
    if all(c is None for c in children):
        return None
    new = [f if c is None else f.with_type(c) for f, c in zip(fields, children)]
    if pa.types.is_list(t):
        return pa.list_(new[0])
    if pa.types.is_large_list(t):
        return pa.large_list(new[0])
    if pa.types.is_fixed_size_list(t):
        return pa.list_(new[0], t.list_size)
    if pa.types.is_list_view(t):
        return pa.list_view(new[0])
    if pa.types.is_large_list_view(t):
        return pa.large_list_view(new[0])
    if pa.types.is_map(t):
        entries = new[0].type
        return pa.map_(entries.field(0), entries.field(1), t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct(new)
    if pa.types.is_union(t):
        return pa.union(new, t.mode, t.type_codes)
    return None  # a nested type unknown here keeps its strings: validated in full, never less


def _as_binary(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A zero-copy view of ``column`` with its strings as binary (their UTF-8 is then not scanned)."""
    binary = _binary_type(column.type)
    if binary is None:
        return column
    return pa.chunked_array([chunk.view(binary) for chunk in column.chunks], binary)


def validate_table(table: pa.Table, validate: str = DEFAULT_VALIDATE) -> None:
    """Check a decoded ``table`` as the ``validate`` policy says (see :data:`VALIDATE_MODES`).

    ``"bounds"`` runs Arrow's full validation on a zero-copy view of each column whose strings
    are binary: every offset, size and index is still checked against its buffer. Arrow C++ also
    enforces value rules (date64 whole days, time-of-day range, decimal precision) that Arrow's
    own integration files break and that are harmless to read: when only such a rule fails, the
    column is validated again as its physical storage type, so every memory-safety check still runs.
    """
    if check_validate(validate) == "framing":
        return
    if validate == "full":
        try:
            table.validate(full=True)
            return
        except pa.ArrowInvalid as e:
            if not _breaks_only_value_rules(e):
                raise
    table.validate()  # the shape: every column as long as the table (cheap)
    for i, column in enumerate(table.columns):
        try:
            _validate_column(column if validate == "full" else _as_binary(column))
        except pa.ArrowInvalid as e:
            raise pa.ArrowInvalid(f"Column {i}: {e}") from None


def batch_validator(schema: pa.Schema, validate: str = DEFAULT_VALIDATE) -> Callable[[pa.RecordBatch], None]:
    """:func:`validate_table` for each batch of a stream of ``schema``, planned once: when no
    field holds strings, ``"bounds"`` is Arrow's full validation, so a batch is validated as it
    is and only one that fails goes through :func:`validate_table` (which forgives the value
    rules or raises). ``"framing"`` checks the batch's shape (columns as long as the batch)."""
    if check_validate(validate) == "framing":
        return lambda batch: batch.validate()
    if validate == "bounds" and any(_binary_type(f.type) is not None for f in schema):
        return lambda batch: validate_table(pa.Table.from_batches([batch]), validate)

    def full(batch: pa.RecordBatch) -> None:
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid:
            validate_table(pa.Table.from_batches([batch]), validate)

    return full


def _validate_column(column: pa.ChunkedArray) -> None:
    try:
        column.validate(full=True)
        return
    except pa.ArrowInvalid as e:
        if not _breaks_only_value_rules(e):
            raise
        first = e
    # Only a column failing a value rule is taken apart into Python chunk objects, which pyarrow
    # cannot build for every type (month intervals: KeyError).
    storage = _storage_type(column.type)
    for chunk in column.chunks:
        try:
            chunk.validate(full=True)
            continue
        except pa.ArrowInvalid as e:
            if not _breaks_only_value_rules(e) or storage == chunk.type:
                raise
        try:
            viewed = chunk.view(storage)
        except (pa.ArrowException, TypeError) as e:
            raise first from e
        viewed.validate(full=True)


def decode_table(buf: pa.Buffer, *, validate: str = DEFAULT_VALIDATE, message_id: int = 0) -> pa.Table:
    """Decode an (already framing-validated) IPC stream in place; columns point into ``buf``.

    The decoded table is then checked as ``validate`` says (:func:`validate_table`): by default
    so that hostile offsets can never lead to an out-of-bounds read later. ``message_id``: the
    frame's, for :func:`.trace.trace_stage`.
    """
    try:
        reader = pa.ipc.open_stream(buf)
        table = reader.read_all()
        trace_stage("decode", message_id)
        validate_table(table, validate)
        trace_stage("validate", message_id)
        return table
    except ArrowShmError:
        raise
    except (pa.ArrowException, EOFError, ValueError, OSError, TypeError, IndexError, OverflowError) as e:
        raise map_arrow_error(e) from None


def read_ipc_file_as_stream(data: bytes) -> bytes:
    """Re-frame an Arrow IPC *file* (``ARROW1`` magic) as a stream (batches and dictionaries)."""
    try:
        reader = pa.ipc.open_file(pa.py_buffer(data))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        # The file reader checks no offsets: hostile ones would reach the writer, which slices
        # buffers with them (negative lengths, reads past the buffers). Check what a receiver checks.
        validate_table(pa.Table.from_batches(batches, schema=reader.schema))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, reader.schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        stream: bytes = sink.getvalue().to_pybytes()
    except (pa.ArrowException, EOFError, ValueError, OSError) as e:
        raise map_arrow_error(e) from None
    # pyarrow's writer can still turn contents that pass validation into a stream no receiver
    # takes (a negative body length, found by fuzzing): check the stream as a receiver would.
    try:
        validate_stream(stream)
    except ArrowShmError as e:
        raise ArrowShmError(ERR_IPC_INVALID, f"the file's contents do not re-frame as a valid stream: {e.message}") from None
    return stream
