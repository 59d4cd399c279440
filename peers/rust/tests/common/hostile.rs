//! Hostile Arrow IPC bytes built with arrow-ipc's generated flatbuffer builders (PROTOCOL.md
//! §14.1): shared offsets, huge counts, counts that disagree with the schema.

use arrow_ipc as fb;
use arrow_shm::ipc;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

pub type Fbb = FlatBufferBuilder<'static>;
pub type Fields = WIPOffset<Vector<'static, ForwardsUOffset<fb::Field<'static>>>>;
pub type KeyValues = WIPOffset<Vector<'static, ForwardsUOffset<fb::KeyValue<'static>>>>;

/// One encapsulated message: continuation, size, the flatbuffer padded to 8, a zero body.
pub fn encapsulate(fbb: Fbb, body_length: usize) -> Vec<u8> {
    let data = fbb.finished_data();
    let padded = data.len().div_ceil(8) * 8;
    let mut out = Vec::with_capacity(8 + padded + body_length);
    out.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    out.extend_from_slice(&(padded as i32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(8 + padded + body_length, 0);
    out
}

pub fn message(mut fbb: Fbb, header_type: fb::MessageHeader, header: WIPOffset<UnionWIPOffset>, custom_metadata: Option<KeyValues>, body_length: usize) -> Vec<u8> {
    let m = fb::Message::create(
        &mut fbb,
        &fb::MessageArgs { version: fb::MetadataVersion::V5, header_type, header: Some(header), bodyLength: body_length as i64, custom_metadata },
    );
    fbb.finish(m, None);
    encapsulate(fbb, body_length)
}

pub fn int32_type(fbb: &mut Fbb) -> WIPOffset<UnionWIPOffset> {
    fb::Int::create(fbb, &fb::IntArgs { bitWidth: 32, is_signed: true }).as_union_value()
}

pub fn field(fbb: &mut Fbb, name: &str, type_type: fb::Type, type_: WIPOffset<UnionWIPOffset>, children: Option<Fields>, dictionary_id: Option<i64>) -> WIPOffset<fb::Field<'static>> {
    let name = fbb.create_string(name);
    let dictionary = dictionary_id.map(|id| {
        let index = fb::Int::create(fbb, &fb::IntArgs { bitWidth: 32, is_signed: true });
        fb::DictionaryEncoding::create(fbb, &fb::DictionaryEncodingArgs { id, indexType: Some(index), isOrdered: false, dictionaryKind: fb::DictionaryKind::DenseArray })
    });
    fb::Field::create(fbb, &fb::FieldArgs { name: Some(name), nullable: true, type_type, type_: Some(type_), dictionary, children, custom_metadata: None })
}

/// A Schema message from a builder that made its fields (and optional metadata).
pub fn schema_message(mut fbb: Fbb, fields: Fields, schema_kv: Option<KeyValues>, message_kv: Option<KeyValues>) -> Vec<u8> {
    let s = fb::Schema::create(&mut fbb, &fb::SchemaArgs { endianness: fb::Endianness::Little, fields: Some(fields), custom_metadata: schema_kv, features: None });
    message(fbb, fb::MessageHeader::Schema, s.as_union_value(), message_kv, 0)
}

pub fn one_int32_schema() -> Vec<u8> {
    let mut fbb = Fbb::new();
    let t = int32_type(&mut fbb);
    let f = field(&mut fbb, "a", fb::Type::Int, t, None, None);
    let fields = fbb.create_vector(&[f]);
    schema_message(fbb, fields, None, None)
}

/// A RecordBatch (or the data of a DictionaryBatch with `dictionary_id`) declaring `nodes`
/// FieldNodes and `buffers` empty Buffers.
pub fn batch(nodes: usize, buffers: usize, variadic: Option<&[i64]>, dictionary_id: Option<i64>) -> Vec<u8> {
    let mut fbb = Fbb::new();
    let n = fbb.create_vector(&vec![fb::FieldNode::new(0, 0); nodes]);
    let b = fbb.create_vector(&vec![fb::Buffer::new(0, 0); buffers]);
    let v = variadic.map(|v| fbb.create_vector(v));
    let rb = fb::RecordBatch::create(&mut fbb, &fb::RecordBatchArgs { length: 0, nodes: Some(n), buffers: Some(b), compression: None, variadicBufferCounts: v });
    match dictionary_id {
        None => message(fbb, fb::MessageHeader::RecordBatch, rb.as_union_value(), None, 0),
        Some(id) => {
            let db = fb::DictionaryBatch::create(&mut fbb, &fb::DictionaryBatchArgs { id, data: Some(rb), isDelta: false });
            message(fbb, fb::MessageHeader::DictionaryBatch, db.as_union_value(), None, 0)
        }
    }
}

pub fn stream(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = messages.concat();
    out.extend_from_slice(&ipc::EOS);
    out
}

pub fn kv(fbb: &mut Fbb, key: &str, value: &str) -> WIPOffset<fb::KeyValue<'static>> {
    let (k, v) = (fbb.create_string(key), fbb.create_string(value));
    fb::KeyValue::create(fbb, &fb::KeyValueArgs { key: Some(k), value: Some(v) })
}

