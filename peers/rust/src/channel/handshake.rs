//! The handshake (PROTOCOL.md §4): HELLO / WELCOME with the `SO_PEERCRED` check, from
//! both sides.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{kv_get, strict_decimal, Frame, Kind, VERSION};
use crate::sys::{self, Address};

use super::options::uid_allowed;
use super::{deadline, Channel, Options};

/// Implementation string sent in the handshake.
pub const IMPLEMENTATION: &str = concat!("arrow-shm-rs/", env!("CARGO_PKG_VERSION"));
/// What this side accepts (PROTOCOL.md §4): stream frames and inline tables (§5.3), not leased
/// segments.
pub const CAPABILITIES: &str = "stream,inline";
/// A listener drops a connection that has not said HELLO within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener's side of the handshake on an accepted connection: the peer's uid, its HELLO
/// (within 5 s, or `timeout` if shorter), the WELCOME.
pub(crate) fn answer_hello(fd: OwnedFd, opts: Options, timeout: Option<Duration>) -> Result<Channel> {
    let mut ch = Channel::new(fd, opts);
    let cred = sys::peer_cred(ch.fd.as_raw_fd())?;
    if !uid_allowed(&ch.opts, cred.uid) {
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
    let refuse = |ch: &mut Channel, code: ErrorCode, msg: String| -> Result<Channel> {
        let _ = ch.send_error(0, 0, code, &msg);
        ch.shutdown();
        err(code, msg)
    };
    if frame.kind != Kind::Hello {
        return refuse(&mut ch, ErrorCode::Protocol, format!("expected HELLO, got {:?}", frame.kind));
    }
    // Absent keys read as "" (not decimal); only `pid` may be left out.
    let decimal = |k: &str, absent: &str| strict_decimal(kv_get(&frame.metadata, k).unwrap_or(absent));
    let (Some(min), Some(max), Some(_)) = (decimal("min_version", ""), decimal("max_version", ""), decimal("pid", "0")) else {
        return refuse(&mut ch, ErrorCode::Protocol, "HELLO without decimal min_version and max_version, or with a pid that is not decimal".into());
    };
    if !(min <= VERSION as u32 && VERSION as u32 <= max) {
        let msg = format!("no common protocol version: peer supports {min}..={max}, this side 1");
        return refuse(&mut ch, ErrorCode::ProtocolVersion, msg);
    }
    ch.peer_caps = kv_get(&frame.metadata, "capabilities").unwrap_or("").split(',').filter(|s| !s.is_empty()).map(String::from).collect();
    ch.peer_implementation = kv_get(&frame.metadata, "implementation").unwrap_or("").to_string();
    let mut welcome = Frame::new(Kind::Welcome);
    welcome.metadata = vec![
        ("version".into(), VERSION.to_string()),
        ("capabilities".into(), CAPABILITIES.into()),
        ("implementation".into(), IMPLEMENTATION.into()),
        ("pid".into(), std::process::id().to_string()),
        ("max_message_bytes".into(), ch.opts.max_message_bytes.to_string()),
    ];
    ch.send_frame(welcome, None)?;
    ch.handshaken = true;
    Ok(ch)
}

/// Connects to a listener, checks its uid and does the handshake.
pub fn connect(address: &str, opts: Options) -> Result<Channel> {
    connect_with(address, opts, CAPABILITIES)
}

/// [`connect`] listing `capabilities` in the HELLO (a table store's client lists only `store`).
pub(crate) fn connect_with(address: &str, opts: Options, capabilities: &str) -> Result<Channel> {
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
        ("capabilities".into(), capabilities.into()),
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
            let decimal = |k: &str, absent: &str| strict_decimal(kv_get(&frame.metadata, k).unwrap_or(absent));
            let (Some(v), Some(_)) = (decimal("version", ""), decimal("pid", "0")) else {
                let msg = "WELCOME without a decimal version, or with a pid that is not decimal".to_string();
                let _ = ch.send_error(0, 0, ErrorCode::Protocol, &msg);
                ch.shutdown();
                return err(ErrorCode::Protocol, msg);
            };
            if v != VERSION as u32 || frame.version != VERSION {
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

pub(crate) fn remote_error(frame: &Frame) -> Error {
    let code_text = kv_get(&frame.metadata, "code").unwrap_or("");
    let message = kv_get(&frame.metadata, "message").unwrap_or("").to_string();
    match ErrorCode::parse(code_text) {
        Some(code) => Error::new(code, format!("peer: {message}")),
        None => Error::new(ErrorCode::Remote, format!("peer error {code_text}: {message}")),
    }
}
