//! The producing end: owns a ring and writes batches into it for the consumers attached to
//! it ([`RingProducer`]); [`StreamWriter`] is one producer for the one peer of a channel.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_ipc::writer::{DictionaryHandling, StreamEncoder};
use arrow_ipc::MessageHeader;
use arrow_schema::{DataType, SchemaRef};

use crate::channel::Channel;
use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{Frame, KeyValues, Kind};
use crate::ipc::{self, walk_messages, WalkMode};
use crate::ring::{
    self, align_record, check_capacity, encode_record_header, eventfd, eventfd_drain, place_record, poll_readable, ring_offset,
    wake_if_waiting, Placement, RecordKind, RingHeader, MAX_READERS, RECORD_HEADER_BYTES, RING_HEADER_BYTES, RING_SEALS,
};
use crate::segment::{self, Mapping, WritableSegment};

use super::encoder::BatchEncoder;
use super::link::Link;
use super::{deadline_of, expired, sleep_ms, spin_until, ReaderOptions, StreamReader};

/// How often a producer that never has to wait looks at its consumers' sockets for hang-ups.
const SOCKET_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// The warm part of the ring: while its readers keep up, the producer goes back to offset 0 (a
/// PADDING record fills the rest, §12.2) once a record would end past the larger of these, so
/// that records reuse a few cache-warm bytes instead of cycling through the whole (cold) ring.
/// Back-pressure is unchanged: when the start is not free yet, records go on into the rest.
const WARM_BYTES: u64 = 256 << 10;
const WARM_RECORDS: u64 = 4;

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
    /// When the ring is full, busy-poll the readers' positions this long before sleeping. Default 0.
    pub spin_micros: u64,
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
            spin_micros: 0,
        }
    }
}

struct Attached {
    channel: Link,
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
    /// The template writer of a flat schema (None: every batch goes through arrow-rs's encoder).
    batch_encoder: Option<BatchEncoder>,
    /// A lower bound of the lowest read position (the last one computed): room below it is
    /// known to be free without loading the readers' slots.
    known_oldest: u64,
    schema_bytes: Vec<u8>,
    schema_pending: bool,
    /// The schema has a dictionary column: records are walked for the joiners' prologue.
    has_dictionaries: bool,
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
    /// A new ring for `schema` with `options.capacity` bytes (checked: a power of two within limits).
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
        let has_dictionaries = schema.fields().iter().any(|f| has_dictionary(f.data_type()));
        let batch_encoder = if has_dictionaries { None } else { BatchEncoder::for_schema(&schema) };
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
            batch_encoder,
            known_oldest: 0,
            has_dictionaries,
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

    /// The stream's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The ring's data area in bytes.
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
    pub fn attach(&mut self, channel: Channel, correlation_id: u64) -> Result<()> {
        self.attach_link(Link::new(channel), correlation_id)
    }

    fn attach_link(&mut self, link: Link, correlation_id: u64) -> Result<()> {
        let mut channel = link.get();
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
        drop(channel);
        if let Err(e) = acked {
            h.slot_state(slot).store(0, Ordering::SeqCst);
            return Err(e);
        }
        self.readers.insert(slot, Attached { channel: link, data_event });
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
        if let Some(r) = self.readers.remove(&slot) {
            self.header.slot_state(slot).store(0, Ordering::SeqCst);
            r.channel.leave();
        }
    }

    fn detach_departed(&mut self) {
        let gone: Vec<u32> = self.readers.iter().filter(|(_, r)| r.channel.get().is_closed()).map(|(s, _)| *s).collect();
        for s in gone {
            self.detach(s);
        }
    }

