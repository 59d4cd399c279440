//! The handshake and the receive path over a real SOCK_SEQPACKET connection: a `Listener`
//! (channel.rs) accepts a connection from a raw socket that sends fuzzed datagrams: a HELLO
//! (handshake, metadata key/values, version negotiation), then one more frame, optionally with
//! a memfd attached (TABLE: §5.1 checks, `validate_stream`, ACK/ERROR; or ACK/ERROR/GOODBYE/...),
//! read by `Channel::receive`, and a received table is decoded.
//!
//! Input: byte 0 = flags (bit 0: send a well-formed HELLO instead of a fuzzed one, bit 1: attach
//! a memfd to the second frame, bit 2: seal it, bit 3: decode a received table); unless bit 0,
//! u16 LE length + HELLO bytes; u16 LE length + second frame bytes; the rest = segment contents.
#![no_main]
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::Duration;

use arrow_shm::frame::{Frame, Kind};
use arrow_shm::segment::{add_seals, create_memfd, REQUIRED_SEALS};
use arrow_shm::sys::{self, Address};
use arrow_shm::{Listener, Options};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

struct Shared {
    listener: Listener,
    addr: Address,
    hello: Vec<u8>,
}
// SAFETY-free: the fuzzer calls the target from one thread only.
static SHARED: OnceLock<std::sync::Mutex<Shared>> = OnceLock::new();

fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    if data.len() < 2 {
        return None;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (chunk, rest) = data[2..].split_at(n);
    *data = rest;
    Some(chunk)
}

fuzz_target!(|input: &[u8]| {
    common::tolerate_caught_arrow_panics();
    let shared = SHARED.get_or_init(|| {
        let name = format!("@arrow-shm-fuzz-{}", std::process::id());
        let listener = Listener::bind(&name, Options::default()).expect("bind");
        let mut hello = Frame::new(Kind::Hello);
        hello.metadata = vec![
            ("min_version".into(), "1".into()),
            ("max_version".into(), "1".into()),
            ("capabilities".into(), String::new()),
            ("implementation".into(), "fuzz".into()),
        ];
        let hello = hello.encode().unwrap();
        std::sync::Mutex::new(Shared { listener, addr: Address::parse(&name).unwrap(), hello })
    });
    let shared = shared.lock().unwrap();
    let Some((&flags, mut data)) = input.split_first() else { return };
    let hello: &[u8] = if flags & 1 != 0 { &shared.hello } else {
        match take(&mut data) {
            Some(h) => h,
            None => return,
        }
    };
    let second = take(&mut data);
    let content = data;

    let client = sys::connect(&shared.addr, libc::SOCK_SEQPACKET, None).expect("connect");
    sys::send_with_fds(client.as_raw_fd(), hello, &[]).expect("send hello");
    if let Some(frame) = second {
        let mut fds = Vec::new();
        let memfd;
        if flags & 2 != 0 {
            memfd = create_memfd(c"arrow-shm-fuzz", content.len() as u64).expect("memfd");
            std::fs::File::from(memfd.try_clone().unwrap()).write_all(content).expect("write");
            if flags & 4 != 0 {
                add_seals(memfd.as_raw_fd(), REQUIRED_SEALS).expect("seal");
            }
            fds.push(memfd.as_raw_fd());
        }
        sys::send_with_fds(client.as_raw_fd(), frame, &fds).expect("send frame");
    }
    let mut ch = match shared.listener.accept(Some(Duration::from_millis(500))) {
        Ok(ch) => ch,
        Err(e) => {
            assert_ne!(e.code, arrow_shm::ErrorCode::Timeout, "{e:?}");
            return;
        }
    };
    if second.is_some() {
        // everything is already queued: a zero timeout reads what is there, then times out
        if let Ok(m) = ch.receive(Some(Duration::ZERO)) {
            assert!(m.ipc_length() > 0);
            if flags & 8 != 0 {
                let _ = m.decode();
            }
        }
    }
    drop(ch);
    drop(client);
});
