//! The consumer's checks of a STREAM_OPEN (§12.1, §12.2): the ring fd, the header, the
//! eventfds and the prologue; and the decoder that keeps dictionaries across records.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::{read_dictionary, read_record_batch};
use arrow_ipc::MessageHeader;
use arrow_schema::{ArrowError, SchemaRef};

use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{kv_get, Frame, KeyValues};
use crate::ipc::{self, mapping_buffer, map_arrow_error, walk_messages, MessageSpan, SchemaLayout, WalkMode};
use crate::ring::{check_capacity, check_eventfd, RingHeader, RING_HEADER_BYTES, RING_SEALS};
use crate::segment::{self, Mapping};

/// Largest prologue accepted (schema + dictionaries).
const MAX_PROLOGUE_BYTES: u64 = 1 << 30;

fn decimal(kv: &KeyValues, key: &str) -> Result<u64> {
    let text = kv_get(kv, key).unwrap_or("");
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return err(ErrorCode::Protocol, format!("STREAM_OPEN without a valid {key} ({text:?})"));
    }
    Ok(text.parse().unwrap_or(0))
}

/// What a STREAM_OPEN carries, checked and mapped.
pub(super) struct Opened {
    pub(super) header: RingHeader,
    pub(super) data: Arc<Mapping>,
    pub(super) capacity: u64,
    pub(super) slot: u32,
    pub(super) start: u64,
    pub(super) stream_id: u64,
    pub(super) prologue: Buffer,
    pub(super) decoder: MessageDecoder,
    pub(super) schema: SchemaRef,
    pub(super) layout: Option<SchemaLayout>,
    pub(super) data_event: OwnedFd,
    pub(super) space_event: OwnedFd,
    pub(super) metadata: KeyValues,
}

/// Checks a received ring fd (memfd, seals, exact size, §12.2); returns its size.
fn check_ring_fd(fd: &OwnedFd, capacity: u64) -> Result<()> {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::last_os("fstat"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return err(ErrorCode::SegmentInvalid, "the ring fd is not a regular file (memfd expected)");
    }
    // SAFETY: plain fcntl.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return err(ErrorCode::SegmentInvalid, "the ring fd is not a memfd (F_GET_SEALS failed)");
    }
    if seals & RING_SEALS != RING_SEALS {
        return err(ErrorCode::SegmentUnsealed, format!("ring seals 0x{seals:x} lack the required 0x{RING_SEALS:x} (SEAL|SHRINK|GROW)"));
    }
    let expected = RING_HEADER_BYTES as u64 + capacity;
    if st.st_size as u64 != expected {
        return err(ErrorCode::RingInvalid, format!("ring segment of {} bytes, expected {RING_HEADER_BYTES} + {capacity}", st.st_size));
    }
    Ok(())
}

/// Decodes a stream one message at a time, keeping the schema and the dictionaries (whole,
/// deltas, replacements) across records, as an IPC stream reader does. Record batch bodies are
/// used in place (arrow-rs copies only buffers misaligned for their type).
pub(super) struct MessageDecoder {
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
}

impl MessageDecoder {
    pub(super) fn new() -> MessageDecoder {
        MessageDecoder { schema: None, dictionaries: HashMap::new() }
    }

    /// Decodes the message `[span.start, span.end)` of `bytes` (already walked, so its framing
    /// is known to be in bounds); returns the batch of a RecordBatch message.
    pub(super) fn decode(&mut self, bytes: &Buffer, span: &MessageSpan) -> Result<Option<RecordBatch>> {
        let run = catch_unwind(AssertUnwindSafe(|| self.decode_inner(bytes, span)));
        match run {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(map_arrow_error(&e)),
            Err(_) => err(ErrorCode::IpcInvalid, "the Arrow decoder rejected the stream (panic)"),
        }
    }

