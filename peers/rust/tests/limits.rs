//! PROTOCOL.md §14.1 in the IPC validation: hostile flatbuffers built here with arrow-ipc's
//! generated builders (shared offsets, huge counts, deep nesting) are refused with
//! `ERR_IPC_LIMIT` quickly, counts that disagree with the schema with `ERR_IPC_INVALID`.

mod common;

use std::time::{Duration, Instant};

use arrow_ipc as fb;
use arrow_shm::ipc::{self, Limits};
use arrow_shm::ErrorCode;
use common::hostile::{self, *};
use flatbuffers::ForwardsUOffset;

/// The validation's code (or `None` if it accepts), and that it answered within a second.
fn check_with(bytes: &[u8], limits: &Limits) -> Option<ErrorCode> {
    let t = Instant::now();
    let r = ipc::validate_stream(bytes, limits);
    assert!(t.elapsed() < Duration::from_secs(1), "validation took {:?}", t.elapsed());
    r.err().map(|e| {
        assert!(!e.message.is_empty());
        e.code
    })
}

fn check(bytes: &[u8]) -> Option<ErrorCode> {
    check_with(bytes, &Limits::default())
}

#[test]
fn shared_offsets_count_per_reference() {
    // 100,000 custom_metadata entries of the Schema *Message*, all one KeyValue with a 1 MiB value
    let bomb = metadata_bomb();
    assert!(bomb.len() < 4 << 20, "{} bytes stored", bomb.len());
    assert_eq!(check(&bomb), Some(ErrorCode::IpcLimit));
    // 100,000 fields sharing one Field with a 1 MiB name
    assert_eq!(check(&schema_bomb()), Some(ErrorCode::IpcLimit));

    // 100,000 fields sharing one tiny Field: the bytes fit, the field count does not
    let mut fbb = Fbb::new();
    let t = int32_type(&mut fbb);
    let f = field(&mut fbb, "a", fb::Type::Int, t, None, None);
    let fields = fbb.create_vector(&vec![f; 100_000]);
    assert_eq!(check(&stream(&[schema_message(fbb, fields, None, None)])), Some(ErrorCode::IpcLimit));

    // 70,000 entries sharing one tiny KeyValue in the Schema's own metadata
    let mut fbb = Fbb::new();
    let entry = kv(&mut fbb, "k", "v");
    let entries = fbb.create_vector(&vec![entry; 70_000]);
    let fields = fbb.create_vector::<ForwardsUOffset<fb::Field>>(&[]);
    assert_eq!(check(&stream(&[schema_message(fbb, fields, Some(entries), None)])), Some(ErrorCode::IpcLimit));

    // 5,000,000 FieldNodes (80 MB of flatbuffer): over max_metadata_bytes before any is counted
    assert_eq!(check(&node_count_bomb(5_000_000)), Some(ErrorCode::IpcLimit));
}

#[test]
fn fields_entries_and_depth_are_bounded() {
    // 70,000 distinct fields (over max_fields 65,536), and 1,000 that fit
    let many = fields_many;
    assert_eq!(check(&many(70_000)), Some(ErrorCode::IpcLimit));
    assert_eq!(check(&many(1_000)), None);
    let few = Limits { max_fields: 999, ..Limits::default() };
    assert_eq!(check_with(&many(1_000), &few), Some(ErrorCode::IpcLimit));

    // children count too: one struct with 70,000 children
    let mut fbb = Fbb::new();
    let kids: Vec<_> = (0..70_000)
        .map(|i| {
            let t = int32_type(&mut fbb);
            field(&mut fbb, &format!("c{i}"), fb::Type::Int, t, None, None)
        })
        .collect();
    let kids = fbb.create_vector(&kids);
    let st = fb::Struct_::create(&mut fbb, &fb::Struct_Args {}).as_union_value();
    let parent = field(&mut fbb, "s", fb::Type::Struct_, st, Some(kids), None);
    let fields = fbb.create_vector(&[parent]);
    assert_eq!(check(&stream(&[schema_message(fbb, fields, None, None)])), Some(ErrorCode::IpcLimit));

    // 40,000 distinct entries on the Message plus 40,000 on the Schema (each list is under the limit)
    let mut fbb = Fbb::new();
    let a: Vec<_> = (0..40_000).map(|i| kv(&mut fbb, &format!("m{i}"), "v")).collect();
    let b: Vec<_> = (0..40_000).map(|i| kv(&mut fbb, &format!("s{i}"), "v")).collect();
    let (a, b) = (fbb.create_vector(&a), fbb.create_vector(&b));
    let fields = fbb.create_vector::<ForwardsUOffset<fb::Field>>(&[]);
    assert_eq!(check(&stream(&[schema_message(fbb, fields, Some(b), Some(a))])), Some(ErrorCode::IpcLimit));

    // list<list<...<int32>>> nested 10 and 70 times, and at the limit: 61 lists put the leaf's
    // Int type table at depth 64 (Message 0, Schema 1, top-level Field 2, ...), 62 at 65
    assert_eq!(check(&nested_lists(10)), None);
    assert_eq!(check(&nested_lists(61)), None);
    assert_eq!(check(&nested_lists(62)), Some(ErrorCode::IpcLimit));
    assert_eq!(check(&nested_lists(70)), Some(ErrorCode::IpcLimit));
    assert_eq!(check_with(&nested_lists(10), &Limits { max_nesting_depth: 8, ..Limits::default() }), Some(ErrorCode::IpcLimit));
}

