//! Streams of record batches through a shared ring (PROTOCOL.md §12).
//!
//! A [`StreamReader`] maps the producer's ring and decodes each batch in place (its column
//! buffers are slices of the ring mapping, which stays mapped while any of them lives); a
//! [`RingProducer`] owns a ring and writes batches into it for one ([`open_stream`]) or many
//! ([`Publication`]) consumers.
//!
//! Everything is single-threaded per side (`&mut self`), except [`StreamBatch::release`], which
//! may run on any thread: releases go through a small shared state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_array::ArrayRef;
use arrow_ipc::reader::{read_dictionary, read_record_batch};
use arrow_ipc::writer::{DictionaryHandling, StreamEncoder};
use arrow_ipc::MessageHeader;
use arrow_schema::{ArrowError, SchemaRef};

use crate::channel::{self, Channel, Listener, Options};
use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{kv_get, Frame, KeyValues, Kind};
use crate::ipc::{self, mapping_buffer, map_arrow_error, walk_messages, MessageSpan, WalkMode};
use crate::ring::{
    self, align_record, check_capacity, check_eventfd, check_record_header, encode_record_header, eventfd, eventfd_drain,
    poll_readable, wake_if_waiting, RecordKind, RingHeader, MAX_READERS, RECORD_HEADER_BYTES, RING_HEADER_BYTES, RING_SEALS,
};
use crate::segment::{self, Mapping, WritableSegment};

/// Longest single sleep on an eventfd: a lost wake-up costs at most this much latency.
const SLEEP_BOUND: Duration = Duration::from_millis(50);
/// How often a producer that never has to wait looks at its consumers' sockets for hang-ups.
const SOCKET_CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// Largest prologue accepted (schema + dictionaries).
const MAX_PROLOGUE_BYTES: u64 = 1 << 30;

fn deadline_of(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

/// Milliseconds to sleep: at most [`SLEEP_BOUND`], at most until `deadline`.
fn sleep_ms(deadline: Option<Instant>) -> i32 {
    let bound = match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()).min(SLEEP_BOUND),
        None => SLEEP_BOUND,
    };
    bound.as_millis().max(1) as i32
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

fn decimal(kv: &KeyValues, key: &str) -> Result<u64> {
    let text = kv_get(kv, key).unwrap_or("");
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return err(ErrorCode::Protocol, format!("STREAM_OPEN without a valid {key} ({text:?})"));
    }
    Ok(text.parse().unwrap_or(0))
}

// ------------------------------------------------------------------------------------ consumer

/// Options of a stream reader.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// `read()` fails with `ERR_TIMEOUT` after this long without a batch. Default: forever.
    pub read_timeout: Option<Duration>,
    /// Largest batch accepted through its own segment (EXTERNAL records). Default 16 GiB.
    pub max_message_bytes: u64,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions { read_timeout: None, max_message_bytes: segment::DEFAULT_MAX_MESSAGE_BYTES }
    }
}

struct Held {
    end: u64,
    released: bool,
}

struct ReleaseQueue {
    held: VecDeque<Held>,
    /// Everything below it is released (the slot's `read_position`).
    read_position: u64,
    /// `None` once the reader closed: releases then change nothing shared.
    space_event: Option<OwnedFd>,
}

/// What a batch needs to release its record, from any thread.
struct ReleaseState {
    queue: Mutex<ReleaseQueue>,
    header: RingHeader,
    slot: u32,
}

impl ReleaseState {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReleaseQueue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the record ending at `end` released and publishes the end of the leading run of
    /// released records (§12.3), waking a waiting producer.
    fn release(&self, end: u64) {
        let mut q = self.lock();
        if let Some(h) = q.held.iter_mut().find(|h| h.end == end) {
            h.released = true;
        }
        let mut advanced = None;
        while q.held.front().is_some_and(|h| h.released) {
            advanced = q.held.pop_front().map(|h| h.end);
        }
        let Some(position) = advanced else { return };
        q.read_position = position;
        if let Some(space) = &q.space_event {
            self.header.read_position(self.slot).store(position, Ordering::SeqCst);
            wake_if_waiting(self.header.producer_waiting(), space.as_raw_fd());
        }
    }
}

/// The owner of one record's bytes inside Arrow buffers: while any buffer (of the batch or of
/// a clone of its arrays) points into the record, the record is not released, so the producer
/// can never rewrite bytes a live array reads. Dropping the last one releases it.
struct RecordLease {
    releases: Arc<ReleaseState>,
    end: u64,
    /// The ring's data area, or the STREAM_SEGMENT's mapping.
    _mapping: Arc<Mapping>,
}

impl Drop for RecordLease {
    fn drop(&mut self) {
        self.releases.release(self.end);
    }
}

/// `[offset, offset + len)` of `mapping` as a Buffer owned by a lease on the record ending at `end`.
fn leased_buffer(mapping: &Arc<Mapping>, offset: usize, len: usize, releases: &Arc<ReleaseState>, end: u64) -> Result<Buffer> {
    if offset.checked_add(len).is_none_or(|e| e > mapping.len()) {
        return err(ErrorCode::RingInvalid, "record bytes outside the mapping");
    }
    let lease = Arc::new(RecordLease { releases: releases.clone(), end, _mapping: mapping.clone() });
    // SAFETY: in bounds (checked above) of a mapping the lease keeps alive; the producer does
    // not rewrite a record before it is released, which happens only when the lease drops.
    let ptr = unsafe { std::ptr::NonNull::new_unchecked(mapping.as_ptr().add(offset) as *mut u8) };
    // SAFETY: see above.
    Ok(unsafe { Buffer::from_custom_allocation(ptr, len, lease) })
}