    /// Reads what the consumers' sockets hold (hang-ups, ERRORs) and detaches the readers that
    /// left; at most every 10 ms unless `now` (a sleep woken by a socket makes it due at once).
    /// A channel stream fails once its reader left.
    fn check_readers(&mut self, now: bool) -> Result<()> {
        let t = Instant::now();
        if now || t >= self.next_socket_check {
            self.next_socket_check = t + SOCKET_CHECK_INTERVAL;
            for r in self.readers.values() {
                r.channel.get().pump_all_ready();
            }
            self.detach_departed();
        }
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
        if let Some(ipc_length) = self.batch_encoder.as_mut().and_then(|e| e.measure(batch)) {
            let mut encoder = self.batch_encoder.take().expect("the batch encoder");
            let written = (!self.is_external(ipc_length)).then(|| self.append_in_ring(ipc_length, |slot| encoder.write(slot)));
            encoder.clear();
            self.batch_encoder = Some(encoder);
            if let Some(written) = written {
                written?;
                self.sequence += 1;
                return Ok(());
            }
        }
        let encoded = catch_unwind(AssertUnwindSafe(|| self.encoder.encode(batch)))
            .unwrap_or_else(|_| Err(arrow_schema::ArrowError::IpcError("the Arrow encoder panicked".into())))
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("cannot write the batch: {e}")))?;
        // The encoder's parts point into the batch's buffers: without dictionaries they go
        // straight into the record's slot (one copy of the data).
        let mut skip = if self.schema_pending { self.schema_bytes.len() } else { 0 };
        let mut parts: Vec<&[u8]> = Vec::with_capacity(encoded.len());
        for b in &encoded {
            let s = b.as_slice();
            let cut = skip.min(s.len());
            skip -= cut;
            parts.push(&s[cut..]);
        }
        self.schema_pending = false;
        if !self.has_dictionaries {
            self.append_record(&parts)?;
            self.sequence += 1;
            return Ok(());
        }
        let mut payload = std::mem::take(&mut self.unsent_dictionaries);
        parts.iter().for_each(|p| payload.extend_from_slice(p));
        let spans = walk_messages(&payload, WalkMode::Record, &ipc::Limits::default(), &mut None)?;
        if let Err(e) = self.append_record(&[&payload]) {
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

    /// The data area's bytes `[at, at + len)` (the caller reserved them: nobody reads them).
    fn data_mut(&mut self, at: u64, len: usize) -> &mut [u8] {
        assert!(at.checked_add(len as u64).is_some_and(|e| e <= self.capacity), "write outside the ring");
        // SAFETY: inside the writable data area, checked just above; `&mut self` keeps it unique here.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr().add(at as usize), len) }
    }

    /// Copies `bytes` to data offset `at` (the caller reserved the room: nobody reads it).
    fn write_data(&mut self, at: u64, bytes: &[u8]) {
        self.data_mut(at, bytes.len()).copy_from_slice(bytes);
    }

    /// Whether a record of `ipc_length` payload bytes travels in its own segment (§12.2).
    fn is_external(&self, ipc_length: usize) -> bool {
        align_record((RECORD_HEADER_BYTES + ipc_length) as u64) > self.capacity / 4
    }

    /// One record of the concatenation of `parts` (the record's IPC messages).
    fn append_record(&mut self, parts: &[&[u8]]) -> Result<()> {
        let ipc_length: usize = parts.iter().map(|p| p.len()).sum();
        if !self.is_external(ipc_length) {
            return self.append_in_ring(ipc_length, |slot| {
                let mut at = 0;
                for part in parts {
                    slot[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
            });
        }
        let sequence = self.sequence;
        let offset = self.reserve(RECORD_HEADER_BYTES as u64, false)?;
        self.send_segment(parts, ipc_length, sequence)?;
        self.write_data(offset, &encode_record_header(RECORD_HEADER_BYTES as u64, RecordKind::External, sequence, ipc_length as u64));
        self.publish(RECORD_HEADER_BYTES as u64, true);
        Ok(())
    }

    /// A BATCH record of `ipc_length` payload bytes that `fill` writes straight into the slot.
    fn append_in_ring(&mut self, ipc_length: usize, fill: impl FnOnce(&mut [u8])) -> Result<()> {
        let record_length = align_record((RECORD_HEADER_BYTES + ipc_length) as u64);
        let offset = self.reserve(record_length, false)?;
        let slot = self.data_mut(offset + RECORD_HEADER_BYTES as u64, record_length as usize - RECORD_HEADER_BYTES);
        let (payload, pad) = slot.split_at_mut(ipc_length);
        fill(payload);
        pad.fill(0);
        self.write_data(offset, &encode_record_header(record_length, RecordKind::Batch, self.sequence, ipc_length as u64));
        self.publish(record_length, true);
        Ok(())
    }

    /// A record too big for the ring: its own sealed segment (the schema first, so that it is a
    /// valid IPC stream on its own), sent to every reader before the EXTERNAL record (§12.1).
    fn send_segment(&mut self, parts: &[&[u8]], ipc_length: usize, sequence: u64) -> Result<()> {
        let mut seg = WritableSegment::new(self.schema_bytes.len() + ipc_length)?;
        let mut all: Vec<&[u8]> = vec![&self.schema_bytes];
        all.extend_from_slice(parts);
        seg.write_at(0, &all)?;
        let fd = seg.finish(true)?;
        let mut failed = Vec::new();
        for (slot, r) in self.readers.iter() {
            let mut f = Frame::new(Kind::StreamSegment);
            f.ipc_offset = self.schema_bytes.len() as u64;
            f.ipc_length = ipc_length as u64;
            f.metadata = vec![("stream_id".into(), self.stream_id.to_string()), ("sequence".into(), sequence.to_string())];
            if r.channel.get().send_frame_fds(f, &[fd.as_raw_fd()]).is_err() {
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
        if counted && self.options.max_messages.is_some() {
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
        self.known_oldest = oldest;
        oldest
    }

    fn fits(&mut self, needed: u64) -> bool {
        // Room known from the last look: no load of the readers' (other cores') cache lines. A
        // reader's position only grows, a joiner starts at the write position, a leaver frees.
        if self.options.max_messages.is_none() && self.capacity - (self.write_position - self.known_oldest) >= needed {
            return true;
        }
        self.detach_departed();
        let held = self.write_position - self.oldest_held();
        self.capacity - held >= needed && self.options.max_messages.is_none_or(|m| self.unreleased.len() < m)
    }

    /// Where a `length`-byte record goes: §12.2's place, or back at offset 0 when it would end
    /// past the warm part of the ring and the start is free already (see [`WARM_BYTES`]).
    fn place(&mut self, length: u64) -> Placement {
        let place = place_record(self.write_position, length, self.capacity);
        let offset = ring_offset(self.write_position, self.capacity);
        let tail = self.capacity - offset;
        let warm = WARM_BYTES.max(WARM_RECORDS * length);
        // (A PADDING record's length is a u32.)
        if place.padding == 0 && offset > 0 && offset + length > warm && tail <= u32::MAX as u64 && self.fits(tail + length) {
            return Placement { offset: 0, padding: tail };
        }
        place
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
            let place = self.place(length);
            let needed = place.padding + length;
            if self.fits(needed) {
                if place.padding > 0 {
                    let at = ring_offset(self.write_position, self.capacity);
                    self.write_data(at, &encode_record_header(place.padding, RecordKind::Padding, 0, 0));
                    self.publish(place.padding, false);
                }
                return Ok(place.offset);
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
            if spin_until(self.options.spin_micros, || self.fits(needed)) {
                continue;
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
            fds.extend(self.readers.values().map(|r| r.channel.get().raw_fd()));
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
            for r in self.readers.values() {
                r.channel.get().pump_all_ready();
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
    channel: Link,
}

/// Opens a stream of `schema` to the peer of `channel` (STREAM_OPEN, correlation 0) and waits
/// until it mapped the ring. The writer owns the channel.
pub fn open_stream(channel: Channel, schema: SchemaRef, options: WriterOptions) -> Result<StreamWriter> {
    open_on(Link::new(channel), schema, options)
}

pub(super) fn open_on(channel: Link, schema: SchemaRef, mut options: WriterOptions) -> Result<StreamWriter> {
    options.max_readers = 1;
    let mut producer = RingProducer::new(schema, options)?;
    producer.fail_without_readers = true;
    producer.attach_link(channel.clone(), 0)?;
    Ok(StreamWriter { producer, channel })
}

impl StreamWriter {
    /// The stream's schema.
    pub fn schema(&self) -> &SchemaRef {
        self.producer.schema()
    }

    /// Appends a batch; returns once it is in the ring (waiting for room per the options).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.producer.write(batch)
    }

    /// Waits for the stream the reader opens back on the same connection
    /// ([`StreamReader::open_reply`]) and reads it.
    pub fn accept_reply(&mut self, options: ReaderOptions, timeout: Option<Duration>) -> Result<StreamReader> {
        StreamReader::accept_on(self.channel.clone(), options, timeout)
    }

    /// Ends the stream, waits until the reader released everything (or left), says GOODBYE
    /// (unless a reply stream still uses the connection: it closes when that is done too).
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<()> {
        let r = self.producer.end(timeout);
        self.producer.close();
        r
    }

    /// Stops at once, without an END record: the reader fails with `ERR_PEER_CLOSED`.
    pub fn abort(mut self) {
        self.producer.close();
        self.channel.hang_up();
    }
}


/// Whether `t` is or holds a dictionary (unknown nesting counts as yes: the careful path).
fn has_dictionary(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, _) => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::ListView(f) | DataType::LargeListView(f) => has_dictionary(f.data_type()),
        DataType::Struct(fs) => fs.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fs, _) => fs.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(a, b) => has_dictionary(a.data_type()) || has_dictionary(b.data_type()),
        t => t.is_nested(),
    }
}
