//! Arrow IPC stream framing validation (PROTOCOL.md §7), zero-copy decoding over a mapping, and
//! writing streams into segments.

use std::collections::HashMap;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::{FileReader, StreamDecoder};
use arrow_ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow_ipc::{MessageHeader, MetadataVersion};
use arrow_schema::{ArrowError, Schema, SchemaRef};

use crate::error::{err, Error, ErrorCode, Result};
use crate::segment::{Mapping, WritableSegment};

const CONTINUATION: u32 = 0xFFFF_FFFF;
/// The end-of-stream marker written by arrow-shm peers.
pub const EOS: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
/// Alignment of every message body and buffer written by this peer.
pub const ALIGNMENT: usize = 64;

/// What [`validate_stream`] learned about a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamInfo {
    /// Messages in the stream (the Schema included).
    pub messages: usize,
    /// RecordBatch messages.
    pub record_batches: usize,
    /// DictionaryBatch messages.
    pub dictionary_batches: usize,
    /// Offset just past the end-of-stream marker (or the end of the range if it has none).
    pub end: usize,
}

fn truncated<T>(msg: String) -> Result<T> {
    err(ErrorCode::IpcTruncated, msg)
}

fn invalid<T>(msg: String) -> Result<T> {
    err(ErrorCode::IpcInvalid, msg)
}

/// Which message an error is about (formatted only when there is an error).
struct Where {
    index: usize,
    pos: usize,
}

impl std::fmt::Display for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message {} at byte {}", self.index, self.pos)
    }
}

/// Largest expansion of a compressed buffer, per byte of compressed data: LZ4 frames reach about
/// 255:1, Zstandard about 32768:1 (an RLE block of 128 KiB from 4 bytes).
const MAX_LZ4_RATIO: u64 = 256;
const MAX_ZSTD_RATIO: u64 = 32_768;