/// A batch decoded in place from the ring. Its record is released once this value and every
/// clone of its arrays are dropped (releases are in order: a record held longer holds back the
/// ones after it, and so the producer's room).
pub struct StreamBatch {
    pub batch: RecordBatch,
    /// The record's sequence number (0, 1, 2, ... over the stream's batches).
    pub sequence: u64,
    bytes: Buffer,
}

impl StreamBatch {
    /// The record's IPC messages (dictionaries, then the batch), in place.
    pub fn ipc_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Drops this batch's hold on its record (the same as dropping it).
    pub fn release(self) {}
}

impl std::fmt::Debug for StreamBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBatch").field("sequence", &self.sequence).field("rows", &self.batch.num_rows()).finish()
    }
}

type ExternalSegment = Result<(Arc<Mapping>, usize, usize)>;

/// The consuming end of a stream. Owns its channel; dropping it before the end leaves the
/// stream (the connection is closed, which is how a consumer says it left, §12.1).
pub struct StreamReader {
    channel: Channel,
    options: ReaderOptions,
    header: RingHeader,
    data: Arc<Mapping>,
    capacity: u64,
    slot: u32,
    data_event: OwnedFd,
    releases: Arc<ReleaseState>,
    prologue: Buffer,
    decoder: MessageDecoder,
    schema: SchemaRef,
    /// The next record to read.
    position: u64,
    /// The highest write position seen (it never goes back).
    published: u64,
    segments: HashMap<u64, ExternalSegment>,
    ended: bool,
    closed: bool,
    batches_read: u64,
    /// The producer's `stream_id`.
    pub stream_id: u64,
    /// The producer's user metadata from STREAM_OPEN.
    pub metadata: KeyValues,
}

/// What a STREAM_OPEN carries, checked and mapped.
struct Opened {
    header: RingHeader,
    data: Arc<Mapping>,
    capacity: u64,
    slot: u32,
    start: u64,
    stream_id: u64,
    prologue: Buffer,
    decoder: MessageDecoder,
    schema: SchemaRef,
    data_event: OwnedFd,
    space_event: OwnedFd,
    metadata: KeyValues,
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
struct MessageDecoder {
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
}

impl MessageDecoder {
    fn new() -> MessageDecoder {
        MessageDecoder { schema: None, dictionaries: HashMap::new() }
    }

