//! Channels over `SOCK_SEQPACKET` (PROTOCOL.md §2–§8): listen/connect with the `SO_PEERCRED`
//! check, the handshake, sending sealed segments and waiting for `ACK`, receiving with the §5.1
//! checks, and request/response with correlation ids and timeouts.
//!
//! A channel is single-threaded (`&mut self`): whatever arrives while one call waits for
//! something else (tables, ACKs, responses) is queued for the call that wants it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_schema::Schema;

use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{kv_get, Frame, KeyValues, Kind, FLAG_LEASED, FLAG_REQUEST, FLAG_RESPONSE, MAX_FRAME, VERSION};
use crate::ipc::{self, StreamInfo, Table};
use crate::segment::{self, Mapping, WritableSegment, DEFAULT_MAX_MESSAGE_BYTES};
use crate::sys::{self, Address};

/// Implementation string sent in the handshake.
pub const IMPLEMENTATION: &str = concat!("arrow-shm-rs/", env!("CARGO_PKG_VERSION"));
/// What this side accepts (PROTOCOL.md §4): stream frames, not leased segments.
pub const CAPABILITIES: &str = "stream";
/// A listener drops a connection that has not said HELLO within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of a channel (both sides).
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest `ipc_length` this side accepts (default 16 GiB).
    pub max_message_bytes: u64,
    /// Accept unsealed segments (§6.3). Off by default.
    pub allow_unsealed: bool,
    /// Peer uids allowed; `None` = this process's effective uid only.
    pub allowed_uids: Option<Vec<u32>>,
    /// Timeout of connect + handshake; `None` = wait forever (the listener still drops a silent
    /// connector after 5 s).
    pub timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES, allow_unsealed: false, allowed_uids: None, timeout: None }
    }
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

fn uid_allowed(opts: &Options, uid: u32) -> bool {
    match &opts.allowed_uids {
        Some(list) => list.contains(&uid),
        // SAFETY: plain syscall.
        None => uid == unsafe { libc::geteuid() },
    }
}

/// A received table: a read-only mapping of its segment and the IPC range inside it.
#[derive(Debug, Clone)]
pub struct Message {
    map: Arc<Mapping>,
    ipc_offset: usize,
    ipc_length: usize,
    info: StreamInfo,
    /// The TABLE frame's `message_id` (the sender's numbering).
    pub message_id: u64,
    /// The TABLE frame's `correlation_id` (non-zero for a response).
    pub correlation_id: u64,
    pub flags: u8,
    /// User metadata of the TABLE frame.
    pub metadata: KeyValues,
}

impl Message {
    /// Builds a message from a mapping and a validated range.
    fn new(map: Mapping, ipc_offset: usize, ipc_length: usize, frame: Option<&Frame>) -> Result<Message> {
        let info = ipc::validate_stream(&map.as_slice()[ipc_offset..ipc_offset + ipc_length])?;
        Ok(Message {
            map: Arc::new(map),
            ipc_offset,
            ipc_length,
            info,
            message_id: frame.map_or(0, |f| f.message_id),
            correlation_id: frame.map_or(0, |f| f.correlation_id),
            flags: frame.map_or(0, |f| f.flags),
            metadata: frame.map(|f| f.metadata.clone()).unwrap_or_default(),
        })
    }

    /// Opens a seed-compat segment (whole file, unsealed allowed): the stream ends at its EOS.
    pub fn from_seed_fd(fd: &OwnedFd, max_message_bytes: u64) -> Result<Message> {
        let (map, len) = segment::open_segment(fd.as_raw_fd(), 0, None, max_message_bytes, true)?;
        let mut m = Message::new(map, 0, len as usize, None)?;
        m.ipc_length = m.info.end;
        Ok(m)
    }

    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }

    /// The IPC stream bytes as received (the whole `ipc_length` range; for seed mode, up to and
    /// including the end-of-stream marker).
    pub fn ipc_bytes(&self) -> &[u8] {
        &self.map.as_slice()[self.ipc_offset..self.ipc_offset + self.ipc_length]
    }

    pub fn ipc_length(&self) -> usize {
        self.ipc_length
    }

    pub fn stream_info(&self) -> StreamInfo {
        self.info
    }

    /// The mapping (to check that decoded buffers lie inside it).
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// The IPC range as an Arrow `Buffer` over the mapping (no copy; keeps the mapping alive).
    pub fn buffer(&self) -> Buffer {
        ipc::mapping_buffer(&self.map, self.ipc_offset, self.ipc_length).expect("validated range")
    }

    /// Decodes the table in place (zero-copy; see [`ipc::decode_stream`]).
    pub fn decode(&self) -> Result<Table> {
        ipc::decode_stream(&self.buffer())
    }
}

