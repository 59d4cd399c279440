//! The consuming end of a stream: reads records in order, decodes their batches in place.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::MessageHeader;
use arrow_schema::SchemaRef;

use crate::channel::{self, Channel, Options};
use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{kv_get, Frame, KeyValues, Kind};
use crate::ipc::{self, walk_messages, MessageSpan, SchemaLayout, WalkMode};
use crate::ring::{check_record_header, eventfd_drain, poll_readable, ring_offset, RecordKind, RingHeader, RECORD_HEADER_BYTES};
use crate::segment::{self, Mapping};

use super::decoder::DecodePlan;
use super::lease::{leased_buffer, Held, ReleaseQueue, ReleaseState, StreamBatch};
use super::link::Link;
use super::producer::{open_on, StreamWriter, WriterOptions};
use super::open::{open_parts, MessageDecoder};
use super::{deadline_of, expired, sleep_ms, spin_until};

/// Options of a stream reader.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// `read()` fails with `ERR_TIMEOUT` after this long without a batch. Default: forever.
    pub read_timeout: Option<Duration>,
    /// Largest batch accepted through its own segment (EXTERNAL records). Default 16 GiB.
    pub max_message_bytes: u64,
    /// Decoding limits of the prologue and of every record (PROTOCOL.md §14.1).
    pub limits: ipc::Limits,
    /// Busy-poll the write position this long before sleeping on the eventfd (§12.3): a
    /// reader that keeps up then never makes a system call, at the cost of a core. Default 0.
    pub spin_micros: u64,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            read_timeout: None,
            max_message_bytes: segment::DEFAULT_MAX_MESSAGE_BYTES,
            limits: ipc::Limits::default(),
            spin_micros: 0,
        }
    }
}

type ExternalSegment = Result<(Arc<Mapping>, usize, usize)>;

/// The consuming end of a stream. Owns its channel (or shares it with the reply stream it
/// opened); dropping it before the end leaves the stream (the connection is closed, which is
/// how a consumer says it left, §12.1).
pub struct StreamReader {
    channel: Link,
    options: ReaderOptions,
    header: RingHeader,
    data: Arc<Mapping>,
    capacity: u64,
    slot: u32,
    data_event: OwnedFd,
    releases: Arc<ReleaseState>,
    prologue: Buffer,
    decoder: MessageDecoder,
    /// The fast path for records of one plain RecordBatch message; None when the schema has none.
    plan: Option<DecodePlan>,
    schema: SchemaRef,
    /// The counts the prologue's schema fixes for every record (§14.1).
    layout: Option<SchemaLayout>,
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

impl StreamReader {
    /// Waits for the peer to open a stream on `channel` (STREAM_OPEN), checks and maps it, and
    /// ACKs it. A refused stream is answered with ERROR and returned as the error.
    pub fn accept(channel: Channel, options: ReaderOptions, timeout: Option<Duration>) -> Result<StreamReader> {
        StreamReader::accept_on(Link::new(channel), options, timeout)
    }

