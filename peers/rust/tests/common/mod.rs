#![allow(dead_code)]
pub mod hostile;
use std::path::PathBuf;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use arrow_buffer::Buffer;
use arrow_shm::frame::{Frame, Kind};
use arrow_shm::sys;

/// `<repo>/../shared/testdata`, read in place.
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
}

pub fn gold_streams() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(testdata().join("arrow-gold")).expect("arrow-gold") {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "stream") {
                out.push(f);
            }
        }
    }
    out.sort();
    assert!(out.len() >= 20, "gold streams not found: {out:?}");
    out
}

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("arrow-shm-rs-test-{}-{tag}-{}", std::process::id(), rand_u64()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    h.finish()
}

pub fn buffer_of(bytes: &[u8]) -> Buffer {
    Buffer::from(bytes.to_vec())
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_arrow-shm-rs")
}

// ---------------------------------------------------------------- raw frames

/// A raw client's handshake (HELLO offering versions 1..=3 and `capabilities`); checks that
/// the WELCOME chose version 1 and returns it.
pub fn raw_hello(a: &str, capabilities: &str) -> (OwnedFd, Frame) {
    let fd = sys::connect(&sys::Address::parse(a).unwrap(), libc::SOCK_SEQPACKET, Some(std::time::Instant::now() + Duration::from_secs(10))).unwrap();
    let mut hello = Frame::new(Kind::Hello);
    hello.message_id = 1;
    hello.metadata = vec![
        ("min_version".into(), "1".into()),
        ("max_version".into(), "3".into()),
        ("capabilities".into(), capabilities.into()),
        ("implementation".into(), "raw-test".into()),
        ("pid".into(), "1".into()),
    ];
    sys::send_with_fds(fd.as_raw_fd(), &hello.encode().unwrap(), &[]).unwrap();
    let w = raw_read(&fd);
    assert_eq!(w.kind, Kind::Welcome);
    assert_eq!(w.version, 1);
    assert_eq!(arrow_shm::frame::kv_get(&w.metadata, "version"), Some("1"));
    (fd, w)
}

pub fn raw_connect(a: &str) -> OwnedFd {
    raw_hello(a, "").0
}

pub fn raw_read(fd: &OwnedFd) -> Frame {
    let mut buf = vec![0u8; 65536];
    sys::wait_readable(fd.as_raw_fd(), Some(std::time::Instant::now() + Duration::from_secs(10)), "frame").unwrap();
    let r = sys::recv_with_fds(fd.as_raw_fd(), &mut buf).unwrap();
    Frame::decode(&buf[..r.len]).unwrap()
}

pub fn raw_table(fd: &OwnedFd, id: u64, seg: &OwnedFd, len: u64, flags: u8) {
    let mut t = Frame::new(Kind::Table);
    t.message_id = id;
    t.flags = flags;
    t.ipc_length = len;
    t.fd_count = 1;
    sys::send_with_fds(fd.as_raw_fd(), &t.encode().unwrap(), &[seg.as_raw_fd()]).unwrap();
}

// ---------------------------------------------------------------- what is open

/// What this process has open: the target of every fd (sorted), so a leak shows as what leaked.
pub fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// This process's memfd mappings (the /proc/self/maps lines).
pub fn memfd_maps() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().filter(|l| l.contains("memfd:")).map(String::from).collect()
}
