//! Channels over `SOCK_SEQPACKET` (PROTOCOL.md §2–§8): listen/connect with the `SO_PEERCRED`
//! check, the handshake, sending sealed segments and waiting for `ACK`, receiving with the §5.1
//! checks, and request/response with correlation ids and timeouts.
//!
//! A channel is single-threaded (`&mut self`): whatever arrives while one call waits for
//! something else (tables, ACKs, responses) is queued for the call that wants it.
mod handshake;
mod listener;
mod options;
mod received;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::Schema;

use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{inline_room, Frame, KeyValues, Kind, FLAG_INLINE, FLAG_LEASED, FLAG_REQUEST, FLAG_RESPONSE, MAX_FRAME, VERSION};
use crate::ipc;
use crate::pool::{SparePool, DEFAULT_SPARE_BYTES};
use crate::segment::{self, Mapping, WritableSegment};
use crate::sys;
use crate::trace::{trace_stage, HandoffStage};

pub(crate) use handshake::{answer_hello, connect_with, remote_error};
pub use handshake::{connect, CAPABILITIES, HELLO_TIMEOUT, IMPLEMENTATION};
pub use listener::Listener;
pub use options::Options;
pub use received::ReceivedTable;

/// An encoded stream's parts as the byte slices a send copies.
fn slices(parts: &[arrow_buffer::Buffer]) -> Vec<&[u8]> {
    parts.iter().map(|p| p.as_slice()).collect()
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

/// The one segment a TABLE or STREAM_SEGMENT frame carries: exactly one fd, then the §5.1
/// checks and the mapping.
pub(crate) fn open_frame_segment(
    what: &str,
    frame: &Frame,
    fds: &[OwnedFd],
    max_message_bytes: u64,
    allow_unsealed: bool,
) -> Result<(Mapping, u64)> {
    if frame.fd_count != 1 || fds.len() != 1 {
        let attached = fds.len();
        return err(ErrorCode::Protocol, format!("{what} with fd_count {} and {attached} fds attached (expected 1)", frame.fd_count));
    }
    segment::open_segment(fds[0].as_raw_fd(), frame.ipc_offset, Some(frame.ipc_length), max_message_bytes, allow_unsealed)
}

/// One side of a connection after the handshake.
pub struct Channel {
    fd: OwnedFd,
    opts: Options,
    next_id: u64,
    handshaken: bool,
    closed: Option<Error>,
    peer_pid: i32,
    peer_caps: Vec<String>,
    peer_implementation: String,
    peer_max_message_bytes: u64,
    /// Received tables (or their message-level failures), in arrival order, and the
    /// `ipc_length` of those tables (bounded by the options' `max_inbox_*`).
    inbox: VecDeque<Result<ReceivedTable>>,
    inbox_bytes: u64,
    /// Sent TABLEs waiting for ACK → result once it came.
    awaiting_ack: HashSet<u64>,
    acks: HashMap<u64, Result<()>>,
    /// Requests waiting for a response → the response once it came.
    awaiting_response: HashSet<u64>,
    responses: HashMap<u64, Result<ReceivedTable>>,
    recv_buf: Vec<u8>,
    /// STREAM_OPEN frames not taken by `accept_stream` yet, with their 4 fds.
    pub(crate) stream_offers: VecDeque<(Frame, Vec<OwnedFd>)>,
    /// STREAM_SEGMENT frames for the open stream reader, with their fds (checked by the reader).
    pub(crate) stream_segments: VecDeque<(Frame, Vec<OwnedFd>)>,
    /// A stream reader is open on this channel (STREAM_SEGMENTs are queued, not refused).
    pub(crate) reading_stream: bool,
    /// Pre-allocated segments for the next sends (closed with the channel).
    spares: SparePool,
    /// SUBSCRIBE frames, when this side publishes (`accept_subscribe`).
    pub(crate) subscribes: VecDeque<Frame>,
    pub(crate) accept_subscribe: bool,
    /// Our SUBSCRIBE ids → the ERROR that answered them, if any.
    pub(crate) subscriptions: HashMap<u64, Option<Error>>,
    /// On a table store's connection (§15; `crate::store`): the TABLE, STORE and answering ERROR
    /// frames, with their fds, left for the store client to dispatch.
    pub(crate) store_frames: Option<VecDeque<(Frame, Vec<OwnedFd>)>>,
}

impl Channel {
    fn new(fd: OwnedFd, opts: Options) -> Channel {
        let spares = SparePool::new(if opts.spare_segments { DEFAULT_SPARE_BYTES } else { 0 });
        Channel {
            spares,
            fd,
            opts,
            next_id: 1,
            handshaken: false,
            closed: None,
            peer_pid: 0,
            peer_caps: Vec::new(),
            peer_implementation: String::new(),
            peer_max_message_bytes: u64::MAX,
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            awaiting_ack: HashSet::new(),
            acks: HashMap::new(),
            awaiting_response: HashSet::new(),
            responses: HashMap::new(),
            recv_buf: vec![0u8; MAX_FRAME],
            stream_offers: VecDeque::new(),
            stream_segments: VecDeque::new(),
            reading_stream: false,
            subscribes: VecDeque::new(),
            accept_subscribe: false,
            subscriptions: HashMap::new(),
            store_frames: None,
        }
    }

    /// The peer's `implementation` string from the handshake (e.g. `arrow-shm-py/0.1.0`).
    pub fn peer_implementation(&self) -> &str {
        &self.peer_implementation
    }
    /// The capabilities the peer listed in the handshake (e.g. `stream`, `lease`).
    pub fn peer_capabilities(&self) -> &[String] {
        &self.peer_caps
    }
    /// The largest `ipc_length` the peer accepts (its WELCOME's `max_message_bytes`; unlimited
    /// when this side listened).
    pub fn peer_max_message_bytes(&self) -> u64 {
        self.peer_max_message_bytes
    }
    /// The peer's process id (`SO_PEERCRED` on the listening side, its HELLO/WELCOME otherwise).
    pub fn peer_pid(&self) -> i32 {
        self.peer_pid
    }

    /// Whether the channel was closed (by either side, or by a fatal error).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    fn shutdown(&mut self) {
        if self.closed.is_none() {
            self.closed = Some(Error::new(ErrorCode::Closed, "the channel is closed"));
        }
        // SAFETY: plain syscall on our fd.
        unsafe {
            libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }

    /// The error the channel closed with (`ERR_PEER_CLOSED` after a hang-up or GOODBYE).
    pub fn close_error(&self) -> Option<&Error> {
        self.closed.as_ref()
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Reads and dispatches one frame if one is waiting; `Ok(false)` if none was (or the inbox
    /// is full: then the socket is not read).
    pub(crate) fn pump_ready(&mut self) -> Result<bool> {
        self.check_open()?;
        if self.inbox_full() || !crate::ring::poll_readable(&[self.fd.as_raw_fd()], 0)?[0] {
            return Ok(false);
        }
        self.pump(None)?;
        Ok(true)
    }

    /// Reads and dispatches every frame already waiting; returns the channel's failure, if any.
    pub(crate) fn pump_all_ready(&mut self) -> Option<Error> {
        loop {
            match self.pump_ready() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) if e.code == ErrorCode::Timeout => return None,
                Err(e) => return Some(e),
            }
        }
    }

    /// Reads and dispatches frames until `done` holds, the deadline passes (`ERR_TIMEOUT`) or the
    /// channel fails.
    pub(crate) fn pump_until(&mut self, deadline: Option<Instant>, mut done: impl FnMut(&mut Channel) -> bool) -> Result<()> {
        loop {
            if done(self) {
                return Ok(());
            }
            self.pump(deadline)?;
        }
    }

    fn check_open(&self) -> Result<()> {
        match &self.closed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Sends a frame (assigning its message_id), with an optional fd. Returns the id.
    fn send_frame(&mut self, frame: Frame, fd: Option<&OwnedFd>) -> Result<u64> {
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.send_frame_fds(frame, &fds)
    }

    /// Sends a frame with `fds` (which stay the caller's), assigning its message_id.
    pub(crate) fn send_frame_fds(&mut self, frame: Frame, fds: &[i32]) -> Result<u64> {
        self.send_frame_with(frame, fds, None)
    }

    /// [`Self::send_frame_fds`], with an INLINE TABLE's IPC stream `inline` encoded into the frame (§5.3).
    fn send_frame_with(&mut self, mut frame: Frame, fds: &[i32], inline: Option<&[&[u8]]>) -> Result<u64> {
        frame.message_id = self.next_id;
        frame.fd_count = fds.len() as u32;
        let bytes = match inline {
            Some(parts) => {
                let bytes = frame.encode_inline(parts)?;
                trace_stage(HandoffStage::Copy, frame.message_id);
                bytes
            }
            None => frame.encode()?,
        };
        sys::send_with_fds(self.fd.as_raw_fd(), &bytes, fds)?;
        self.next_id += 1;
        Ok(frame.message_id)
    }

    /// Sends a stream frame that the peer answers with ACK or ERROR (STREAM_OPEN).
    pub(crate) fn send_acked_frame(&mut self, frame: Frame, fds: &[i32]) -> Result<u64> {
        self.check_open()?;
        let id = self.send_frame_fds(frame, fds)?;
        self.awaiting_ack.insert(id);
        Ok(id)
    }

    /// Acknowledges frame `id`.
    pub(crate) fn send_ack(&mut self, id: u64) -> Result<()> {
        let mut ack = Frame::new(Kind::Ack);
        ack.correlation_id = id;
        self.send_frame(ack, None).map(|_| ())
    }

    pub(crate) fn send_error(&mut self, correlation_id: u64, flags: u8, code: ErrorCode, message: &str) -> Result<u64> {
        let mut f = Frame::new(Kind::Error);
        f.correlation_id = correlation_id;
        f.flags = flags;
        let mut message = message.to_string();
        if message.len() > 60_000 {
            let mut cut = 60_000;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        f.metadata = vec![("code".into(), code.as_str().into()), ("message".into(), message)];
        self.send_frame(f, None)
    }

    /// A fatal protocol error: tell the peer (best effort), close, remember and return it.
    fn fatal(&mut self, e: Error) -> Error {
        if e.code.is_fatal() {
            let _ = self.send_error(0, 0, e.code, &e.message);
        }
        self.shutdown();
        self.closed = Some(e.clone());
        e
    }

    /// Reads and decodes one frame, with the fds that came with it. EOF is `ERR_PEER_CLOSED`.
    fn read_raw(&mut self, deadline: Option<Instant>) -> Result<(Frame, Vec<OwnedFd>)> {
        sys::wait_readable(self.fd.as_raw_fd(), deadline, "the peer")?;
        let r = sys::recv_with_fds(self.fd.as_raw_fd(), &mut self.recv_buf)?;
        if r.len == 0 && r.fds.is_empty() {
            return err(ErrorCode::PeerClosed, "the peer hung up");
        }
        if r.flags & libc::MSG_TRUNC != 0 {
            return err(ErrorCode::Protocol, format!("frame larger than {MAX_FRAME} bytes (MSG_TRUNC)"));
        }
        if r.flags & libc::MSG_CTRUNC != 0 {
            return err(ErrorCode::Protocol, "too many file descriptors with one frame (MSG_CTRUNC)");
        }
        let frame = Frame::decode(&self.recv_buf[..r.len])?;
        Ok((frame, r.fds))
    }

    /// Handshake-time read: any failure is returned as is.
    fn read_frame(&mut self, deadline: Option<Instant>) -> Result<Frame> {
        let (frame, fds) = self.read_raw(deadline)?;
        if !fds.is_empty() {
            return err(ErrorCode::Protocol, format!("{:?} frame carried {} fds", frame.kind, fds.len()));
        }
        Ok(frame)
    }

    fn inbox_full(&self) -> bool {
        self.inbox.len() >= self.opts.max_inbox_messages.max(1) || self.inbox_bytes >= self.opts.max_inbox_bytes
    }

    /// Reads one frame and dispatches it into the queues. Fatal errors close the channel. With a
    /// full inbox the socket is not read (§14.2): nothing can arrive until `receive` takes a
    /// table, which a single-threaded caller waiting for something else cannot do, so that wait
    /// fails with `ERR_RESOURCE_LIMIT` (the channel stays usable).
    fn pump(&mut self, deadline: Option<Instant>) -> Result<()> {
        self.check_open()?;
        if self.inbox_full() {
            return err(
                ErrorCode::ResourceLimit,
                format!(
                    "{} received tables ({} bytes) wait in the inbox (max_inbox_messages {}, max_inbox_bytes {}): receive() them first",
                    self.inbox.len(),
                    self.inbox_bytes,
                    self.opts.max_inbox_messages,
                    self.opts.max_inbox_bytes
                ),
            );
        }
        let (frame, fds) = match self.read_raw(deadline) {
            Ok(x) => x,
            Err(e) if e.code == ErrorCode::Timeout => return Err(e),
            Err(e) if e.code == ErrorCode::PeerClosed => {
                self.shutdown();
                self.closed = Some(e.clone());
                return Err(e);
            }
            Err(e) => return Err(self.fatal(e)),
        };
        if frame.version != VERSION {
            return Err(self.fatal(Error::new(
                ErrorCode::ProtocolVersion,
                format!("frame of version {} on a version {VERSION} connection", frame.version),
            )));
        }
        if !matches!(frame.kind, Kind::Table | Kind::StreamOpen | Kind::StreamSegment) && !fds.is_empty() {
            return Err(self.fatal(Error::new(
                ErrorCode::Protocol,
                format!("{:?} frame carried {} fds", frame.kind, fds.len()),
            )));
        }
        if let Some(store_frames) = &mut self.store_frames {
            match frame.kind {
                Kind::Table | Kind::Store => {
                    store_frames.push_back((frame, fds));
                    return Ok(());
                }
                Kind::Error if frame.correlation_id != 0 => {
                    store_frames.push_back((frame, fds));
                    return Ok(());
                }
                Kind::StreamOpen | Kind::StreamSegment | Kind::Subscribe => {
                    return Err(self.fatal(Error::new(ErrorCode::Protocol, format!("{:?} frame on a table store's connection", frame.kind))))
                }
                _ => {}
            }
        }
        match frame.kind {
            Kind::Table => self.on_table(frame, fds),
            Kind::Ack => {
                if self.awaiting_ack.remove(&frame.correlation_id) {
                    self.acks.insert(frame.correlation_id, Ok(()));
                }
                Ok(())
            }
            Kind::Release => Ok(()), // this side never sends LEASED tables
            Kind::Error => {
                let e = remote_error(&frame);
                let id = frame.correlation_id;
                if id == 0 {
                    self.shutdown();
                    self.closed = Some(e.clone());
                    return Err(e);
                }
                if let Some(slot) = self.subscriptions.get_mut(&id) {
                    *slot = Some(e);
                } else if self.awaiting_response.remove(&id) {
                    self.awaiting_ack.remove(&id);
                    self.responses.insert(id, Err(e));
                } else if self.awaiting_ack.remove(&id) {
                    self.acks.insert(id, Err(e));
                }
                Ok(())
            }
            Kind::Goodbye => {
                let e = Error::new(ErrorCode::PeerClosed, "the peer said GOODBYE");
                self.shutdown();
                self.closed = Some(e.clone());
                Err(e)
            }
            Kind::StreamOpen => {
                if self.stream_offers.len() >= self.opts.max_stream_offers {
                    drop(fds);
                    let msg = format!("{} stream offers wait already (max_stream_offers)", self.stream_offers.len());
                    self.send_error(frame.message_id, 0, ErrorCode::ResourceLimit, &msg)?;
                } else {
                    self.stream_offers.push_back((frame, fds));
                }
                Ok(())
            }
            Kind::StreamSegment => {
                if self.reading_stream {
                    self.stream_segments.push_back((frame, fds));
                } else {
                    drop(fds);
                    self.send_error(frame.message_id, 0, ErrorCode::Protocol, "STREAM_SEGMENT without an open stream")?;
                }
                Ok(())
            }
            Kind::Subscribe => {
                if self.accept_subscribe && self.subscribes.len() >= self.opts.max_stream_offers {
                    let msg = format!("{} SUBSCRIBEs wait already (max_stream_offers)", self.subscribes.len());
                    self.send_error(frame.message_id, 0, ErrorCode::ResourceLimit, &msg)?;
                } else if self.accept_subscribe {
                    self.subscribes.push_back(frame);
                } else {
                    self.send_error(frame.message_id, 0, ErrorCode::InvalidArgument, "this side publishes no stream")?;
                }
                Ok(())
            }
            // A channel is not a table store (§15): STORE frames are as unexpected as a second HELLO.
            Kind::Hello | Kind::Welcome | Kind::Store => Err(self.fatal(Error::new(
                ErrorCode::Protocol,
                format!("{:?} after the handshake", frame.kind),
            ))),
        }
    }

    /// §5.1 for an incoming TABLE: check, map, validate, then ACK or ERROR.
    fn on_table(&mut self, frame: Frame, fds: Vec<OwnedFd>) -> Result<()> {
        trace_stage(HandoffStage::Wake, frame.message_id);
        let result = self.open_table(&frame, &fds);
        drop(fds); // the mapping keeps the memory; the fd is not needed any more
        let err_flags = if frame.flags & FLAG_REQUEST != 0 { FLAG_RESPONSE } else { 0 };
        match &result {
            Ok(_) => {
                let mut ack = Frame::new(Kind::Ack);
                ack.correlation_id = frame.message_id;
                self.send_frame(ack, None)?;
                trace_stage(HandoffStage::Ack, frame.message_id);
            }
            Err(e) => {
                self.send_error(frame.message_id, err_flags, e.code, &e.message)?;
            }
        }
        let response_to = (frame.flags & FLAG_RESPONSE != 0).then_some(frame.correlation_id);
        match response_to {
            Some(id) if self.awaiting_response.remove(&id) => {
                self.awaiting_ack.remove(&id);
                self.responses.insert(id, result);
            }
            Some(_) => {} // a late or unknown response: ACKed (or refused) and dropped
            None => {
                self.inbox_bytes += result.as_ref().map_or(0, |m| m.ipc_length() as u64);
                self.inbox.push_back(result);
            }
        }
        Ok(())
    }

    fn open_table(&self, frame: &Frame, fds: &[OwnedFd]) -> Result<ReceivedTable> {
        if frame.flags & FLAG_INLINE != 0 {
            return self.open_inline_table(frame, fds);
        }
        if frame.flags & FLAG_LEASED != 0 {
            return err(ErrorCode::SegmentUnsealed, "LEASED segments are not accepted (no `lease` capability)");
        }
        let (map, len) = open_frame_segment("TABLE", frame, fds, self.opts.max_message_bytes, self.opts.allow_unsealed)?;
        trace_stage(HandoffStage::Map, frame.message_id);
        let table = ReceivedTable::new(map, frame.ipc_offset as usize, len as usize, Some(frame), &self.opts.limits)?;
        trace_stage(HandoffStage::Check, frame.message_id);
        Ok(table)
    }

    /// §5.3: an INLINE table (its framing was checked by `Frame::decode`; its bytes are still in
    /// the receive buffer) is copied into this process's own memory, then checked like a segment.
    fn open_inline_table(&self, frame: &Frame, fds: &[OwnedFd]) -> Result<ReceivedTable> {
        if !fds.is_empty() || frame.flags & FLAG_LEASED != 0 {
            return err(ErrorCode::Protocol, format!("an INLINE TABLE with {} fds attached or flag LEASED", fds.len()));
        }
        if frame.ipc_length > self.opts.max_message_bytes {
            return err(ErrorCode::TooLarge, format!("ipc_length {} exceeds max_message_bytes {}", frame.ipc_length, self.opts.max_message_bytes));
        }
        let start = frame.ipc_offset as usize; // within the frame: Frame::decode checked it
        let map = Mapping::copy_of(&self.recv_buf[start..start + frame.ipc_length as usize])?;
        trace_stage(HandoffStage::Map, frame.message_id);
        let table = ReceivedTable::new(map, 0, frame.ipc_length as usize, Some(frame), &self.opts.limits)?;
        trace_stage(HandoffStage::Check, frame.message_id);
        Ok(table)
    }

    /// Receives the next table (not a response to one of this side's requests). A table that
    /// failed the §5.1 checks is returned as its error (the peer was told; the channel is usable).
    pub fn receive(&mut self, timeout: Option<Duration>) -> Result<ReceivedTable> {
        let dl = deadline(timeout);
        loop {
            if let Some(r) = self.inbox.pop_front() {
                self.inbox_bytes -= r.as_ref().map_or(0, |m| m.ipc_length() as u64);
                return r;
            }
            self.pump(dl)?;
        }
    }

    /// Sends a finished segment as a TABLE; does not wait for the ACK. Returns the message id.
    pub fn send_segment(
        &mut self,
        seg: WritableSegment,
        ipc_length: usize,
        metadata: &KeyValues,
        flags: u8,
        correlation_id: u64,
    ) -> Result<u64> {
        self.check_table(ipc_length, metadata)?;
        let fd = seg.finish(true)?;
        trace_stage(HandoffStage::Copy, self.next_id);
        let mut f = Frame::new(Kind::Table);
        f.flags = flags;
        f.correlation_id = correlation_id;
        f.ipc_offset = 0;
        f.ipc_length = ipc_length as u64;
        f.metadata = metadata.clone();
        let id = self.send_frame(f, Some(&fd))?;
        trace_stage(HandoffStage::Send, id);
        drop(fd); // ownership passed with the fd
        self.awaiting_ack.insert(id);
        Ok(id)
    }

    /// What every TABLE this side sends must satisfy, segment or inline.
    fn check_table(&self, ipc_length: usize, metadata: &KeyValues) -> Result<()> {
        self.check_open()?;
        if ipc_length as u64 > self.peer_max_message_bytes {
            return err(
                ErrorCode::TooLarge,
                format!("{ipc_length} bytes exceed the peer's max_message_bytes {}", self.peer_max_message_bytes),
            );
        }
        for (k, _) in metadata {
            if k.starts_with("arrow-shm.") {
                return err(ErrorCode::InvalidArgument, format!("metadata key {k:?} is reserved"));
            }
        }
        Ok(())
    }

    /// §5.3: a stream of `len` bytes goes inside the TABLE frame when it is at most
    /// `max_inline_bytes`, the peer listed `inline` and it fits the frame beside `metadata`.
    fn sends_inline(&self, len: usize, metadata: &KeyValues) -> Result<bool> {
        let could = len > 0 && len <= self.opts.max_inline_bytes && self.peer_caps.iter().any(|c| c == "inline");
        // inline_room encodes the metadata: only asked when the stream could fit at all.
        Ok(could && len <= inline_room(metadata)?)
    }

    /// Sends the IPC stream `parts` (copied once, into the frame or a segment) as a TABLE; does
    /// not wait for the ACK. Returns the message id and, if a segment carried it, the stream's
    /// length (for the spare pool to prepare the next one).
    fn send_table(&mut self, parts: &[&[u8]], metadata: &KeyValues, flags: u8, correlation_id: u64) -> Result<(u64, Option<usize>)> {
        let len = parts.iter().map(|p| p.len()).sum();
        if !self.sends_inline(len, metadata)? {
            let (seg, len) = ipc::write_parts_into(parts, |n| self.spares.take(n))?;
            return Ok((self.send_segment(seg, len, metadata, flags, correlation_id)?, Some(len)));
        }
        self.check_table(len, metadata)?;
        let mut f = Frame::new(Kind::Table);
        f.flags = flags;
        f.correlation_id = correlation_id;
        f.metadata = metadata.clone();
        let id = self.send_frame_with(f, &[], Some(parts))?;
        trace_stage(HandoffStage::Send, id);
        self.awaiting_ack.insert(id);
        Ok((id, None))
    }

    /// [`Self::send_table`], then waits for its ACK.
    fn send_table_acked(&mut self, parts: &[&[u8]], metadata: &KeyValues, flags: u8, correlation_id: u64, timeout: Option<Duration>) -> Result<u64> {
        let (id, segment_len) = self.send_table(parts, metadata, flags, correlation_id)?;
        self.wait_ack(id, timeout)?;
        if let Some(len) = segment_len {
            self.spares.prepare(len);
        }
        Ok(id)
    }

    /// Waits for the ACK (or ERROR) of a sent TABLE.
    pub fn wait_ack(&mut self, id: u64, timeout: Option<Duration>) -> Result<()> {
        let dl = deadline(timeout);
        loop {
            if let Some(r) = self.acks.remove(&id) {
                return r;
            }
            if !self.awaiting_ack.contains(&id) {
                return err(ErrorCode::InvalidArgument, format!("message {id} is not awaiting an ACK"));
            }
            match self.pump(dl) {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::Timeout => {
                    self.awaiting_ack.remove(&id);
                    return err(ErrorCode::Timeout, format!("no ACK for message {id}"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends raw IPC stream bytes (copied inside the frame, §5.3, or into a sealed segment) and
    /// waits for the ACK.
    pub fn send_bytes(&mut self, ipc: &[u8], metadata: &KeyValues, timeout: Option<Duration>) -> Result<u64> {
        if ipc.is_empty() {
            return err(ErrorCode::InvalidArgument, "empty IPC stream");
        }
        self.send_table_acked(&[ipc], metadata, 0, 0, timeout)
    }

    /// Writes `batches` (64-byte aligned IPC) inside the frame (§5.3) or into a sealed segment,
    /// sends it, waits for the ACK.
    pub fn send_batches(&mut self, schema: &Schema, batches: &[RecordBatch], metadata: &KeyValues, timeout: Option<Duration>) -> Result<u64> {
        let parts = ipc::encode_stream(schema, batches)?;
        self.send_table_acked(&slices(&parts), metadata, 0, 0, timeout)
    }

    /// Sends a REQUEST table and waits for its response (a RESPONSE table, or the peer's ERROR).
    pub fn request(&mut self, schema: &Schema, batches: &[RecordBatch], metadata: &KeyValues, timeout: Option<Duration>) -> Result<ReceivedTable> {
        let dl = deadline(timeout);
        let parts = ipc::encode_stream(schema, batches)?;
        let (id, segment_len) = self.send_table(&slices(&parts), metadata, FLAG_REQUEST, 0)?;
        self.awaiting_response.insert(id);
        loop {
            if let Some(r) = self.responses.remove(&id) {
                if let Some(len) = segment_len {
                    self.spares.prepare(len);
                }
                return r;
            }
            match self.pump(dl) {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::Timeout => {
                    self.awaiting_response.remove(&id);
                    self.awaiting_ack.remove(&id);
                    return err(ErrorCode::Timeout, format!("no response to request {id}"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers a request with a RESPONSE table (waits for its ACK).
    pub fn respond(&mut self, request_id: u64, schema: &Schema, batches: &[RecordBatch], metadata: &KeyValues, timeout: Option<Duration>) -> Result<u64> {
        let parts = ipc::encode_stream(schema, batches)?;
        self.send_table_acked(&slices(&parts), metadata, FLAG_RESPONSE, request_id, timeout)
    }

    /// Answers a request with an ERROR frame (flag RESPONSE).
    pub fn respond_error(&mut self, request_id: u64, code: ErrorCode, message: &str) -> Result<()> {
        self.check_open()?;
        self.send_error(request_id, FLAG_RESPONSE, code, message).map(|_| ())
    }

    /// Orderly close: GOODBYE, then close the socket.
    pub fn close(mut self) {
        self.goodbye();
    }

    /// GOODBYE (if still open), then shut the socket down; the value stays usable for errors.
    pub(crate) fn hang_up(&mut self) {
        self.goodbye();
    }

    fn goodbye(&mut self) {
        if self.closed.is_none() && self.handshaken {
            let _ = self.send_frame(Frame::new(Kind::Goodbye), None);
        }
        self.shutdown();
        self.spares.close();
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.goodbye();
    }
}