fn check_buffers(rb: arrow_ipc::RecordBatch<'_>, body: &[u8], where_: &Where) -> Result<()> {
    let body_length = body.len() as u64;
    // arrow-rs allocates a compressed buffer's declared uncompressed length up front: a length
    // its codec cannot produce from the bytes at hand must be refused here, or the allocation
    // aborts the process (a few hundred hostile bytes can declare petabytes).
    let max_ratio = rb.compression().map(|c| match c.codec() {
        arrow_ipc::CompressionType::LZ4_FRAME => MAX_LZ4_RATIO,
        _ => MAX_ZSTD_RATIO,
    });
    if rb.length() < 0 {
        return invalid(format!("{where_}: negative row count {}", rb.length()));
    }
    if let Some(buffers) = rb.buffers() {
        for (i, b) in buffers.iter().enumerate() {
            let (off, len) = (b.offset(), b.length());
            let inside = off >= 0
                && len >= 0
                && (off as u64).checked_add(len as u64).is_some_and(|e| e <= body_length);
            if !inside {
                return invalid(format!(
                    "{where_}: buffer {i} (offset {off}, length {len}) lies outside the {body_length}-byte body"
                ));
            }
            if let (Some(ratio), true) = (max_ratio, len >= 8) {
                let at = off as usize;
                let declared = i64::from_le_bytes(body[at..at + 8].try_into().unwrap());
                let limit = (len as u64 - 8).saturating_mul(ratio).saturating_add(1024);
                if declared > 0 && declared as u64 > limit {
                    return invalid(format!(
                        "{where_}: compressed buffer {i} of {len} bytes declares an impossible uncompressed length {declared}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The encapsulated-message prefix at `pos`: (metadata size, prefix bytes), with or without the
/// continuation marker (pre-1.0 streams omit it).
fn message_prefix(data: &[u8], pos: usize) -> Result<(i32, usize)> {
    let u32_at = |p: usize| u32::from_le_bytes(data[p..p + 4].try_into().unwrap());
    let left = data.len() - pos;
    if left < 4 {
        return truncated(format!("stream ends inside a message prefix at byte {pos}"));
    }
    let word = u32_at(pos);
    if word != CONTINUATION {
        return Ok((word as i32, 4));
    }
    if left < 8 {
        return truncated(format!("stream ends inside a message prefix at byte {pos}"));
    }
    Ok((u32_at(pos + 4) as i32, 8))
}

/// Decoding limits of PROTOCOL.md §14.1, per IPC message: past any of them the message is
/// refused with `ERR_IPC_LIMIT` before anything is decoded. Every reference counts separately (a
/// flatbuffer may point many offsets at one object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the Message's flatbuffer expands to when every reference is followed: strings,
    /// vectors and tables (the flatbuffers verifier's "apparent size"). Default 64 MiB.
    pub max_metadata_bytes: usize,
    /// `KeyValue` entries of the Message's, the Schema's and every Field's custom metadata.
    /// Default 65,536.
    pub max_metadata_entries: usize,
    /// `Field` tables of a Schema, children included. Default 65,536.
    pub max_fields: usize,
    /// Tables nested inside each other, counted from the Message (Message 1, Schema 2, a
    /// top-level Field 3, its type table or a child Field 4, ...). Default 64.
    pub max_nesting_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_metadata_bytes: 64 << 20, max_metadata_entries: 65_536, max_fields: 65_536, max_nesting_depth: 64 }
    }
}

/// The walk of one Message visits at most this many tables (§14.1).
const MAX_TABLES: usize = 1_000_000;

fn over_limit<T>(msg: String) -> Result<T> {
    err(ErrorCode::IpcLimit, msg)
}

/// Verifies a Message flatbuffer within `limits`: the flatbuffers verifier follows every
/// reference (bounding bytes, tables and depth), then fields and metadata entries are counted per
/// reference, stopping at the limit.
fn verify_message<'a>(bytes: &'a [u8], limits: &Limits, where_: &Where) -> Result<arrow_ipc::Message<'a>> {
    use flatbuffers::InvalidFlatbuffer as Bad;
    let opts = flatbuffers::VerifierOptions {
        // The verifier counts the Message as depth 1; §14.1 counts it as 0, as the other peers do.
        max_depth: limits.max_nesting_depth.saturating_add(1),
        max_tables: MAX_TABLES,
        max_apparent_size: limits.max_metadata_bytes,
        ..Default::default()
    };
    let msg = arrow_ipc::root_as_message_with_opts(&opts, bytes).map_err(|e| {
        let over = match e {
            Bad::ApparentSizeTooLarge => format!("more than max_metadata_bytes {} when every reference is followed", limits.max_metadata_bytes),
            Bad::DepthLimitReached => format!("tables nested deeper than max_nesting_depth {}", limits.max_nesting_depth),
            Bad::TooManyTables => format!("more than {MAX_TABLES} tables when every reference is followed"),
            _ => return Error::new(ErrorCode::IpcInvalid, format!("{where_}: bad flatbuffer: {}", e.to_string().trim_end())),
        };
        Error::new(ErrorCode::IpcLimit, format!("{where_}: the Message flatbuffer has {over}"))
    })?;
    type Vector<'a, T> = Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<T>>>;
    let kv_len = |v: Vector<'a, arrow_ipc::KeyValue<'a>>| v.map_or(0, |v| v.len());
    let field_len = |v: Vector<'a, arrow_ipc::Field<'a>>| v.map_or(0, |v| v.len());
    let too_many_fields = || over_limit(format!("{where_}: the schema has more than max_fields {} fields", limits.max_fields));
    let mut entries = kv_len(msg.custom_metadata());
    if let Some(schema) = msg.header_as_schema() {
        entries += kv_len(schema.custom_metadata());
        // Fields counted and fields waiting to be visited never exceed max_fields together.
        let mut counted = 0usize;
        let mut pending: Vec<arrow_ipc::Field<'a>> = Vec::new();
        if field_len(schema.fields()) > limits.max_fields {
            return too_many_fields();
        }
        pending.extend(schema.fields().iter().flat_map(|v| v.iter()));
        while let Some(f) = pending.pop() {
            counted += 1;
            entries += kv_len(f.custom_metadata());
            if entries > limits.max_metadata_entries {
                break;
            }
            if counted + pending.len() + field_len(f.children()) > limits.max_fields {
                return too_many_fields();
            }
            pending.extend(f.children().iter().flat_map(|v| v.iter()));
        }
    }
    if entries > limits.max_metadata_entries {
        return over_limit(format!(
            "{where_}: more than max_metadata_entries {} custom metadata entries",
            limits.max_metadata_entries
        ));
    }
    Ok(msg)
}

/// FieldNodes, Buffers and BinaryView/Utf8View fields that a batch of some fields declares
/// (§14.1); each union adds one more buffer with metadata V4 and earlier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Layout {
    nodes: u64,
    buffers: u64,
    unions: u64,
    views: u64,
}

impl Layout {
    fn add(&mut self, o: Layout) {
        self.nodes += o.nodes;
        self.buffers += o.buffers;
        self.unions += o.unions;
        self.views += o.views;
    }
}

/// The counts a stream's schema fixes: for its RecordBatches and, per dictionary id, for its
/// DictionaryBatches (the dictionary's value field).
#[derive(Debug, Clone, Default)]
pub struct SchemaLayout {
    record: Layout,
    dictionaries: HashMap<i64, Layout>,
}

impl SchemaLayout {
    fn of(schema: arrow_ipc::Schema<'_>) -> Result<SchemaLayout> {
        let mut out = SchemaLayout::default();
        for f in schema.fields().iter().flat_map(|v| v.iter()) {
            let l = field_layout(f, false, &mut out.dictionaries)?;
            out.record.add(l);
        }
        Ok(out)
    }
}

/// A field's layout in a batch: a dictionary-encoded field as its index unless `as_values`.
/// Records the value layout of every dictionary at or below the field in `dictionaries`.
fn field_layout(f: arrow_ipc::Field<'_>, as_values: bool, dictionaries: &mut HashMap<i64, Layout>) -> Result<Layout> {
    use arrow_ipc::Type as T;
    if let (Some(d), false) = (f.dictionary(), as_values) {
        if !dictionaries.contains_key(&d.id()) {
            let values = field_layout(f, true, dictionaries)?;
            dictionaries.insert(d.id(), values);
        }
        return Ok(Layout { nodes: 1, buffers: 2, ..Layout::default() });
    }
    let mut l = Layout { nodes: 1, ..Layout::default() };
    l.buffers = match f.type_type() {
        T::Null | T::RunEndEncoded => 0,
        T::Struct_ | T::FixedSizeList => 1,
        T::Union => {
            l.unions = 1;
            match f.type_as_union().map(|u| u.mode()) {
                Some(arrow_ipc::UnionMode::Dense) => 2,
                _ => 1,
            }
        }
        T::Bool | T::Int | T::FloatingPoint | T::Decimal | T::Date | T::Time | T::Timestamp | T::Interval | T::Duration
        | T::FixedSizeBinary | T::List | T::LargeList | T::Map => 2,
        T::Binary | T::Utf8 | T::LargeBinary | T::LargeUtf8 | T::ListView | T::LargeListView => 3,
        T::BinaryView | T::Utf8View => {
            l.views = 1;
            2
        }
        other => {
            return err(
                ErrorCode::IpcUnsupported,
                format!("field {:?} has a type this peer does not know (type id {})", f.name().unwrap_or(""), other.0),
            )
        }
    };
    for c in f.children().iter().flat_map(|v| v.iter()) {
        l.add(field_layout(c, false, dictionaries)?);
    }
    Ok(l)
}

/// Checks a batch's FieldNode, Buffer and variadicBufferCounts counts against its schema: O(1)
/// each (plus one add per BinaryView/Utf8View field), before any of them is looked at.
fn check_counts(rb: arrow_ipc::RecordBatch<'_>, want: &Layout, version: MetadataVersion, where_: &Where) -> Result<()> {
    let nodes = rb.nodes().map_or(0, |v| v.len()) as u64;
    if nodes != want.nodes {
        return invalid(format!("{where_}: {nodes} field nodes where the schema has {}", want.nodes));
    }
    let variadic = rb.variadicBufferCounts();
    let counts = variadic.map_or(0, |v| v.len()) as u64;
    if counts != want.views {
        return invalid(format!(
            "{where_}: {counts} variadicBufferCounts where the schema has {} BinaryView/Utf8View fields",
            want.views
        ));
    }
    let mut expect = want.buffers + if version.0 <= MetadataVersion::V4.0 { want.unions } else { 0 };
    for c in variadic.iter().flat_map(|v| v.iter()) {
        match u64::try_from(c).ok().and_then(|c| expect.checked_add(c)) {
            Some(e) => expect = e,
            None => return invalid(format!("{where_}: bad variadic buffer count {c}")),
        }
    }
    let buffers = rb.buffers().map_or(0, |v| v.len()) as u64;
    if buffers != expect {
        return invalid(format!("{where_}: {buffers} buffers where the schema lays out {expect}"));
    }
    Ok(())
}

/// Which sequence of messages [`walk_messages`] expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkMode {
    /// A whole IPC stream (§7): a Schema, then DictionaryBatches and RecordBatches in any order;
    /// an end-of-stream marker, or the end of the data, ends it.
    Stream,
    /// The start of a stream without record batches (a stream prologue, PROTOCOL.md §12.1): one
    /// Schema, then DictionaryBatches; an end-of-stream marker ends it.
    Prologue,
    /// The payload of a stream record (§12.2): DictionaryBatches, then exactly one RecordBatch
    /// that ends the payload. No Schema, no end-of-stream marker.
    Record,
}