    fn decode_inner(&mut self, bytes: &Buffer, span: &MessageSpan) -> std::result::Result<Option<RecordBatch>, ArrowError> {
        let data = &bytes.as_slice()[span.start..span.end];
        let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        let (meta_size, prefix) = if word(0) == 0xFFFF_FFFF { (word(4) as usize, 8) } else { (word(0) as usize, 4) };
        let msg = arrow_ipc::root_as_message(&data[prefix..prefix + meta_size])
            .map_err(|e| ArrowError::IpcError(format!("bad flatbuffer: {e}")))?;
        let body_start = span.start + prefix + meta_size;
        let body = bytes.slice_with_length(body_start, span.end - body_start);
        let missing = || ArrowError::IpcError("message without a header".into());
        match span.header {
            MessageHeader::Schema => {
                let fb = msg.header_as_schema().ok_or_else(missing)?;
                self.schema = Some(Arc::new(arrow_ipc::convert::try_fb_to_schema(fb)?));
                Ok(None)
            }
            MessageHeader::DictionaryBatch => {
                let schema = self.schema.clone().ok_or_else(|| ArrowError::IpcError("Missing schema".into()))?;
                let db = msg.header_as_dictionary_batch().ok_or_else(missing)?;
                read_dictionary(&body, db, &schema, &mut self.dictionaries, &msg.version())?;
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self.schema.clone().ok_or_else(|| ArrowError::IpcError("Missing schema".into()))?;
                let rb = msg.header_as_record_batch().ok_or_else(missing)?;
                read_record_batch(&body, rb, schema, &self.dictionaries, None, &msg.version()).map(Some)
            }
            other => Err(ArrowError::IpcError(format!("unexpected message {other:?}"))),
        }
    }
}

/// §12.1/§12.2 checks of a STREAM_OPEN, in order. Every fd is closed or kept by the result.
pub(super) fn open_parts(frame: &Frame, fds: Vec<OwnedFd>, limits: &ipc::Limits) -> Result<Opened> {
    if fds.len() != 4 || frame.fd_count != 4 {
        return err(ErrorCode::Protocol, format!("STREAM_OPEN must carry exactly 4 fds, got {} (fd_count {})", fds.len(), frame.fd_count));
    }
    let kv = &frame.metadata;
    let stream_id = decimal(kv, "stream_id")?;
    let slot = decimal(kv, "reader_slot")?;
    let start = decimal(kv, "start_position")?;
    let capacity = decimal(kv, "capacity")?;
    check_capacity(capacity)?;
    let mut fds = fds.into_iter();
    let (ring_fd, prologue_fd, data_event, space_event) =
        (fds.next().unwrap(), fds.next().unwrap(), fds.next().unwrap(), fds.next().unwrap());
    check_eventfd(&data_event, "data")?;
    check_eventfd(&space_event, "space")?;

    check_ring_fd(&ring_fd, capacity)?;
    let slot = u32::try_from(slot).unwrap_or(u32::MAX);
    let header = RingHeader::new(Arc::new(Mapping::map_at(ring_fd.as_raw_fd(), RING_HEADER_BYTES, 0, true)?))?;
    header.check(capacity, slot)?;
    let written = header.write_position().load(Ordering::Acquire);
    if start > written || written - start > capacity || start % 64 != 0 {
        return err(ErrorCode::RingInvalid, format!("start position {start} does not fit the write position {written}"));
    }
    let data = Arc::new(Mapping::map_at(ring_fd.as_raw_fd(), capacity as usize, RING_HEADER_BYTES as u64, false)?);
    drop(ring_fd);

    let (map, length) = segment::open_segment(prologue_fd.as_raw_fd(), frame.ipc_offset, Some(frame.ipc_length), MAX_PROLOGUE_BYTES, false)?;
    drop(prologue_fd);
    let prologue = mapping_buffer(&Arc::new(map), frame.ipc_offset as usize, length as usize)?;
    let mut layout = None;
    let spans = walk_messages(prologue.as_slice(), WalkMode::Prologue, limits, &mut layout)?;
    let end = spans.last().map_or(0, |s| s.end);
    let prologue = prologue.slice_with_length(0, end);
    let mut decoder = MessageDecoder::new();
    for span in &spans {
        decoder.decode(&prologue, span)?;
    }
    let schema = decoder.schema.clone().ok_or_else(|| Error::new(ErrorCode::IpcInvalid, "stream prologue without a schema"))?;
    let reserved = ["stream_id", "reader_slot", "start_position", "capacity"];
    let metadata = kv.iter().filter(|(k, _)| !reserved.contains(&k.as_str())).cloned().collect();
    Ok(Opened { header, data, capacity, slot, start, stream_id, prologue, decoder, schema, layout, data_event, space_event, metadata })
}
