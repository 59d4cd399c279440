//! Validation + zero-copy decoding (ipc.rs `decode_stream`) of a stream held in an Arrow
//! `Buffer`, 64-byte aligned as in a received mapping (mappings are page-aligned).
//!
//! Panics: see common.rs (arrow-rs panics that `decode_stream` catches are tolerated and
//! reported; every other panic is a crash).
#![no_main]
use arrow_array::Array;
use arrow_buffer::{Buffer, MutableBuffer};
use arrow_shm::ipc::decode_stream;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::tolerate_caught_arrow_panics();
    let mut mb = MutableBuffer::new(data.len());
    mb.extend_from_slice(data);
    let buf: Buffer = mb.into();
    assert_eq!(buf.as_ptr() as usize % 64, 0);
    match decode_stream(&buf) {
        Ok(table) => {
            for b in &table.batches {
                assert_eq!(b.schema(), table.schema);
                for c in b.columns() {
                    assert_eq!(c.len(), b.num_rows());
                    c.to_data().validate_full().expect("decoded arrays must be valid");
                }
            }
        }
        Err(e) => assert!(e.code.as_str().starts_with("ERR_IPC_"), "{e:?}"),
    }
});