/// One encapsulated message found by [`walk_messages`]: `[start, end)` covers prefix,
/// flatbuffer and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSpan {
    /// The message's header type.
    pub header: MessageHeader,
    /// Offset of the message's prefix.
    pub start: usize,
    /// Offset just past its body.
    pub end: usize,
    /// DictionaryBatch only: its id and whether it is a delta.
    pub dictionary_id: i64,
    /// Whether a DictionaryBatch is a delta.
    pub is_delta: bool,
}

/// Validates the framing of an IPC stream (PROTOCOL.md §7) and the limits of §14.1 without
/// decoding any data. Accepts the pre-0.15 forms and treats the end of `data` as end of stream.
/// Errors are `ERR_IPC_TRUNCATED` / `ERR_IPC_INVALID` / `ERR_IPC_LIMIT` / `ERR_IPC_UNSUPPORTED`.
pub fn validate_stream(data: &[u8], limits: &Limits) -> Result<StreamInfo> {
    let mut info = StreamInfo::default();
    info.end = walk(data, WalkMode::Stream, limits, &mut None, |s| {
        info.messages += 1;
        match s.header {
            MessageHeader::RecordBatch => info.record_batches += 1,
            MessageHeader::DictionaryBatch => info.dictionary_batches += 1,
            _ => {}
        }
    })?;
    Ok(info)
}

