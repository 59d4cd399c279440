//! The key/value block (frame.rs `decode_kv`) and what the handshake/ERROR handling reads from
//! it: `kv_get`, version numbers, capabilities lists, `ErrorCode::parse`.
#![no_main]
use arrow_shm::frame::{decode_kv, encode_kv, kv_get};
use arrow_shm::ErrorCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_kv(data) {
        Ok(kv) => {
            let bytes = encode_kv(&kv).expect("a decoded block must re-encode");
            // an explicit zero count is accepted and re-encodes as the empty block
            if !kv.is_empty() {
                assert_eq!(bytes, data);
            }
            assert_eq!(decode_kv(&bytes).expect("re-decode"), kv);
            for (k, v) in &kv {
                assert_eq!(kv_get(&kv, k), Some(v.as_str()));
                if let Some(c) = ErrorCode::parse(v) {
                    assert_eq!(c.as_str(), v);
                }
            }
            let _ = kv_get(&kv, "min_version").and_then(|v| v.parse::<u32>().ok());
            let _ = kv_get(&kv, "max_message_bytes").and_then(|v| v.parse::<u64>().ok());
            let caps: Vec<&str> = kv_get(&kv, "capabilities").unwrap_or("").split(',').filter(|s| !s.is_empty()).collect();
            std::hint::black_box(caps);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::Protocol, "{e:?}"),
    }
});
