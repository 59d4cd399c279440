//! IPC stream validation (ipc.rs `validate_stream`): over arbitrary bytes, and (first byte
//! 0xA5) structure-aware over hostile streams built from a small recipe with arrow-ipc's
//! flatbuffer builders (tests/common/hostile.rs): offsets shared by many references, huge
//! counts, deep nesting, many small messages. The recipe knows what decoding would produce, so
//! it checks that §14.1 refuses exactly what exceeds a limit.
#![no_main]
use arrow_shm::ipc::{validate_stream, Limits};
use arrow_shm::ErrorCode;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/hostile.rs"]
#[allow(dead_code)]
mod hostile;

const RECIPE: u8 = 0xA5;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 12 && data[0] == RECIPE {
        recipe(&data[1..12]);
        return;
    }
    match validate_stream(data, &Limits::default()) {
        Ok(info) => {
            assert!(info.end <= data.len());
            assert!(info.messages >= 1);
            assert!(info.record_batches + info.dictionary_batches < info.messages);
            // validation of the prefix up to the end-of-stream marker gives the same answer
            assert_eq!(validate_stream(&data[..info.end], &Limits::default()).expect("prefix"), info);
        }
        Err(e) => assert!(e.code.as_str().starts_with("ERR_IPC_"), "{e:?}"),
    }
});

/// `r`: shape, u32 reference count, u32 string length, u8 depth, u8 extra (see the seeds in
/// scripts/fuzz-rust.sh).
fn recipe(r: &[u8]) {
    use hostile::*;
    let u32_at = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().unwrap()) as usize;
    // Limits scaled down from the defaults: the same code paths, and runs cheap enough not to
    // slow down the fuzzing of raw bytes.
    let limits = Limits { max_metadata_bytes: 64 << 10, max_metadata_entries: 256, max_fields: 256, max_nesting_depth: 64 };
    let (refs, len, depth, extra) = (u32_at(1) % 513, u32_at(5) % 1024, r[9] as usize % 100, r[10] as usize);
    // (bytes, refused: Some(true) = must be refused with ERR_IPC_LIMIT, Some(false) = must pass)
    let (bytes, must_fail): (Vec<u8>, Option<bool>) = match r[0] % 5 {
        0 => {
            // `refs` Message custom_metadata entries sharing one KeyValue with a `len`-byte value
            let mut fbb = Fbb::new();
            let entry = kv(&mut fbb, "k", &"v".repeat(len));
            let entries = fbb.create_vector(&vec![entry; refs]);
            let fields = fbb.create_vector::<flatbuffers::ForwardsUOffset<arrow_ipc::Field>>(&[]);
            let over = refs > limits.max_metadata_entries || refs * len > limits.max_metadata_bytes;
            (stream(&[schema_message(fbb, fields, None, Some(entries))]), over.then_some(true))
        }
        1 => {
            // `refs` fields sharing one Field with a `len`-byte name
            let mut fbb = Fbb::new();
            let t = int32_type(&mut fbb);
            let f = field(&mut fbb, &"n".repeat(len), arrow_ipc::Type::Int, t, None, None);
            let fields = fbb.create_vector(&vec![f; refs]);
            let over = refs > limits.max_fields || refs * len > limits.max_metadata_bytes;
            let n = if refs <= limits.max_fields { refs } else { 1 };
            let batch = batch(n, 2 * n, None, None);
            (stream(&[schema_message(fbb, fields, None, None), batch]), over.then_some(true))
        }
        2 => {
            // list<list<...int32>> `depth` deep: the Int type table is at depth + 3, counted as
            // §14.1 does (Message 0, Schema 1, the top-level Field 2, ..., the leaf's type)
            (nested_lists(depth), Some(depth + 3 > limits.max_nesting_depth))
        }
        3 => {
            // a one-int32 schema and a batch declaring `refs` nodes and `extra` buffers
            let ok = refs == 1 && extra == 2;
            let bytes = stream(&[one_int32_schema(), batch(refs, extra, None, None)]);
            let code = validate_stream(&bytes, &limits).err().map(|e| e.code);
            let want_limit = refs * 16 > limits.max_metadata_bytes;
            match code {
                None => assert!(ok),
                Some(c) => assert!(!ok && (c == ErrorCode::IpcInvalid || (want_limit && c == ErrorCode::IpcLimit)), "{c:?}"),
            }
            return;
        }
        _ => {
            // `refs % 256` small RecordBatches after one schema
            let n = refs % 256;
            let mut msgs = vec![one_int32_schema()];
            msgs.extend(std::iter::repeat_n(batch(1, 2, None, None), n));
            (stream(&msgs), Some(false))
        }
    };
    let got = validate_stream(&bytes, &limits);
    match (must_fail, &got) {
        (Some(true), Err(e)) => assert_eq!(e.code, ErrorCode::IpcLimit, "{e:?}"),
        (Some(true), Ok(_)) => panic!("over a limit but accepted"),
        (Some(false), Err(e)) => panic!("within the limits but refused: {e:?}"),
        (None, Err(e)) => assert_eq!(e.code, ErrorCode::IpcLimit, "{e:?}"),
        _ => {}
    }
}