#[test]
fn batch_counts_must_match_the_schema() {
    let schema = one_int32_schema();
    assert_eq!(check(&stream(&[schema.clone(), batch(1, 2, None, None)])), None);
    assert_eq!(check(&stream(&[schema.clone(), batch(2, 5, None, None)])), Some(ErrorCode::IpcInvalid));
    assert_eq!(check(&stream(&[schema.clone(), batch(1, 3, None, None)])), Some(ErrorCode::IpcInvalid));
    assert_eq!(check(&stream(&[schema.clone(), batch(0, 0, None, None)])), Some(ErrorCode::IpcInvalid));
    assert_eq!(check(&stream(&[schema.clone(), batch(1, 2, Some(&[0]), None)])), Some(ErrorCode::IpcInvalid));

    // utf8view: 2 buffers plus its variadic count, one variadicBufferCounts entry
    let mut fbb = Fbb::new();
    let t = fb::Utf8View::create(&mut fbb, &fb::Utf8ViewArgs {}).as_union_value();
    let f = field(&mut fbb, "v", fb::Type::Utf8View, t, None, None);
    let fields = fbb.create_vector(&[f]);
    let view = schema_message(fbb, fields, None, None);
    assert_eq!(check(&stream(&[view.clone(), batch(1, 5, Some(&[3]), None)])), None);
    assert_eq!(check(&stream(&[view.clone(), batch(1, 2, None, None)])), Some(ErrorCode::IpcInvalid));
    assert_eq!(check(&stream(&[view.clone(), batch(1, 4, Some(&[3]), None)])), Some(ErrorCode::IpcInvalid));
    assert_eq!(check(&stream(&[view.clone(), batch(1, 2, Some(&[-1]), None)])), Some(ErrorCode::IpcInvalid));
    assert_eq!(check(&stream(&[view, batch(1, 2, Some(&[i64::MAX]), None)])), Some(ErrorCode::IpcInvalid));

    // a dictionary-encoded utf8 column: index in the RecordBatch, values in the DictionaryBatch
    let mut fbb = Fbb::new();
    let t = fb::Utf8::create(&mut fbb, &fb::Utf8Args {}).as_union_value();
    let f = field(&mut fbb, "d", fb::Type::Utf8, t, None, Some(7));
    let fields = fbb.create_vector(&[f]);
    let dict = schema_message(fbb, fields, None, None);
    assert_eq!(check(&stream(&[dict.clone(), batch(1, 3, None, Some(7)), batch(1, 2, None, None)])), None);
    assert_eq!(check(&stream(&[dict.clone(), batch(1, 2, None, Some(7))])), Some(ErrorCode::IpcInvalid));
    assert_eq!(check(&stream(&[dict.clone(), batch(1, 3, None, Some(8))])), Some(ErrorCode::IpcInvalid), "unknown id");
    assert_eq!(check(&stream(&[dict, batch(1, 3, None, None)])), Some(ErrorCode::IpcInvalid));

    // a type id this peer does not know
    let mut fbb = Fbb::new();
    let t = int32_type(&mut fbb);
    let f = field(&mut fbb, "x", fb::Type(99), t, None, None);
    let fields = fbb.create_vector(&[f]);
    assert_eq!(check(&stream(&[schema_message(fbb, fields, None, None)])), Some(ErrorCode::IpcUnsupported));
}

#[test]
fn every_gold_stream_passes_the_count_checks() {
    for f in common::gold_streams() {
        let bytes = std::fs::read(&f).unwrap();
        if let Err(e) = ipc::validate_stream(&bytes, &Limits::default()) {
            panic!("{f:?}: {e}");
        }
    }
}

#[test]
fn many_small_messages_validate_in_linear_time() {
    let batch = hostile::batch(1, 2, None, None);
    let mut msgs = vec![one_int32_schema()];
    msgs.extend(std::iter::repeat_n(batch, 20_000));
    let bytes = stream(&msgs);
    let t = Instant::now();
    let info = ipc::validate_stream(&bytes, &Limits::default()).unwrap();
    assert_eq!(info.record_batches, 20_000);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}
