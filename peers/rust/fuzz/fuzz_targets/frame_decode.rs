//! Frame header + key/value block decoding (frame.rs `Frame::decode`), as a datagram arrives.
//! Every failure must be a typed `ERR_PROTOCOL`; an accepted frame must re-encode to a frame
//! that decodes equal (reserved bytes are ignored by the decoder). An INLINE table (§5.3) carries
//! its IPC stream after the key/values: the header and key/values round-trip, the stream lies
//! exactly at the end of the frame.
#![no_main]
use arrow_shm::frame::{Frame, FLAG_INLINE, HEADER_LENGTH};
use arrow_shm::ErrorCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Frame::decode(data) {
        Ok(f) => {
            let bytes = f.encode().expect("a decoded frame must re-encode");
            let inline = f.flags & FLAG_INLINE != 0;
            let kv_end = HEADER_LENGTH + u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
            if inline {
                assert_eq!(f.ipc_offset as usize, kv_end.next_multiple_of(8));
                assert_eq!(f.ipc_offset + f.ipc_length, data.len() as u64);
            }
            let data = &data[..kv_end];
            // PROTOCOL §3.1: a 4-byte block with count 0 is the same empty map as no block, which
            // is what encode() writes; then only metadata_length (bytes 12..16) and the block differ.
            let empty_block = data.len() == HEADER_LENGTH + 4 && f.metadata.is_empty();
            if empty_block {
                assert_eq!(bytes.len(), HEADER_LENGTH);
                assert_eq!(bytes[..12], data[..12], "header fields must round-trip");
                assert_eq!(bytes[16..32], data[16..32], "header fields must round-trip");
            } else {
                assert_eq!(bytes.len(), data.len());
                assert_eq!(bytes[..32], data[..32], "header fields must round-trip");
                assert_eq!(bytes[HEADER_LENGTH..], data[HEADER_LENGTH..], "key/values must round-trip");
            }
            if !inline {
                assert_eq!(Frame::decode(&bytes).expect("re-decode"), f);
            }
        }
        Err(e) => assert_eq!(e.code, ErrorCode::Protocol, "{e:?}"),
    }
});