/// A listening socket for channels. Removes its socket file when dropped.
pub struct Listener {
    fd: OwnedFd,
    inode: Option<(String, u64)>,
    opts: Options,
    address: String,
}

impl Listener {
    pub fn bind(address: &str, opts: Options) -> Result<Listener> {
        let addr = Address::parse(address)?;
        let (fd, inode) = sys::bind_listen(&addr, libc::SOCK_SEQPACKET, 64)?;
        Ok(Listener { fd, inode, opts, address: address.to_string() })
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Accepts one connection, checks the peer's uid and answers its HELLO. `timeout` bounds
    /// the wait for a connection; the HELLO must come within 5 s (or `timeout`, if shorter).
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Channel> {
        let fd = sys::accept(self.fd.as_raw_fd(), deadline(timeout))?;
        let mut ch = Channel::new(fd, self.opts.clone());
        let cred = sys::peer_cred(ch.fd.as_raw_fd())?;
        if !uid_allowed(&self.opts, cred.uid) {
            let _ = ch.send_error(0, 0, ErrorCode::PeerCredentials, &format!("uid {} is not allowed", cred.uid));
            ch.shutdown();
            return err(ErrorCode::PeerCredentials, format!("peer uid {} is not allowed", cred.uid));
        }
        ch.peer_pid = cred.pid;
        let hello_deadline = Instant::now() + timeout.map_or(HELLO_TIMEOUT, |t| t.min(HELLO_TIMEOUT));
        let frame = match ch.read_frame(Some(hello_deadline)) {
            Ok(f) => f,
            Err(e) => {
                if e.code.is_fatal() {
                    let _ = ch.send_error(0, 0, e.code, &e.message);
                }
                ch.shutdown();
                return Err(e);
            }
        };
        if frame.kind != Kind::Hello {
            let msg = format!("expected HELLO, got {:?}", frame.kind);
            let _ = ch.send_error(0, 0, ErrorCode::Protocol, &msg);
            ch.shutdown();
            return err(ErrorCode::Protocol, msg);
        }
        let parse = |k: &str| kv_get(&frame.metadata, k).and_then(|v| v.parse::<u32>().ok());
        let (min, max) = (parse("min_version").unwrap_or(frame.version as u32), parse("max_version").unwrap_or(frame.version as u32));
        if !(min <= VERSION as u32 && VERSION as u32 <= max) {
            let msg = format!("no common protocol version: peer supports {min}..={max}, this side 1");
            let _ = ch.send_error(0, 0, ErrorCode::ProtocolVersion, &msg);
            ch.shutdown();
            return err(ErrorCode::ProtocolVersion, msg);
        }
        ch.peer_caps = kv_get(&frame.metadata, "capabilities").unwrap_or("").split(',').filter(|s| !s.is_empty()).map(String::from).collect();
        ch.peer_implementation = kv_get(&frame.metadata, "implementation").unwrap_or("").to_string();
        let mut welcome = Frame::new(Kind::Welcome);
        welcome.metadata = vec![
            ("version".into(), VERSION.to_string()),
            ("capabilities".into(), CAPABILITIES.into()),
            ("implementation".into(), IMPLEMENTATION.into()),
            ("pid".into(), std::process::id().to_string()),
            ("max_message_bytes".into(), self.opts.max_message_bytes.to_string()),
        ];
        ch.send_frame(welcome, None)?;
        ch.handshaken = true;
        Ok(ch)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        sys::unlink_own(&self.inode);
    }
}

/// Connects to a listener, checks its uid and does the handshake.
pub fn connect(address: &str, opts: Options) -> Result<Channel> {
    let addr = Address::parse(address)?;
    let dl = deadline(opts.timeout);
    let fd = sys::connect(&addr, libc::SOCK_SEQPACKET, dl)?;
    let mut ch = Channel::new(fd, opts.clone());
    let cred = sys::peer_cred(ch.fd.as_raw_fd())?;
    if !uid_allowed(&opts, cred.uid) {
        ch.shutdown();
        return err(ErrorCode::PeerCredentials, format!("listener uid {} is not allowed", cred.uid));
    }
    ch.peer_pid = cred.pid;
    let mut hello = Frame::new(Kind::Hello);
    hello.metadata = vec![
        ("min_version".into(), VERSION.to_string()),
        ("max_version".into(), VERSION.to_string()),
        ("capabilities".into(), CAPABILITIES.into()),
        ("implementation".into(), IMPLEMENTATION.into()),
        ("pid".into(), std::process::id().to_string()),
    ];
    // A listener that refused us (credentials) sends ERROR and closes, maybe before our HELLO
    // is read: the kernel then reports EPIPE/ECONNRESET once, but the ERROR is still queued.
    let refused = |ch: &mut Channel, e: Error| -> Error {
        for _ in 0..2 {
            match ch.read_frame(Some(Instant::now() + Duration::from_millis(100))) {
                Ok(f) if f.kind == Kind::Error => return remote_error(&f),
                Err(e2) if e2.code == ErrorCode::PeerClosed => continue,
                _ => break,
            }
        }
        e
    };
    if let Err(e) = ch.send_frame(hello, None) {
        return Err(refused(&mut ch, e));
    }
    let frame = match ch.read_frame(dl) {
        Ok(f) => f,
        Err(e) if e.code == ErrorCode::PeerClosed => return Err(refused(&mut ch, e)),
        Err(e) => return Err(e),
    };
    match frame.kind {
        Kind::Welcome => {
            let v = kv_get(&frame.metadata, "version").and_then(|v| v.parse::<u16>().ok()).unwrap_or(frame.version);
            if v != VERSION || frame.version != VERSION {
                let msg = format!("listener chose protocol version {v}");
                let _ = ch.send_error(0, 0, ErrorCode::ProtocolVersion, &msg);
                ch.shutdown();
                return err(ErrorCode::ProtocolVersion, msg);
            }
            ch.peer_caps = kv_get(&frame.metadata, "capabilities").unwrap_or("").split(',').filter(|s| !s.is_empty()).map(String::from).collect();
            ch.peer_implementation = kv_get(&frame.metadata, "implementation").unwrap_or("").to_string();
            ch.peer_max_message_bytes = kv_get(&frame.metadata, "max_message_bytes").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            ch.handshaken = true;
            Ok(ch)
        }
        Kind::Error => {
            ch.shutdown();
            Err(remote_error(&frame))
        }
        other => {
            let msg = format!("expected WELCOME, got {other:?}");
            let _ = ch.send_error(0, 0, ErrorCode::Protocol, &msg);
            ch.shutdown();
            err(ErrorCode::Protocol, msg)
        }
    }
}

fn remote_error(frame: &Frame) -> Error {
    let code_text = kv_get(&frame.metadata, "code").unwrap_or("");
    let message = kv_get(&frame.metadata, "message").unwrap_or("").to_string();
    match ErrorCode::parse(code_text) {
        Some(code) => Error::new(code, format!("peer: {message}")),
        None => Error::new(ErrorCode::Remote, format!("peer error {code_text}: {message}")),
    }
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
    /// Received tables (or their message-level failures), in arrival order.
    inbox: VecDeque<Result<Message>>,
    /// Sent TABLEs waiting for ACK → result once it came.
    awaiting_ack: HashSet<u64>,
    acks: HashMap<u64, Result<()>>,
    /// Requests waiting for a response → the response once it came.
    awaiting_response: HashSet<u64>,
    responses: HashMap<u64, Result<Message>>,
    recv_buf: Vec<u8>,
    /// STREAM_OPEN frames not taken by `accept_stream` yet, with their 4 fds.
    pub(crate) stream_offers: VecDeque<(Frame, Vec<OwnedFd>)>,
    /// STREAM_SEGMENT frames for the open stream reader, with their fds (checked by the reader).
    pub(crate) stream_segments: VecDeque<(Frame, Vec<OwnedFd>)>,
    /// A stream reader is open on this channel (STREAM_SEGMENTs are queued, not refused).
    pub(crate) reading_stream: bool,
    /// SUBSCRIBE frames, when this side publishes (`accept_subscribe`).
    pub(crate) subscribes: VecDeque<Frame>,
    pub(crate) accept_subscribe: bool,
    /// Our SUBSCRIBE ids → the ERROR that answered them, if any.
    pub(crate) subscriptions: HashMap<u64, Option<Error>>,
}

impl Channel {
    fn new(fd: OwnedFd, opts: Options) -> Channel {
        Channel {
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
        }
    }