/// Walks the messages of a stream prologue or a stream record with the checks of
/// [`validate_stream`]. A prologue's Schema sets `layout`; a record's batches are checked against
/// it (when set).
pub fn walk_messages(data: &[u8], mode: WalkMode, limits: &Limits, layout: &mut Option<SchemaLayout>) -> Result<Vec<MessageSpan>> {
    let mut spans = Vec::new();
    walk(data, mode, limits, layout, |s| spans.push(*s))?;
    Ok(spans)
}

/// The one walk behind [`validate_stream`] and [`walk_messages`]: every message's framing
/// (bounds with checked arithmetic, the flatbuffer within `limits`, header types, counts fixed by
/// the schema, buffer bounds), in the order `mode` allows. Returns the offset just past the
/// end-of-stream marker (or the end of `data`).
fn walk(data: &[u8], mode: WalkMode, limits: &Limits, layout: &mut Option<SchemaLayout>, mut visit: impl FnMut(&MessageSpan)) -> Result<usize> {
    let n = data.len();
    let mut pos = 0usize;
    let mut count = 0usize;
    let mut last = None;
    while pos < n {
        if mode == WalkMode::Record && last == Some(MessageHeader::RecordBatch) {
            return invalid(format!("a stream record holds bytes after its RecordBatch (at byte {pos})"));
        }
        let (meta_size, prefix) = message_prefix(data, pos)?;
        if meta_size == 0 {
            if mode == WalkMode::Record {
                return invalid(format!("end-of-stream marker inside a stream record at byte {pos}"));
            }
            pos += prefix;
            break;
        }
        if meta_size < 0 {
            return invalid(format!("negative metadata_size {meta_size} at byte {pos}"));
        }
        let meta_size = meta_size as usize;
        let meta_start = pos + prefix;
        if meta_size > n - meta_start {
            return truncated(format!(
                "message at byte {pos}: {meta_size}-byte metadata runs past the end of the {n}-byte stream"
            ));
        }
        let where_ = Where { index: count, pos };
        let msg = verify_message(&data[meta_start..meta_start + meta_size], limits, &where_)?;
        let header = msg.header_type();
        let body_length = msg.bodyLength();
        if body_length < 0 {
            return invalid(format!("{where_}: negative bodyLength {body_length}"));
        }
        let body_start = meta_start + meta_size;
        if body_length as u64 > (n - body_start) as u64 {
            return truncated(format!("{where_}: {body_length}-byte body runs past the end of the {n}-byte stream"));
        }
        let body = &data[body_start..body_start + body_length as usize];
        let mut span = MessageSpan { header, start: pos, end: body_start + body.len(), dictionary_id: 0, is_delta: false };
        match header {
            MessageHeader::Schema => {
                let Some(schema) = msg.header_as_schema() else {
                    return invalid(format!("{where_}: message without a header"));
                };
                if mode == WalkMode::Record || count > 0 {
                    return invalid(format!("{where_}: a Schema where none may be (the first message, and only it, is a Schema)"));
                }
                *layout = Some(SchemaLayout::of(schema)?);
            }
            MessageHeader::DictionaryBatch | MessageHeader::RecordBatch if mode != WalkMode::Record && count == 0 => {
                return invalid(format!("{where_}: the first message must be a Schema"));
            }
            MessageHeader::DictionaryBatch => {
                let Some(db) = msg.header_as_dictionary_batch() else {
                    return invalid(format!("{where_}: message without a header"));
                };
                let Some(rb) = db.data() else {
                    return invalid(format!("{where_}: dictionary batch without data"));
                };
                if let Some(l) = layout {
                    let Some(want) = l.dictionaries.get(&db.id()) else {
                        return invalid(format!("{where_}: no field of the schema has dictionary id {}", db.id()));
                    };
                    check_counts(rb, want, msg.version(), &where_)?;
                }
                check_buffers(rb, body, &where_)?;
                span.dictionary_id = db.id();
                span.is_delta = db.isDelta();
            }
            MessageHeader::RecordBatch => {
                if mode == WalkMode::Prologue {
                    return invalid(format!("{where_}: a stream prologue holds a RecordBatch"));
                }
                let Some(rb) = msg.header_as_record_batch() else {
                    return invalid(format!("{where_}: message without a header"));
                };
                if let Some(l) = layout {
                    check_counts(rb, &l.record, msg.version(), &where_)?;
                }
                check_buffers(rb, body, &where_)?;
            }
            other => {
                return invalid(format!("{where_}: header type {other:?} is not Schema/DictionaryBatch/RecordBatch"));
            }
        }
        visit(&span);
        count += 1;
        last = Some(header);
        pos = span.end;
    }
    match mode {
        WalkMode::Stream if count == 0 => invalid("stream has no Schema message".to_string()),
        WalkMode::Prologue if count == 0 => invalid("stream prologue without a Schema".to_string()),
        WalkMode::Record if last != Some(MessageHeader::RecordBatch) => invalid("a stream record without a RecordBatch".to_string()),
        _ => Ok(pos),
    }
}