    pub(super) fn accept_on(link: Link, options: ReaderOptions, timeout: Option<Duration>) -> Result<StreamReader> {
        let deadline = deadline_of(timeout);
        let mut channel = link.get();
        match channel.pump_until(deadline, |c| !c.stream_offers.is_empty()) {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::Timeout => return err(ErrorCode::Timeout, "no stream offered"),
            Err(e) => return Err(e),
        }
        let (frame, fds) = channel.stream_offers.pop_front().expect("an offer");
        let opened = match open_parts(&frame, fds, &options.limits) {
            Ok(o) => o,
            Err(e) => {
                let _ = channel.send_error(frame.message_id, 0, e.code, &e.message);
                return Err(e);
            }
        };
        channel.send_ack(frame.message_id)?;
        channel.reading_stream = true;
        drop(channel);
        let releases = Arc::new(ReleaseState {
            queue: Mutex::new(ReleaseQueue { held: VecDeque::new(), read_position: opened.start, space_event: Some(opened.space_event) }),
            header: opened.header.clone(),
            slot: opened.slot,
        });
        let plan = DecodePlan::for_schema(&opened.schema, &options.limits);
        Ok(StreamReader {
            channel: link,
            options,
            header: opened.header,
            data: opened.data,
            capacity: opened.capacity,
            slot: opened.slot,
            data_event: opened.data_event,
            releases,
            prologue: opened.prologue,
            decoder: opened.decoder,
            plan,
            schema: opened.schema,
            layout: opened.layout,
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

    /// The stream's schema.
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

    /// Batches read so far.
    pub fn batches_read(&self) -> u64 {
        self.batches_read
    }

    /// Whether the END record was read.
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
            let position = self.position;
            if spin_until(self.options.spin_micros, || self.header.write_position().load(Ordering::Acquire) > position) {
                continue;
            }
            if let Some(e) = self.peer_gone() {
                // What it published before it hung up is still read (§12.1): the position seen
                // above may predate its last records.
                if self.header.write_position().load(Ordering::Acquire) > position {
                    continue;
                }
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
            let socket = self.channel.get().raw_fd();
            poll_readable(&[self.data_event.as_raw_fd(), socket], sleep_ms(deadline)).map(|ready| {
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
        let failure = self.channel.get().pump_all_ready();
        self.take_segments();
        let failure = failure.or_else(|| self.channel.get().close_error().cloned())?;
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
        let offset = ring_offset(self.position, self.capacity);
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
        if let Some(batch) = self.plan.as_mut().and_then(|p| p.decode(bytes)) {
            return Ok(batch);
        }
        let spans = walk_messages(bytes.as_slice(), WalkMode::Record, &self.options.limits, &mut self.layout)?;
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
            let socket = self.channel.get().raw_fd();
            poll_readable(&[socket], sleep_ms(deadline))?;
        }
    }

    /// Checks and maps the STREAM_SEGMENTs the channel queued (§5.1); a refused one is
    /// answered with ERROR and its batch fails.
    fn take_segments(&mut self) {
        loop {
            let Some((frame, fds)) = self.channel.get().stream_segments.pop_front() else { break };
            let sequence = kv_get(&frame.metadata, "sequence")
                .filter(|t| !t.is_empty() && t.len() <= 16 && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok());
            let result = (|| -> ExternalSegment {
                if sequence.is_none() {
                    return err(ErrorCode::Protocol, "STREAM_SEGMENT without a valid sequence");
                }
                let (map, len) = channel::open_frame_segment("STREAM_SEGMENT", &frame, &fds, self.options.max_message_bytes, false)?;
                Ok((Arc::new(map), frame.ipc_offset as usize, len as usize))
            })();
            drop(fds);
            if let Err(e) = &result {
                let _ = self.channel.get().send_error(frame.message_id, 0, e.code, &e.message);
            }
            if let Some(seq) = sequence {
                self.segments.insert(seq, result);
            }
        }
    }

    /// A broken ring ends the stream: tell the producer (fatal ERROR), close, return the error.
    fn broken(&mut self, e: Error) -> Error {
        let _ = self.channel.get().send_error(0, 0, e.code, &e.message);
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
        let mut channel = self.channel.get();
        channel.reading_stream = false;
        channel.stream_segments.clear();
        if !self.ended {
            channel.hang_up();
        }
    }

    /// The channel (still open after a clean end).
    pub fn channel_mut(&mut self) -> impl std::ops::DerefMut<Target = Channel> + '_ {
        self.channel.get()
    }

    /// Opens a stream back to this stream's producer on the same connection (a reply stream,
    /// e.g. request/response or ping-pong); the peer takes it with [`StreamWriter::accept_reply`].
    pub fn open_reply(&mut self, schema: SchemaRef, options: WriterOptions) -> Result<StreamWriter> {
        if self.closed {
            return err(ErrorCode::Closed, "the stream reader is closed");
        }
        open_on(self.channel.clone(), schema, options)
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