    pub fn peer_implementation(&self) -> &str {
        &self.peer_implementation
    }
    pub fn peer_capabilities(&self) -> &[String] {
        &self.peer_caps
    }
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

    /// Reads and dispatches one frame if one is waiting; `Ok(false)` if none was.
    pub(crate) fn pump_ready(&mut self) -> Result<bool> {
        self.check_open()?;
        if !crate::ring::poll_readable(&[self.fd.as_raw_fd()], 0)?[0] {
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
    pub(crate) fn send_frame_fds(&mut self, mut frame: Frame, fds: &[i32]) -> Result<u64> {
        frame.message_id = self.next_id;
        frame.fd_count = fds.len() as u32;
        let bytes = frame.encode()?;
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

    /// Reads one frame and dispatches it into the queues. Fatal errors close the channel.
    fn pump(&mut self, deadline: Option<Instant>) -> Result<()> {
        self.check_open()?;
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
                self.stream_offers.push_back((frame, fds));
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
                if self.accept_subscribe {
                    self.subscribes.push_back(frame);
                } else {
                    self.send_error(frame.message_id, 0, ErrorCode::InvalidArgument, "this side publishes no stream")?;
                }
                Ok(())
            }
            Kind::Hello | Kind::Welcome => Err(self.fatal(Error::new(
                ErrorCode::Protocol,
                format!("{:?} after the handshake", frame.kind),
            ))),
        }
    }

    /// §5.1 for an incoming TABLE: check, map, validate, then ACK or ERROR.
    fn on_table(&mut self, frame: Frame, fds: Vec<OwnedFd>) -> Result<()> {
        let result = self.open_table(&frame, &fds);
        drop(fds); // the mapping keeps the memory; the fd is not needed any more
        let err_flags = if frame.flags & FLAG_REQUEST != 0 { FLAG_RESPONSE } else { 0 };
        match &result {
            Ok(_) => {
                let mut ack = Frame::new(Kind::Ack);
                ack.correlation_id = frame.message_id;
                self.send_frame(ack, None)?;
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
            None => self.inbox.push_back(result),
        }
        Ok(())
    }

    fn open_table(&self, frame: &Frame, fds: &[OwnedFd]) -> Result<Message> {
        if frame.fd_count != 1 || fds.len() != 1 {
            return err(
                ErrorCode::Protocol,
                format!("TABLE with fd_count {} and {} fds attached (expected 1)", frame.fd_count, fds.len()),
            );
        }
        if frame.flags & FLAG_LEASED != 0 {
            return err(ErrorCode::SegmentUnsealed, "LEASED segments are not accepted (no `lease` capability)");
        }
        let (map, len) = segment::open_segment(
            fds[0].as_raw_fd(),
            frame.ipc_offset,
            Some(frame.ipc_length),
            self.opts.max_message_bytes,
            self.opts.allow_unsealed,
        )?;
        Message::new(map, frame.ipc_offset as usize, len as usize, Some(frame))
    }

    /// Receives the next table (not a response to one of this side's requests). A table that
    /// failed the §5.1 checks is returned as its error (the peer was told; the channel is usable).
    pub fn receive(&mut self, timeout: Option<Duration>) -> Result<Message> {
        let dl = deadline(timeout);
        loop {
            if let Some(r) = self.inbox.pop_front() {
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
        let fd = seg.finish(true)?;
        let mut f = Frame::new(Kind::Table);
        f.flags = flags;
        f.correlation_id = correlation_id;
        f.ipc_offset = 0;
        f.ipc_length = ipc_length as u64;
        f.metadata = metadata.clone();
        let id = self.send_frame(f, Some(&fd))?;
        drop(fd); // ownership passed with the fd
        self.awaiting_ack.insert(id);
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

    /// Sends raw IPC stream bytes (copied into a sealed segment) and waits for the ACK.
    pub fn send_bytes(&mut self, ipc: &[u8], metadata: &KeyValues, timeout: Option<Duration>) -> Result<u64> {
        if ipc.is_empty() {
            return err(ErrorCode::InvalidArgument, "empty IPC stream");
        }
        let (seg, len) = ipc::write_bytes_segment(ipc, 0)?;
        let id = self.send_segment(seg, len, metadata, 0, 0)?;
        self.wait_ack(id, timeout)?;
        Ok(id)
    }

    /// Writes `batches` into a sealed segment (64-byte aligned IPC), sends it, waits for the ACK.
    pub fn send_batches(&mut self, schema: &Schema, batches: &[RecordBatch], metadata: &KeyValues, timeout: Option<Duration>) -> Result<u64> {
        let (seg, len) = ipc::write_batches_segment(schema, batches, 0)?;
        let id = self.send_segment(seg, len, metadata, 0, 0)?;
        self.wait_ack(id, timeout)?;
        Ok(id)
    }

    /// Sends a REQUEST table and waits for its response (a RESPONSE table, or the peer's ERROR).
    pub fn request(&mut self, schema: &Schema, batches: &[RecordBatch], metadata: &KeyValues, timeout: Option<Duration>) -> Result<Message> {
        let dl = deadline(timeout);
        let (seg, len) = ipc::write_batches_segment(schema, batches, 0)?;
        let id = self.send_segment(seg, len, metadata, FLAG_REQUEST, 0)?;
        self.awaiting_response.insert(id);
        loop {
            if let Some(r) = self.responses.remove(&id) {
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
        let (seg, len) = ipc::write_batches_segment(schema, batches, 0)?;
        let id = self.send_segment(seg, len, metadata, FLAG_RESPONSE, request_id)?;
        self.wait_ack(id, timeout)?;
        Ok(id)
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
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.goodbye();
    }
}