/// A decoded stream: its schema and record batches (which borrow the mapping when zero-copy).
#[derive(Debug, Clone)]
pub struct Table {
    /// The stream's schema.
    pub schema: SchemaRef,
    /// Its record batches, in order.
    pub batches: Vec<RecordBatch>,
    /// True if some buffer was not aligned for its type and had to be copied (realigned).
    pub realigned: bool,
}

impl Table {
    /// Rows over every batch.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Maps an arrow-rs error to the protocol's codes.
pub fn map_arrow_error(e: &ArrowError) -> Error {
    let text = e.to_string();
    let code = match e {
        ArrowError::NotYetImplemented(_) => ErrorCode::IpcUnsupported,
        _ if text.contains("not supported")
            || text.contains("unsupported")
            || text.contains("Unsupported")
            || text.contains("Unable to get field named") =>
        {
            ErrorCode::IpcUnsupported
        }
        _ => ErrorCode::IpcInvalid,
    };
    // Keep it to one line.
    let line = text.lines().next().unwrap_or("").to_string();
    Error::new(code, line)
}

fn decode_with(stream: &Buffer, require_alignment: bool) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let mut decoder = StreamDecoder::new().with_require_alignment(require_alignment);
    let mut buf = stream.clone();
    let mut batches = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(&mut buf) {
            Ok(Some(b)) => batches.push(b),
            Ok(None) => {}
            Err(e) => return Err(map_arrow_error(&e)),
        }
    }
    decoder.finish().map_err(|e| Error::new(ErrorCode::IpcTruncated, e.to_string()))?;
    let schema = decoder
        .schema()
        .ok_or_else(|| Error::new(ErrorCode::IpcInvalid, "stream has no schema"))?;
    Ok((schema, batches))
}

