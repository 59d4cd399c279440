//! IPC stream framing validation (ipc.rs `validate_stream`) over arbitrary bytes.
#![no_main]
use arrow_shm::ipc::validate_stream;
use arrow_shm::ErrorCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match validate_stream(data) {
        Ok(info) => {
            assert!(info.end <= data.len());
            assert!(info.messages >= 1);
            assert!(info.record_batches + info.dictionary_batches < info.messages);
            // validation of the prefix up to the end-of-stream marker gives the same answer
            assert_eq!(validate_stream(&data[..info.end]).expect("prefix"), info);
        }
        Err(e) => assert!(matches!(e.code, ErrorCode::IpcTruncated | ErrorCode::IpcInvalid), "{e:?}"),
    }
});
