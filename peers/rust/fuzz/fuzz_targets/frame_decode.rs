//! Frame header + key/value block decoding (frame.rs `Frame::decode`), as a datagram arrives.
//! Every failure must be a typed `ERR_PROTOCOL`; an accepted frame must re-encode to a frame
//! that decodes equal (reserved bytes are ignored by the decoder).
#![no_main]
use arrow_shm::frame::{Frame, HEADER_LENGTH};
use arrow_shm::ErrorCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Frame::decode(data) {
        Ok(f) => {
            let bytes = f.encode().expect("a decoded frame must re-encode");
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
            assert_eq!(Frame::decode(&bytes).expect("re-decode"), f);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::Protocol, "{e:?}"),
    }
});