/// Validates (within the default [`Limits`]) and decodes a stream held in `stream`; see
/// [`decode_validated`].
pub fn decode_stream(stream: &Buffer) -> Result<Table> {
    let info = validate_stream(stream.as_slice(), &Limits::default())?;
    decode_validated(&stream.slice_with_length(0, info.end))
}

/// Decodes a stream that [`validate_stream`] accepted, ending at its `end` (an Arrow `Buffer`,
/// typically over a read-only mapping) without copying: array buffers are slices of `stream`. If
/// a buffer is not aligned for its type (a writer that aligned to 8 and a 16-byte type), decoding
/// is retried allowing arrow-rs to copy those buffers into aligned memory and `realigned` is set.
///
/// Every array is checked as arrow-rs's `validate_full` does (offsets, bounds, UTF-8, ...):
/// a hostile stream cannot make safe Rust read out of bounds or see a `&str` that is not UTF-8.
/// Streams of flat columns (no nesting, no dictionaries) take a faster path: decoded without
/// arrow-rs's per-array validation, then each column validated here, the UTF-8 ones with one
/// pass over the values (`is_ascii`; `from_utf8` only if a byte is not ASCII) and a tight loop
/// over the offsets.
pub fn decode_validated(stream: &Buffer) -> Result<Table> {
    if let Ok(Ok(Some(table))) = catch_unwind(AssertUnwindSafe(|| decode_flat(stream))) {
        return Ok(table);
    }
    let attempt = |require: bool| {
        catch_unwind(AssertUnwindSafe(|| decode_with(stream, require))).unwrap_or_else(|_| {
            Err(Error::new(ErrorCode::IpcInvalid, "the Arrow decoder rejected the stream (panic)"))
        })
    };
    match attempt(true) {
        Ok((schema, batches)) => Ok(Table { schema, batches, realigned: false }),
        Err(e) if e.message.contains("align") => {
            let (schema, batches) = attempt(false)?;
            Ok(Table { schema, batches, realigned: true })
        }
        Err(e) => Err(e),
    }
}

/// Whether a field's arrays hold no child arrays and no dictionary: the types the unchecked
/// decoder builds without reading any value (views, unions, run-ends, nesting go the slow way).
fn is_flat(field: &arrow_schema::Field) -> bool {
    use arrow_schema::DataType as D;
    matches!(
        field.data_type(),
        D::Null
            | D::Boolean
            | D::Int8 | D::Int16 | D::Int32 | D::Int64
            | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64
            | D::Float16 | D::Float32 | D::Float64
            | D::Timestamp(..) | D::Date32 | D::Date64 | D::Time32(_) | D::Time64(_)
            | D::Duration(_) | D::Interval(_)
            | D::Binary | D::LargeBinary | D::FixedSizeBinary(_)
            | D::Utf8 | D::LargeUtf8
            | D::Decimal32(..) | D::Decimal64(..) | D::Decimal128(..) | D::Decimal256(..)
    )
}

/// The fast path of [`decode_validated`]: `Ok(None)` when it does not apply (or fails: the
/// general path then gives the canonical error). Decodes in place (64-byte aligned streams).
fn decode_flat(stream: &Buffer) -> Result<Option<Table>> {
    use arrow_ipc::reader::FileDecoder;
    let data = stream.as_slice();
    let (mut pos, mut decoder, mut schema, mut batches) = (0usize, None, None, Vec::new());
    while pos < data.len() {
        let (meta_size, prefix) = message_prefix(data, pos)?;
        if meta_size <= 0 {
            break;
        }
        let meta_start = pos + prefix;
        let Some(meta) = data.get(meta_start..meta_start + meta_size as usize) else { return Ok(None) };
        let Ok(msg) = arrow_ipc::root_as_message(meta) else { return Ok(None) };
        let body_start = meta_start + meta_size as usize;
        let end = body_start + usize::try_from(msg.bodyLength()).unwrap_or(usize::MAX).min(data.len() - body_start);
        match (msg.header_type(), &decoder) {
            (MessageHeader::Schema, None) => {
                let Some(fb_schema) = msg.header_as_schema() else { return Ok(None) };
                let Ok(s) = arrow_ipc::convert::try_fb_to_schema(fb_schema) else { return Ok(None) };
                if !fb_schema.endianness().equals_to_target_endianness() || !s.fields().iter().all(|f| is_flat(f)) {
                    return Ok(None);
                }
                let s = Arc::new(s);
                // SAFETY: every batch is validated by `validate_flat_batch` before it is returned.
                decoder = Some(unsafe { FileDecoder::new(s.clone(), msg.version()).with_require_alignment(true).with_skip_validation(true) });
                schema = Some(s);
            }
            (MessageHeader::RecordBatch, Some(d)) => {
                let block = arrow_ipc::Block::new(0, (body_start - pos) as i32, (end - body_start) as i64);
                let Ok(Some(batch)) = d.read_record_batch(&block, &stream.slice_with_length(pos, end - pos)) else { return Ok(None) };
                if validate_flat_batch(&batch).is_err() {
                    return Ok(None);
                }
                batches.push(batch);
            }
            _ => return Ok(None),
        }
        pos = end;
    }
    Ok(schema.map(|schema| Table { schema, batches, realigned: false }))
}

