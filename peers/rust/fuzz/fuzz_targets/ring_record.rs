//! Stream ring records as a consumer finds them (PROTOCOL.md §12.2): the record header checks
//! (ring.rs `check_record_header`) and the walk of a BATCH payload's messages (ipc.rs
//! `walk_messages`). Failures must be typed (`ERR_RING_INVALID`, `ERR_IPC_*`), never a panic;
//! an accepted header must lie inside the data area and the published bytes.
#![no_main]
use arrow_shm::ipc::{walk_messages, WalkMode};
use arrow_shm::ring::{check_record_header, RECORD_HEADER_BYTES};
use arrow_shm::ErrorCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < RECORD_HEADER_BYTES + 10 {
        return;
    }
    let raw: [u8; RECORD_HEADER_BYTES] = data[..RECORD_HEADER_BYTES].try_into().unwrap();
    // A power-of-two capacity (64 KiB .. 2^40), a 64-aligned offset and a published length.
    let capacity = 1u64 << (16 + data[RECORD_HEADER_BYTES] % 25);
    let offset = (u32::from_le_bytes(data[RECORD_HEADER_BYTES + 1..RECORD_HEADER_BYTES + 5].try_into().unwrap()) as u64 * 64) % capacity;
    let available = u32::from_le_bytes(data[RECORD_HEADER_BYTES + 5..RECORD_HEADER_BYTES + 9].try_into().unwrap()) as u64;
    match check_record_header(&raw, offset, capacity, available) {
        Ok(h) => {
            assert!(h.length >= 64 && h.length % 64 == 0);
            assert!(offset + h.length <= capacity && h.length <= available);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::RingInvalid, "{e:?}"),
    }
    let payload = &data[RECORD_HEADER_BYTES + 9..];
    for mode in [WalkMode::Record, WalkMode::Prologue] {
        if let Err(e) = walk_messages(payload, mode, &Default::default(), &mut None) {
            assert!(e.code.as_str().starts_with("ERR_IPC_"), "{e:?}");
        }
    }
});
