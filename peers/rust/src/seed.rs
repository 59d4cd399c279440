//! Seed compatibility mode (PROTOCOL.md §10): `SOCK_STREAM`, the sender listens, accepts one
//! connection per table and sends one byte `'F'` with an unsealed memfd (≥ 40,960 bytes, the
//! stream at offset 0, zeros after it). No handshake, no ACK.

use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::channel::ReceivedTable;
use crate::error::{err, Error, ErrorCode, Result};
use crate::segment::{WritableSegment, SEED_SEGMENT_BYTES};
use crate::sys::{self, Address};

/// The seed proof of concept's socket path.
pub const DEFAULT_SEED_SOCKET: &str = "/tmp/memfd_socket";

/// A `SOCK_STREAM` listener for `send --seed-compat` (mode 0600; removes its file on drop).
pub struct SeedListener {
    fd: OwnedFd,
    inode: sys::SocketFile,
}

impl SeedListener {
    /// Binds and listens on `address` (mode 0600).
    pub fn bind(address: &str) -> Result<SeedListener> {
        let addr = Address::parse(address)?;
        let (fd, inode) = sys::bind_listen(&addr, libc::SOCK_STREAM, 1)?;
        Ok(SeedListener { fd, inode })
    }

    /// Accepts one connection and sends `'F'` + the (unsealed, unmapped) segment's fd.
    pub fn send(&self, seg: WritableSegment, timeout: Option<Duration>) -> Result<()> {
        let fd = seg.finish(false)?;
        let conn = sys::accept(self.fd.as_raw_fd(), timeout.map(|t| Instant::now() + t))
            .map_err(|e| if e.code == ErrorCode::Timeout { Error::new(ErrorCode::Timeout, "timed out waiting for a seed receiver") } else { e })?;
        sys::send_with_fds(conn.as_raw_fd(), b"F", &[fd.as_raw_fd()])
    }
}

impl Drop for SeedListener {
    fn drop(&mut self) {
        sys::unlink_own(&self.inode);
    }
}

/// Size of a seed segment for a stream of `len` bytes: at least 40,960, and room for a zero
/// word after the stream.
pub fn seed_segment_size(len: usize) -> usize {
    len.max(SEED_SEGMENT_BYTES)
}

/// Connects to a seed sender, receives `'F'` + fd, maps it read-only and validates the stream.
pub fn seed_receive(address: &str, timeout: Option<Duration>, max_message_bytes: u64) -> Result<ReceivedTable> {
    let addr = Address::parse(address)?;
    let dl = timeout.map(|t| Instant::now() + t);
    let sock = sys::connect(&addr, libc::SOCK_STREAM, dl)?;
    sys::wait_readable(sock.as_raw_fd(), dl, "the seed sender")?;
    let mut buf = [0u8; 1];
    let r = sys::recv_with_fds(sock.as_raw_fd(), &mut buf)?;
    if r.fds.is_empty() {
        if r.len == 0 {
            return err(ErrorCode::PeerClosed, "the seed sender hung up without sending");
        }
        return err(ErrorCode::Protocol, "the seed sender sent no file descriptor");
    }
    if r.len != 1 || buf[0] != b'F' || r.fds.len() != 1 {
        return err(ErrorCode::Protocol, format!("expected 'F' with one fd, got {} bytes with {} fds", r.len, r.fds.len()));
    }
    ReceivedTable::from_seed_fd(&r.fds[0], max_message_bytes)
}
