#![allow(dead_code)]
use std::path::PathBuf;

use arrow_buffer::Buffer;

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