/// A Schema *Message* whose 100,000 custom_metadata entries share one KeyValue with a 1 MiB
/// value (~0.5 MiB stored, ~98 GiB decoded), then a RecordBatch.
pub fn metadata_bomb() -> Vec<u8> {
    let mut fbb = Fbb::new();
    let entry = kv(&mut fbb, "k", &"x".repeat(1 << 20));
    let entries = fbb.create_vector(&vec![entry; 100_000]);
    let t = int32_type(&mut fbb);
    let f = field(&mut fbb, "a", fb::Type::Int, t, None, None);
    let fields = fbb.create_vector(&[f]);
    stream(&[schema_message(fbb, fields, None, Some(entries)), batch(1, 2, None, None)])
}

/// A Schema of 100,000 fields sharing one Field with a 1 MiB name.
pub fn schema_bomb() -> Vec<u8> {
    let mut fbb = Fbb::new();
    let t = int32_type(&mut fbb);
    let f = field(&mut fbb, &"x".repeat(1 << 20), fb::Type::Int, t, None, None);
    let fields = fbb.create_vector(&vec![f; 100_000]);
    stream(&[schema_message(fbb, fields, None, None)])
}

/// A one-int32-column stream whose RecordBatch declares `nodes` FieldNodes.
pub fn node_count_bomb(nodes: usize) -> Vec<u8> {
    stream(&[one_int32_schema(), batch(nodes, 2, None, None)])
}

/// A one-int32-column stream whose RecordBatch has 2 nodes and 5 buffers.
pub fn counts_mismatch() -> Vec<u8> {
    stream(&[one_int32_schema(), batch(2, 5, None, None)])
}

/// A schema of `n` distinct int32 fields, and a RecordBatch that matches it.
pub fn fields_many(n: usize) -> Vec<u8> {
    let mut fbb = Fbb::new();
    let fs: Vec<_> = (0..n)
        .map(|i| {
            let t = int32_type(&mut fbb);
            field(&mut fbb, &format!("f{i}"), fb::Type::Int, t, None, None)
        })
        .collect();
    let fields = fbb.create_vector(&fs);
    stream(&[schema_message(fbb, fields, None, None), batch(n, 2 * n, None, None)])
}

/// list<list<...<int32>>> nested `depth` times (tables nested `depth + 4` deep, counted from the
/// Message as §14.1 does), and a RecordBatch that matches it.
pub fn nested_lists(depth: usize) -> Vec<u8> {
    let mut fbb = Fbb::new();
    let t = int32_type(&mut fbb);
    let mut f = field(&mut fbb, "leaf", fb::Type::Int, t, None, None);
    for _ in 0..depth {
        let kids = fbb.create_vector(&[f]);
        let l = fb::List::create(&mut fbb, &fb::ListArgs {}).as_union_value();
        f = field(&mut fbb, "l", fb::Type::List, l, Some(kids), None);
    }
    let fields = fbb.create_vector(&[f]);
    stream(&[schema_message(fbb, fields, None, None), batch(depth + 1, 2 * depth + 2, None, None)])
}