    /// Decodes the message `[span.start, span.end)` of `bytes` (already walked, so its framing
    /// is known to be in bounds); returns the batch of a RecordBatch message.
    fn decode(&mut self, bytes: &Buffer, span: &MessageSpan) -> Result<Option<RecordBatch>> {
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
fn open_parts(frame: &Frame, fds: Vec<OwnedFd>) -> Result<Opened> {
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
    let spans = walk_messages(prologue.as_slice(), WalkMode::Prologue)?;
    let end = spans.last().map_or(0, |s| s.end);
    let prologue = prologue.slice_with_length(0, end);
    let mut decoder = MessageDecoder::new();
    for span in &spans {
        decoder.decode(&prologue, span)?;
    }
    let schema = decoder.schema.clone().ok_or_else(|| Error::new(ErrorCode::IpcInvalid, "stream prologue without a schema"))?;
    let reserved = ["stream_id", "reader_slot", "start_position", "capacity"];
    let metadata = kv.iter().filter(|(k, _)| !reserved.contains(&k.as_str())).cloned().collect();
    Ok(Opened { header, data, capacity, slot, start, stream_id, prologue, decoder, schema, data_event, space_event, metadata })
}

impl StreamReader {
    /// Waits for the peer to open a stream on `channel` (STREAM_OPEN), checks and maps it, and
    /// ACKs it. A refused stream is answered with ERROR and returned as the error.
    pub fn accept(mut channel: Channel, options: ReaderOptions, timeout: Option<Duration>) -> Result<StreamReader> {
        let deadline = deadline_of(timeout);
        match channel.pump_until(deadline, |c| !c.stream_offers.is_empty()) {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::Timeout => return err(ErrorCode::Timeout, "no stream offered"),
            Err(e) => return Err(e),
        }
        let (frame, fds) = channel.stream_offers.pop_front().expect("an offer");
        let opened = match open_parts(&frame, fds) {
            Ok(o) => o,
            Err(e) => {
                let _ = channel.send_error(frame.message_id, 0, e.code, &e.message);
                return Err(e);
            }
        };
        channel.send_ack(frame.message_id)?;
        channel.reading_stream = true;
        let releases = Arc::new(ReleaseState {
            queue: Mutex::new(ReleaseQueue { held: VecDeque::new(), read_position: opened.start, space_event: Some(opened.space_event) }),
            header: opened.header.clone(),
            slot: opened.slot,
        });
        Ok(StreamReader {
            channel,
            options,
            header: opened.header,
            data: opened.data,
            capacity: opened.capacity,
            slot: opened.slot,
            data_event: opened.data_event,
            releases,
            prologue: opened.prologue,
            decoder: opened.decoder,
            schema: opened.schema,
            position: opened.start,
            published: opened.start,
            segments: HashMap::new(),
            ended: false,
            closed: false,
            batches_read: 0,
            stream_id: opened.stream_id,
            metadata: opened.metadata,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The start of an IPC stream this reader's batches continue: the schema and the
    /// dictionaries it joined with (no end-of-stream marker).
    pub fn prologue(&self) -> &[u8] {
        self.prologue.as_slice()
    }

    /// Where the ring's data area is mapped (batches read in place lie inside it).
    pub fn data_mapping(&self) -> &Arc<Mapping> {
        &self.data
    }

    pub fn batches_read(&self) -> u64 {
        self.batches_read
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next batch, or `None` at the end of the stream. `ERR_TIMEOUT` after the read timeout
    /// without one; `ERR_PEER_CLOSED` once the producer left without ending the stream (after
    /// every record it published was read); `ERR_RING_INVALID` for a malformed record (the
    /// producer is told with ERROR and the reader closes).
    pub fn read(&mut self) -> Result<Option<StreamBatch>> {
        let deadline = deadline_of(self.options.read_timeout);
        loop {
            if self.closed {
                return err(ErrorCode::Closed, "the stream reader is closed");
            }
            if self.ended {
                return Ok(None);
            }
            let write_position = self.load_write_position()?;
            if write_position > self.position {
                if let Some(batch) = self.read_record(write_position, deadline)? {
                    return Ok(Some(batch));
                }
                continue;
            }
            if let Some(e) = self.peer_gone() {
                return Err(e);
            }
            if expired(deadline) {
                return err(ErrorCode::Timeout, "no batch within the read timeout");
            }
            self.sleep(deadline)?;
        }
    }

    /// §12.3 from the consumer's side: flag, re-check, sleep on the data eventfd (or until a
    /// frame arrives), clear the flag.
    fn sleep(&mut self, deadline: Option<Instant>) -> Result<()> {
        let flag = self.header.reader_waiting(self.slot);
        flag.store(1, Ordering::SeqCst);
        let result = if self.header.write_position().load(Ordering::SeqCst) > self.position {
            Ok(())
        } else {
            poll_readable(&[self.data_event.as_raw_fd(), self.channel.raw_fd()], sleep_ms(deadline)).map(|ready| {
                if ready[0] {
                    eventfd_drain(self.data_event.as_raw_fd());
                }
            })
        };
        flag.store(0, Ordering::SeqCst);
        result
    }

    /// Reads what the socket holds; `Some` once the producer is gone.
    fn peer_gone(&mut self) -> Option<Error> {
        let failure = self.channel.pump_all_ready();
        self.take_segments();
        let failure = failure.or_else(|| self.channel.close_error().cloned())?;
        if failure.code == ErrorCode::Closed {
            return Some(failure);
        }
        Some(Error::new(
            ErrorCode::PeerClosed,
            format!("the producer left the stream after {} batches without ending it", self.batches_read),
        ))
    }

    fn load_write_position(&mut self) -> Result<u64> {
        let position = self.header.write_position().load(Ordering::Acquire);
        if position < self.published {
            return Err(self.broken(Error::new(
                ErrorCode::RingInvalid,
                format!("the write position went back from {} to {position}", self.published),
            )));
        }
        let read_position = self.releases.lock().read_position;
        if position - read_position > self.capacity {
            return Err(self.broken(Error::new(
                ErrorCode::RingInvalid,
                format!("the write position {position} is more than the {}-byte ring ahead of this reader ({read_position})", self.capacity),
            )));
        }
        self.published = position;
        Ok(position)
    }

    fn read_record(&mut self, write_position: u64, deadline: Option<Instant>) -> Result<Option<StreamBatch>> {
        let offset = self.position % self.capacity;
        let mut raw = [0u8; RECORD_HEADER_BYTES];
        // offset is a multiple of 64 below capacity (a multiple of 64): the header is inside.
        raw.copy_from_slice(&self.data.as_slice()[offset as usize..offset as usize + RECORD_HEADER_BYTES]);
        let record = match check_record_header(&raw, offset, self.capacity, write_position - self.position) {
            Ok(r) => r,
            Err(e) => return Err(self.broken(e)),
        };
        let end = self.position + record.length;
        self.releases.lock().held.push_back(Held { end, released: false });
        self.position = end;
        match record.kind {
            RecordKind::Padding | RecordKind::End => {
                self.ended = record.kind == RecordKind::End;
                self.releases.release(end);
                Ok(None)
            }
            RecordKind::Batch => {
                let at = offset as usize + RECORD_HEADER_BYTES;
                let bytes = leased_buffer(&self.data, at, record.ipc_length as usize, &self.releases, end)?;
                self.decode(bytes, record.sequence).map(Some)
            }
            RecordKind::External => match self.wait_segment(record.sequence, deadline) {
                Ok((map, at, len)) => {
                    let bytes = leased_buffer(&map, at, len, &self.releases, end)?;
                    self.decode(bytes, record.sequence).map(Some)
                }
                Err(e) => {
                    self.releases.release(end);
                    Err(e)
                }
            },
        }
    }

    /// Decodes a record's messages; on failure the record is released with `bytes`.
    fn decode(&mut self, bytes: Buffer, sequence: u64) -> Result<StreamBatch> {
        let batch = self.decode_messages(&bytes)?;
        self.batches_read += 1;
        Ok(StreamBatch { batch, sequence, bytes })
    }

    fn decode_messages(&mut self, bytes: &Buffer) -> Result<RecordBatch> {
        let spans = walk_messages(bytes.as_slice(), WalkMode::Record)?;
        let mut batch = None;
        for s in spans {
            let found = if s.header == MessageHeader::DictionaryBatch {
                // A dictionary outlives its record (later batches use it): copy it out of the ring.
                let copy = Buffer::from(bytes.as_slice()[s.start..s.end].to_vec());
                self.decoder.decode(&copy, &MessageSpan { start: 0, end: s.end - s.start, ..s })?
            } else {
                self.decoder.decode(bytes, &s)?
            };
            if found.is_some() {
                batch = found;
            }
        }
        batch.ok_or_else(|| Error::new(ErrorCode::IpcInvalid, "a stream record without a RecordBatch"))
    }

    /// The segment of an EXTERNAL record: the producer sent it before publishing the record.
    fn wait_segment(&mut self, sequence: u64, deadline: Option<Instant>) -> ExternalSegment {
        loop {
            self.take_segments();
            if let Some(s) = self.segments.remove(&sequence) {
                return s;
            }
            // A producer that hung up right after sending the segment: take it, then fail.
            let gone = self.peer_gone();
            if let Some(s) = self.segments.remove(&sequence) {
                return s;
            }
            if let Some(e) = gone {
                return Err(e);
            }
            if expired(deadline) {
                return err(ErrorCode::Timeout, format!("no STREAM_SEGMENT for batch {sequence} within the read timeout"));
            }
            poll_readable(&[self.channel.raw_fd()], sleep_ms(deadline))?;
        }
    }

    /// Checks and maps the STREAM_SEGMENTs the channel queued (§5.1); a refused one is
    /// answered with ERROR and its batch fails.
    fn take_segments(&mut self) {
        while let Some((frame, fds)) = self.channel.stream_segments.pop_front() {
            let sequence = kv_get(&frame.metadata, "sequence")
                .filter(|t| !t.is_empty() && t.len() <= 16 && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok());
            let result = (|| -> ExternalSegment {
                if fds.len() != 1 || frame.fd_count != 1 {
                    return err(ErrorCode::Protocol, format!("STREAM_SEGMENT must carry exactly 1 fd, got {}", fds.len()));
                }
                if sequence.is_none() {
                    return err(ErrorCode::Protocol, "STREAM_SEGMENT without a valid sequence");
                }
                let (map, len) = segment::open_segment(
                    fds[0].as_raw_fd(),
                    frame.ipc_offset,
                    Some(frame.ipc_length),
                    self.options.max_message_bytes,
                    false,
                )?;
                Ok((Arc::new(map), frame.ipc_offset as usize, len as usize))
            })();
            drop(fds);
            if let Err(e) = &result {
                let _ = self.channel.send_error(frame.message_id, 0, e.code, &e.message);
            }
            if let Some(seq) = sequence {
                self.segments.insert(seq, result);
            }
        }
    }

    /// A broken ring ends the stream: tell the producer (fatal ERROR), close, return the error.
    fn broken(&mut self, e: Error) -> Error {
        let _ = self.channel.send_error(0, 0, e.code, &e.message);
        self.close();
        e
    }

    /// Unmaps nothing a live batch uses, stops publishing releases, and — before the end —
    /// closes the channel (that is how a consumer leaves, §12.1).
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.releases.lock().space_event = None;
        self.segments.clear();
        self.channel.reading_stream = false;
        self.channel.stream_segments.clear();
        if !self.ended {
            self.channel.hang_up();
        }
    }

    /// The channel (still open after a clean end).
    pub fn channel_mut(&mut self) -> &mut Channel {
        &mut self.channel
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.close();
    }
}

impl Iterator for StreamReader {
    type Item = Result<StreamBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read().transpose()
    }
}

/// Connects to a publication and subscribes (SUBSCRIBE with `metadata`); the reader owns the
/// connection.
pub fn subscribe(address: &str, metadata: &KeyValues, options: ReaderOptions, timeout: Option<Duration>) -> Result<StreamReader> {
    let mut ch = channel::connect(address, Options { timeout, ..Options::default() })?;
    if !ch.peer_capabilities().iter().any(|c| c == "stream") {
        return err(ErrorCode::Protocol, format!("the peer ({}) does not publish streams", ch.peer_implementation()));
    }
    let mut f = Frame::new(Kind::Subscribe);
    f.metadata = metadata.clone();
    let id = ch.send_frame_fds(f, &[])?;
    ch.subscriptions.insert(id, None);
    let deadline = deadline_of(timeout);
    let waited = ch.pump_until(deadline, |c| !c.stream_offers.is_empty() || c.subscriptions.get(&id).is_some_and(|e| e.is_some()));
    let refused = ch.subscriptions.remove(&id).flatten();
    if let Some(e) = refused {
        return Err(e);
    }
    match waited {
        Err(e) if e.code == ErrorCode::Timeout => return err(ErrorCode::Timeout, "no stream offered"),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    StreamReader::accept(ch, options, timeout)
}

// ------------------------------------------------------------------------------------ producer

/// Options of a producer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Bytes of the ring's data area, a power of two (default 16 MiB). Batches whose record
    /// is over a quarter of it travel in their own segment.
    pub capacity: u64,
    /// Most records not yet released by every reader. Default: no limit besides bytes.
    pub max_messages: Option<usize>,
    /// When the ring is full: fail with `ERR_RING_FULL` instead of waiting for room.
    pub fail_when_full: bool,
    /// When waiting for room: `ERR_TIMEOUT` after this long. Default: forever.
    pub write_timeout: Option<Duration>,
    /// Reader slots (1..=62).
    pub max_readers: u32,
    /// User metadata sent with STREAM_OPEN.
    pub metadata: KeyValues,
    /// How long a consumer may take to ACK the STREAM_OPEN.
    pub attach_timeout: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            capacity: ring::DEFAULT_CAPACITY,
            max_messages: None,
            fail_when_full: false,
            write_timeout: None,
            max_readers: MAX_READERS,
            metadata: Vec::new(),
            attach_timeout: Duration::from_secs(5),
        }
    }
}

struct Attached {
    channel: Channel,
    data_event: OwnedFd,
}

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// Owns a ring (§12.2) and writes batches into it for the consumers attached to it.
pub struct RingProducer {
    schema: SchemaRef,
    capacity: u64,
    options: WriterOptions,
    stream_id: u64,
    ring_fd: OwnedFd,
    ring: Arc<Mapping>,
    header: RingHeader,
    space_event: OwnedFd,
    readers: BTreeMap<u32, Attached>,
    write_position: u64,
    sequence: u64,
    /// End positions of published batch records not yet released by every reader (max_messages).
    unreleased: VecDeque<u64>,
    encoder: StreamEncoder,
    schema_bytes: Vec<u8>,
    schema_pending: bool,
    /// Dictionary messages a late joiner needs, in order (§12.4 step 1).
    dictionaries: Vec<(i64, Vec<u8>)>,
    /// Dictionaries the encoder emitted for a batch that then failed (ring full, timeout): the
    /// encoder counts them as sent, so they go before the next batch.
    unsent_dictionaries: Vec<u8>,
    ended: bool,
    closed: bool,
    /// A channel stream fails once its one reader left.
    fail_without_readers: bool,
    next_socket_check: Instant,
}

impl RingProducer {
    pub fn new(schema: SchemaRef, options: WriterOptions) -> Result<RingProducer> {
        check_capacity(options.capacity)?;
        if !(1..=MAX_READERS).contains(&options.max_readers) {
            return err(ErrorCode::InvalidArgument, format!("max_readers must be 1..={MAX_READERS}, got {}", options.max_readers));
        }
        if options.max_messages == Some(0) {
            return err(ErrorCode::InvalidArgument, "max_messages must be at least 1");
        }
        let write_options = ipc::write_options().with_dictionary_handling(DictionaryHandling::Delta);
        let encoder = StreamEncoder::try_new_with_options(&schema, write_options.clone())
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("cannot write this schema: {e}")))?;
        // The encoder emits the Schema with the first batch; joiners before that need it now.
        let schema_only = StreamEncoder::try_new_with_options(&schema, write_options)
            .and_then(|e| e.finish())
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("cannot write this schema: {e}")))?;
        let mut schema_bytes: Vec<u8> = schema_only.iter().flat_map(|b| b.as_slice().iter().copied()).collect();
        schema_bytes.truncate(schema_bytes.len().saturating_sub(ipc::EOS.len()));
        let capacity = options.capacity;
        let size = RING_HEADER_BYTES as u64 + capacity;
        let ring_fd = segment::create_memfd(c"arrow-shm-ring", size)?;
        segment::add_seals(ring_fd.as_raw_fd(), RING_SEALS)?;
        let ring = Arc::new(Mapping::map(ring_fd.as_raw_fd(), size as usize, true)?);
        let header = RingHeader::new(ring.clone())?;
        header.init(capacity, options.max_readers);
        Ok(RingProducer {
            schema,
            capacity,
            stream_id: NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed),
            ring_fd,
            ring,
            header,
            space_event: eventfd()?,
            readers: BTreeMap::new(),
            write_position: 0,
            sequence: 0,
            unreleased: VecDeque::new(),
            encoder,
            schema_bytes,
            schema_pending: true,
            dictionaries: Vec::new(),
            unsent_dictionaries: Vec::new(),
            ended: false,
            closed: false,
            fail_without_readers: false,
            next_socket_check: Instant::now(),
            options,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Consumers attached right now.
    pub fn readers(&mut self) -> usize {
        self.detach_departed();
        self.readers.len()
    }

    /// Attaches `channel` as a consumer (§12.4 step 2); returns once it ACKed the STREAM_OPEN.
    /// `correlation_id`: the SUBSCRIBE's id, or 0. A failure before the STREAM_OPEN was sent is
    /// reported to a subscriber with ERROR.
    pub fn attach(&mut self, mut channel: Channel, correlation_id: u64) -> Result<()> {
        let slot = match self.free_slot(&channel) {
            Ok(slot) => slot,
            Err(e) => {
                if correlation_id != 0 {
                    let _ = channel.send_error(correlation_id, 0, e.code, &e.message);
                }
                return Err(e);
            }
        };
        let mut prologue = self.schema_bytes.clone();
        for (_, d) in &self.dictionaries {
            prologue.extend_from_slice(d);
        }
        let (seg, len) = ipc::write_bytes_segment(&prologue, 0)?;
        let prologue_fd = seg.finish(true)?;
        let data_event = eventfd()?;
        let h = &self.header;
        h.read_position(slot).store(self.write_position, Ordering::SeqCst);
        h.reader_waiting(slot).store(0, Ordering::SeqCst);
        h.slot_pid(slot).store(channel.peer_pid().max(0) as u32, Ordering::Relaxed);
        h.slot_state(slot).store(1, Ordering::SeqCst);
        let mut f = Frame::new(Kind::StreamOpen);
        f.correlation_id = correlation_id;
        f.ipc_length = len as u64;
        let reserved = ["stream_id", "reader_slot", "start_position", "capacity"];
        f.metadata = self.options.metadata.iter().filter(|(k, _)| !reserved.contains(&k.as_str())).cloned().collect();
        f.metadata.extend([
            ("stream_id".to_string(), self.stream_id.to_string()),
            ("reader_slot".to_string(), slot.to_string()),
            ("start_position".to_string(), self.write_position.to_string()),
            ("capacity".to_string(), self.capacity.to_string()),
        ]);
        let fds = [self.ring_fd.as_raw_fd(), prologue_fd.as_raw_fd(), data_event.as_raw_fd(), self.space_event.as_raw_fd()];
        let acked = channel
            .send_acked_frame(f, &fds)
            .and_then(|id| channel.wait_ack(id, Some(self.options.attach_timeout)));
        drop(prologue_fd);
        if let Err(e) = acked {
            h.slot_state(slot).store(0, Ordering::SeqCst);
            return Err(e);
        }
        self.readers.insert(slot, Attached { channel, data_event });
        Ok(())
    }

    fn free_slot(&self, channel: &Channel) -> Result<u32> {
        if self.closed || self.ended {
            return err(ErrorCode::Closed, "the stream has ended");
        }
        if !channel.peer_capabilities().iter().any(|c| c == "stream") {
            return err(ErrorCode::Protocol, format!("the peer ({}) does not accept streams", channel.peer_implementation()));
        }
        (0..self.options.max_readers).find(|s| !self.readers.contains_key(s)).ok_or_else(|| {
            Error::new(ErrorCode::NoReaderSlot, format!("all {} reader slots of the stream are taken", self.options.max_readers))
        })
    }

    /// §12.4 step 5: the slot no longer holds the ring; the connection closes.
    fn detach(&mut self, slot: u32) {
        if let Some(mut r) = self.readers.remove(&slot) {
            self.header.slot_state(slot).store(0, Ordering::SeqCst);
            r.channel.hang_up();
        }
    }

    fn detach_departed(&mut self) {
        let gone: Vec<u32> = self.readers.iter().filter(|(_, r)| r.channel.is_closed()).map(|(s, _)| *s).collect();
        for s in gone {
            self.detach(s);
        }
    }

    /// Reads what the consumers' sockets hold (hang-ups, ERRORs); at most every 10 ms unless
    /// `now`. A channel stream fails once its reader left.
    fn check_readers(&mut self, now: bool) -> Result<()> {
        let t = Instant::now();
        if now || t >= self.next_socket_check {
            self.next_socket_check = t + SOCKET_CHECK_INTERVAL;
            for r in self.readers.values_mut() {
                r.channel.pump_all_ready();
            }
        }
        self.detach_departed();
        if self.fail_without_readers && self.readers.is_empty() {
            return err(ErrorCode::PeerClosed, "the reader left the stream");
        }
        Ok(())
    }

    /// Appends one batch (§12.4 step 3), waiting for room or failing per the options.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.closed || self.ended {
            return err(ErrorCode::Closed, "the stream has ended");
        }
        if batch.schema().fields() != self.schema.fields() {
            return err(ErrorCode::InvalidArgument, "the batch schema differs from the stream schema");
        }
        let encoded = catch_unwind(AssertUnwindSafe(|| self.encoder.encode(batch)))
            .unwrap_or_else(|_| Err(arrow_schema::ArrowError::IpcError("the Arrow encoder panicked".into())))
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("cannot write the batch: {e}")))?;
        let mut payload = std::mem::take(&mut self.unsent_dictionaries);
        let mut skip = if self.schema_pending { self.schema_bytes.len() } else { 0 };
        for b in &encoded {
            let s = b.as_slice();
            let cut = skip.min(s.len());
            skip -= cut;
            payload.extend_from_slice(&s[cut..]);
        }
        self.schema_pending = false;
        let spans = walk_messages(&payload, WalkMode::Record)?;
        if let Err(e) = self.append_record(&payload) {
            for s in spans.iter().filter(|s| s.header == MessageHeader::DictionaryBatch) {
                self.unsent_dictionaries.extend_from_slice(&payload[s.start..s.end]);
            }
            return Err(e);
        }
        for s in spans.iter().filter(|s| s.header == MessageHeader::DictionaryBatch) {
            if !s.is_delta {
                // A replaced dictionary's earlier messages are not needed any more.
                self.dictionaries.retain(|(id, _)| *id != s.dictionary_id);
            }
            self.dictionaries.push((s.dictionary_id, payload[s.start..s.end].to_vec()));
        }
        self.sequence += 1;
        Ok(())
    }

    fn data_ptr(&self) -> *mut u8 {
        // SAFETY: the data area starts 4096 bytes into the writable ring mapping.
        unsafe { (self.ring.as_ptr() as *mut u8).add(RING_HEADER_BYTES) }
    }

    /// Copies `bytes` to data offset `at` (the caller reserved the room: nobody reads it).
    fn write_data(&self, at: u64, bytes: &[u8]) {
        assert!(at.checked_add(bytes.len() as u64).is_some_and(|e| e <= self.capacity), "write outside the ring");
        // SAFETY: inside the writable data area, checked just above.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data_ptr().add(at as usize), bytes.len()) }
    }

    fn append_record(&mut self, payload: &[u8]) -> Result<()> {
        let record_length = align_record((RECORD_HEADER_BYTES + payload.len()) as u64);
        let sequence = self.sequence;
        if record_length > self.capacity / 4 {
            let offset = self.reserve(RECORD_HEADER_BYTES as u64, false)?;
            self.send_segment(payload, sequence)?;
            self.write_data(offset, &encode_record_header(RECORD_HEADER_BYTES as u64, RecordKind::External, sequence, payload.len() as u64));
            self.publish(RECORD_HEADER_BYTES as u64, true);
        } else {
            let offset = self.reserve(record_length, false)?;
            let start = offset + RECORD_HEADER_BYTES as u64;
            self.write_data(start, payload);
            let pad = (record_length - RECORD_HEADER_BYTES as u64) as usize - payload.len();
            self.write_data(start + payload.len() as u64, &vec![0u8; pad]);
            self.write_data(offset, &encode_record_header(record_length, RecordKind::Batch, sequence, payload.len() as u64));
            self.publish(record_length, true);
        }
        Ok(())
    }

    /// A record too big for the ring: its own sealed segment (the schema first, so that it is a
    /// valid IPC stream on its own), sent to every reader before the EXTERNAL record (§12.1).
    fn send_segment(&mut self, payload: &[u8], sequence: u64) -> Result<()> {
        let mut seg = WritableSegment::new(self.schema_bytes.len() + payload.len())?;
        let bytes = seg.bytes_mut();
        bytes[..self.schema_bytes.len()].copy_from_slice(&self.schema_bytes);
        bytes[self.schema_bytes.len()..].copy_from_slice(payload);
        let fd = seg.finish(true)?;
        let mut failed = Vec::new();
        for (slot, r) in self.readers.iter_mut() {
            let mut f = Frame::new(Kind::StreamSegment);
            f.ipc_offset = self.schema_bytes.len() as u64;
            f.ipc_length = payload.len() as u64;
            f.metadata = vec![("stream_id".into(), self.stream_id.to_string()), ("sequence".into(), sequence.to_string())];
            if r.channel.send_frame_fds(f, &[fd.as_raw_fd()]).is_err() {
                failed.push(*slot);
            }
        }
        for s in failed {
            self.detach(s);
        }
        Ok(())
    }

    /// Makes `advance` more bytes visible and wakes sleeping readers (§12.3).
    fn publish(&mut self, advance: u64, counted: bool) {
        self.write_position += advance;
        self.header.write_position().store(self.write_position, Ordering::SeqCst);
        if counted {
            self.unreleased.push_back(self.write_position);
        }
        for (slot, r) in &self.readers {
            wake_if_waiting(self.header.reader_waiting(*slot), r.data_event.as_raw_fd());
        }
    }

    /// The lowest position an attached reader still holds (clamped: a reader cannot claim
    /// more than was written, nor hold more than the ring).
    fn oldest_held(&mut self) -> u64 {
        let wp = self.write_position;
        let floor = wp.saturating_sub(self.capacity);
        let mut oldest = wp;
        for slot in self.readers.keys() {
            let p = self.header.read_position(*slot).load(Ordering::SeqCst).clamp(floor, wp);
            oldest = oldest.min(p);
        }
        while self.unreleased.front().is_some_and(|&e| e <= oldest) {
            self.unreleased.pop_front();
        }
        oldest
    }

    fn fits(&mut self, needed: u64) -> bool {
        self.detach_departed();
        let held = self.write_position - self.oldest_held();
        self.capacity - held >= needed && self.options.max_messages.is_none_or(|m| self.unreleased.len() < m)
    }

    fn drained(&mut self) -> bool {
        self.detach_departed();
        self.oldest_held() >= self.write_position
    }

    /// Room for `length` contiguous bytes: their data offset (padding to the end first if
    /// needed). Waits, or fails with `ERR_RING_FULL` if asked to, unless `always_wait` (END).
    fn reserve(&mut self, length: u64, always_wait: bool) -> Result<u64> {
        let deadline = deadline_of(self.options.write_timeout);
        loop {
            self.check_readers(false)?;
            let offset = self.write_position % self.capacity;
            let tail = self.capacity - offset;
            let needed = if length <= tail { length } else { tail + length };
            if self.fits(needed) {
                if length > tail {
                    self.write_data(offset, &encode_record_header(tail, RecordKind::Padding, 0, 0));
                    self.publish(tail, false);
                    return Ok(0);
                }
                return Ok(offset);
            }
            if self.options.fail_when_full && !always_wait {
                if let Some(m) = self.options.max_messages.filter(|&m| self.unreleased.len() >= m) {
                    return err(ErrorCode::RingFull, format!("{} records are not released yet (max_messages {m})", self.unreleased.len()));
                }
                let held = self.write_position - self.oldest_held();
                return err(
                    ErrorCode::RingFull,
                    format!("the ring has no room for a {length}-byte record ({} bytes, {held} held by readers)", self.capacity),
                );
            }
            if expired(deadline) {
                return err(ErrorCode::Timeout, "no room in the ring within the write timeout");
            }
            self.sleep(|p| p.fits(needed), deadline)?;
        }
    }

    /// §12.3 from the producer's side: flag, re-check, sleep on the space eventfd (or until a
    /// consumer's socket has something: a hang-up), clear the flag.
    fn sleep(&mut self, ready: impl Fn(&mut RingProducer) -> bool, deadline: Option<Instant>) -> Result<()> {
        self.header.producer_waiting().store(1, Ordering::SeqCst);
        let mut result = Ok(());
        if !ready(self) {
            let mut fds = vec![self.space_event.as_raw_fd()];
            fds.extend(self.readers.values().map(|r| r.channel.raw_fd()));
            match poll_readable(&fds, sleep_ms(deadline)) {
                Ok(ready) => {
                    if ready[0] {
                        eventfd_drain(self.space_event.as_raw_fd());
                    }
                    if ready[1..].iter().any(|&r| r) {
                        self.next_socket_check = Instant::now();
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        self.header.producer_waiting().store(0, Ordering::SeqCst);
        result
    }

    /// Publishes the END record (waiting for room), then waits until every reader released
    /// everything or left (§12.4 step 4).
    pub fn end(&mut self, timeout: Option<Duration>) -> Result<()> {
        if self.closed {
            return err(ErrorCode::Closed, "the stream is closed");
        }
        if !self.ended {
            let offset = self.reserve(RECORD_HEADER_BYTES as u64, true)?;
            self.write_data(offset, &encode_record_header(RECORD_HEADER_BYTES as u64, RecordKind::End, self.sequence, 0));
            self.ended = true;
            self.header.ended().store(1, Ordering::SeqCst);
            self.publish(RECORD_HEADER_BYTES as u64, false);
        }
        let deadline = deadline_of(timeout);
        loop {
            for r in self.readers.values_mut() {
                r.channel.pump_all_ready();
            }
            if self.drained() {
                return Ok(());
            }
            if expired(deadline) {
                return err(ErrorCode::Timeout, "the readers did not release every record within the timeout");
            }
            self.sleep(|p| p.drained(), deadline)?;
        }
    }

    /// Frees every reader slot (their connections close: GOODBYE); the ring, its mapping and
    /// the eventfds go with the value.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        let slots: Vec<u32> = self.readers.keys().copied().collect();
        for s in slots {
            self.detach(s);
        }
        self.closed = true;
    }
}

impl Drop for RingProducer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writing end of a stream opened on one channel.
pub struct StreamWriter {
    producer: RingProducer,
}

/// Opens a stream of `schema` to the peer of `channel` (STREAM_OPEN, correlation 0) and waits
/// until it mapped the ring. The writer owns the channel.
pub fn open_stream(channel: Channel, schema: SchemaRef, mut options: WriterOptions) -> Result<StreamWriter> {
    options.max_readers = 1;
    let mut producer = RingProducer::new(schema, options)?;
    producer.fail_without_readers = true;
    producer.attach(channel, 0)?;
    Ok(StreamWriter { producer })
}

impl StreamWriter {
    pub fn schema(&self) -> &SchemaRef {
        self.producer.schema()
    }

    /// Appends a batch; returns once it is in the ring (waiting for room per the options).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.producer.write(batch)
    }

    /// Ends the stream, waits until the reader released everything (or left), says GOODBYE.
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<()> {
        let r = self.producer.end(timeout);
        self.producer.close();
        r
    }

    /// Stops at once, without an END record: the reader fails with `ERR_PEER_CLOSED`.
    pub fn abort(mut self) {
        self.producer.close();
    }
}

/// One producer, any number of subscribers (up to 62) joining at any time; each batch is in the
/// ring once. Subscribers are admitted between writes and while waiting for subscribers.
pub struct Publication {
    listener: Option<Listener>,
    producer: RingProducer,
    subscribe_timeout: Duration,
}

/// Publishes a stream of `schema` at `address` (a listening socket).
pub fn publish(address: &str, schema: SchemaRef, options: WriterOptions) -> Result<Publication> {
    let producer = RingProducer::new(schema, options)?;
    let listener = Listener::bind(address, Options::default())?;
    Ok(Publication { listener: Some(listener), producer, subscribe_timeout: Duration::from_secs(5) })
}

impl Publication {
    pub fn address(&self) -> Option<&str> {
        self.listener.as_ref().map(|l| l.address())
    }

    /// Subscribers attached right now.
    pub fn subscribers(&mut self) -> usize {
        self.producer.readers()
    }

    /// Accepts one connection waiting (up to `timeout`) and attaches it on its SUBSCRIBE.
    /// Returns whether a connection came; a bad subscriber only costs its own connection.
    fn admit(&mut self, timeout: Duration) -> Result<bool> {
        let Some(listener) = &self.listener else { return Ok(false) };
        if !poll_readable(&[listener.raw_fd()], timeout.as_millis().min(i32::MAX as u128) as i32)?[0] {
            return Ok(false);
        }
        let Ok(mut ch) = listener.accept(Some(self.subscribe_timeout)) else { return Ok(true) };
        ch.accept_subscribe = true;
        let deadline = Some(Instant::now() + self.subscribe_timeout);
        if ch.pump_until(deadline, |c| !c.subscribes.is_empty()).is_err() {
            return Ok(true);
        }
        let frame = ch.subscribes.pop_front().expect("a SUBSCRIBE");
        let _ = self.producer.attach(ch, frame.message_id);
        Ok(true)
    }

    /// Returns once at least `count` subscribers are attached (`ERR_TIMEOUT` after `timeout`).
    pub fn wait_for_subscribers(&mut self, count: usize, timeout: Option<Duration>) -> Result<()> {
        let deadline = deadline_of(timeout);
        while self.subscribers() < count {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(100),
            };
            if left.is_zero() {
                return err(ErrorCode::Timeout, format!("fewer than {count} subscribers within the timeout"));
            }
            self.admit(left.min(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// Publishes a batch to every subscriber (waiting for slow ones per the options).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        while self.admit(Duration::ZERO)? {}
        self.producer.write(batch)
    }

    /// Ends the publication: the END record, then waits until every subscriber released
    /// everything or left; then closes every connection.
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<()> {
        self.listener = None;
        let r = self.producer.end(timeout);
        self.producer.close();
        r
    }
}