/// What `RecordBatch::try_new` and `validate_full` check for a batch of flat columns, with
/// [`check_utf8`] for the UTF-8 ones.
fn validate_flat_batch(batch: &RecordBatch) -> std::result::Result<(), ArrowError> {
    use arrow_schema::DataType as D;
    for (column, field) in batch.columns().iter().zip(batch.schema_ref().fields()) {
        if column.len() != batch.num_rows() {
            return Err(ArrowError::InvalidArgumentError("a column's length differs from the batch's".into()));
        }
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(ArrowError::InvalidArgumentError(format!("non-nullable column {:?} holds nulls", field.name())));
        }
        let data = column.to_data();
        match data.data_type() {
            D::Utf8 | D::LargeUtf8 => {
                data.validate()?;
                data.validate_nulls()?;
                if matches!(data.data_type(), D::Utf8) {
                    check_utf8::<i32>(&data)?;
                } else {
                    check_utf8::<i64>(&data)?;
                }
            }
            _ => data.validate_full()?,
        }
    }
    Ok(())
}

/// The values check `validate_full` does for a UTF-8 array (after `validate`): offsets
/// non-negative, non-decreasing and within the values; the bytes between the first and last
/// offset valid UTF-8 (one pass; ASCII needs nothing more); every offset on a character boundary.
fn check_utf8<O: arrow_array::OffsetSizeTrait>(data: &arrow_data::ArrayData) -> std::result::Result<(), ArrowError> {
    let bad = |what: &str| Err(ArrowError::InvalidArgumentError(format!("utf8 array: {what}")));
    let offsets = &data.buffer::<O>(0)[data.offset()..data.offset() + data.len() + 1];
    let values = data.buffers()[1].as_slice();
    let (first, last) = (offsets[0].as_usize(), offsets[data.len()].as_usize());
    if offsets[0] < O::zero() || !offsets.windows(2).fold(true, |ok, w| ok & (w[0] <= w[1])) || last > values.len() {
        return bad("offsets decrease or lie outside the values");
    }
    let text = &values[first..last];
    if text.is_ascii() {
        return Ok(()); // valid UTF-8, and every byte starts a character
    }
    if std::str::from_utf8(text).is_err() {
        return bad("invalid UTF-8");
    }
    // A boundary is the end of the text or a byte that does not continue a character.
    let boundary = |o: O| text.get(o.as_usize() - first).is_none_or(|&b| (b as i8) >= -0x40);
    if !offsets.iter().fold(true, |ok, &o| ok & boundary(o)) {
        return bad("an offset splits a character");
    }
    Ok(())
}

/// Wraps a mapping as an Arrow `Buffer` over `[offset, offset + len)` that keeps it alive.
pub fn mapping_buffer(map: &Arc<Mapping>, offset: usize, len: usize) -> Result<Buffer> {
    match offset.checked_add(len) {
        Some(e) if e <= map.len() => {}
        _ => return err(ErrorCode::SegmentBounds, "range outside the mapping"),
    }
    let whole = {
        let ptr = NonNull::new(map.as_ptr() as *mut u8).expect("mapping pointer");
        // SAFETY: the mapping is `map.len()` readable bytes that stay mapped as long as the
        // `Arc<Mapping>` owner lives, and it is never written through while shared.
        unsafe { Buffer::from_custom_allocation(ptr, map.len(), map.clone()) }
    };
    Ok(whole.slice_with_length(offset, len))
}

