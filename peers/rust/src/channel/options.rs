//! The options of a channel (both sides), and whose uid they let in.

use std::time::Duration;

use crate::ipc;
use crate::segment::DEFAULT_MAX_MESSAGE_BYTES;

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
    /// Decoding limits of every received IPC message (PROTOCOL.md §14.1).
    pub limits: ipc::Limits,
    /// Received tables (requests included) not yet taken by [`crate::Channel::receive`]: at 64, or at
    /// `max_inbox_bytes` (1 GiB) of their `ipc_length`, this side stops reading the socket, so
    /// the kernel's socket buffer pushes back on the sender (§14.2).
    pub max_inbox_messages: usize,
    /// See `max_inbox_messages`: bytes (of `ipc_length`) of received tables not yet taken. Default 1 GiB.
    pub max_inbox_bytes: u64,
    /// STREAM_OPEN offers not yet accepted (and, on a publication's connection, SUBSCRIBEs not
    /// yet taken); the next one is answered `ERR_RESOURCE_LIMIT`. Default 16.
    pub max_stream_offers: usize,
    /// A listener's connections served at once by [`crate::server::Server`], handshaking ones
    /// included (default 256; past it see §14.2).
    pub max_connections: usize,
    /// [`crate::server::Server`]: a connection that sent no table for this long is told
    /// `ERR_TIMEOUT` and closed. Default 300,000 (5 min); 0 = never.
    pub idle_timeout_ms: u64,
    /// Prepare the next send's segment on a background thread, pre-allocated, one per size class
    /// of recent sends and within 1 GiB (see [`crate::pool::SparePool`]). Default `true`.
    pub spare_segments: bool,
    /// Sends put an IPC stream of at most this many bytes inside the TABLE frame (§5.3: no
    /// segment, no fd) when it fits the frame and the peer listed `inline`. Default 65,536
    /// (every stream that fits); 0 = always a segment.
    pub max_inline_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            allow_unsealed: false,
            allowed_uids: None,
            timeout: None,
            limits: ipc::Limits::default(),
            max_inbox_messages: 64,
            max_inbox_bytes: 1 << 30,
            max_stream_offers: 16,
            max_connections: 256,
            idle_timeout_ms: 300_000,
            spare_segments: true,
            max_inline_bytes: crate::frame::MAX_FRAME,
        }
    }
}

pub(super) fn uid_allowed(opts: &Options, uid: u32) -> bool {
    match &opts.allowed_uids {
        Some(list) => list.contains(&uid),
        // SAFETY: plain syscall.
        None => uid == unsafe { libc::geteuid() },
    }
}