/// Write options of this peer: 64-byte alignment, no legacy format, metadata V5.
pub fn write_options() -> IpcWriteOptions {
    IpcWriteOptions::try_new(ALIGNMENT, false, MetadataVersion::V5).expect("valid IPC write options")
}

/// Encodes `schema` + `batches` as an IPC stream (64-byte aligned, with EOS) without copying
/// any data: the parts are the messages' metadata, padding and slices of the batches' buffers.
pub(crate) fn encode_stream(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<Buffer>> {
    let encode = || -> std::result::Result<Vec<Buffer>, ArrowError> {
        let mut encoder = StreamEncoder::try_new_with_options(schema, write_options())?;
        let mut parts = Vec::new();
        for b in batches {
            parts.extend(encoder.encode(b)?);
        }
        parts.extend(encoder.finish()?);
        Ok(parts)
    };
    encode().map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("cannot write IPC: {e}")))
}

/// Writes `schema` + `batches` as an IPC stream (64-byte aligned, with EOS) into the segment
/// `create(stream length)` makes, with `pwritev` straight from the batches' buffers: the one copy of the data. Returns
/// the still-unsealed segment and the stream length.
pub fn write_batches_into(
    schema: &Schema,
    batches: &[RecordBatch],
    create: impl FnOnce(usize) -> Result<WritableSegment>,
) -> Result<(WritableSegment, usize)> {
    let parts = encode_stream(schema, batches)?;
    write_parts_into(&parts.iter().map(|p| p.as_slice()).collect::<Vec<_>>(), create)
}

/// Writes the stream `parts` (e.g. [`encode_stream`]'s, as slices) one after the other into the
/// segment `create(total length, at least 1)` makes, with one `pwritev`. Returns the still-unsealed
/// segment and the stream length.
pub(crate) fn write_parts_into(parts: &[&[u8]], create: impl FnOnce(usize) -> Result<WritableSegment>) -> Result<(WritableSegment, usize)> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut seg = create(usize::max(len, 1))?;
    seg.write_at(0, parts)?;
    Ok((seg, len))
}

/// [`write_batches_into`] a new memfd segment of at least `min_size` bytes.
pub fn write_batches_segment(schema: &Schema, batches: &[RecordBatch], min_size: usize) -> Result<(WritableSegment, usize)> {
    write_batches_into(schema, batches, |len| WritableSegment::new(len.max(min_size)))
}

/// Copies raw IPC stream bytes into the segment `create(length)` makes.
pub fn write_bytes_into(bytes: &[u8], create: impl FnOnce(usize) -> Result<WritableSegment>) -> Result<(WritableSegment, usize)> {
    write_parts_into(&[bytes], create)
}

/// Copies raw IPC stream bytes into a new segment of at least `min_size` bytes.
pub fn write_bytes_segment(bytes: &[u8], min_size: usize) -> Result<(WritableSegment, usize)> {
    write_bytes_into(bytes, |len| WritableSegment::new(len.max(min_size)))
}

/// True if `bytes` is an Arrow IPC *file* (starts with `ARROW1`).
pub fn is_ipc_file(bytes: &[u8]) -> bool {
    bytes.starts_with(b"ARROW1")
}

/// Reads an IPC file (footer format) into its schema and record batches.
pub fn read_ipc_file(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let run = || -> std::result::Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
        let reader = FileReader::try_new(Cursor::new(bytes), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((schema, batches))
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(|e| map_arrow_error(&e)),
        Err(_) => err(ErrorCode::IpcInvalid, "the Arrow file reader rejected the file (panic)"),
    }
}

/// Converts an IPC file to stream bytes (for tests and tools; `send` writes directly into the
/// segment instead).
pub fn file_to_stream(bytes: &[u8]) -> Result<Vec<u8>> {
    let (schema, batches) = read_ipc_file(bytes)?;
    batches_to_stream(&schema, &batches)
}

/// Encodes batches as stream bytes in memory (tests and tools).
pub fn batches_to_stream(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    Ok(encode_stream(schema, batches)?.iter().flat_map(|p| p.as_slice()).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_errors_map_to_protocol_codes() {
        let e = map_arrow_error(&ArrowError::NotYetImplemented("type ListView".into()));
        assert_eq!(e.code, ErrorCode::IpcUnsupported);
        assert!(e.message.contains("ListView"));
        assert_eq!(map_arrow_error(&ArrowError::IpcError("bad".into())).code, ErrorCode::IpcInvalid);
    }
}
