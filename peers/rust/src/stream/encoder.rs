//! A stream's per-schema RecordBatch writer (PROTOCOL.md §12.2), as Node's
//! src/stream/encoder.ts: the schema is fixed for the life of a stream, so the Message flatbuffer
//! is a template laid out once, and each batch only patches its length, field nodes and buffer
//! regions, writing message and body straight into the ring slot (no allocation per batch). The
//! bytes are the same encapsulated message arrow-rs's writer makes (continuation, size,
//! flatbuffer, zero padding, body buffers at 64-byte boundaries); only the flatbuffer's internal
//! layout differs, which every flatbuffer reader accepts. A column without nulls has an empty
//! validity buffer (the format allows it; arrow-rs writes an all-set bitmap).
//! Schemas or batches outside the flat types below (nested, dictionary, view, sliced at a bit
//! offset, a length over 2^31 − 1) get `None` from `measure`: the producer then uses arrow-rs.

use arrow_array::cast::AsArray;
use arrow_array::{downcast_primitive_array, Array, RecordBatch};
use arrow_buffer::{Buffer, OffsetBuffer};
use arrow_schema::{DataType, Schema};

const METADATA_V5: i16 = 4;
const HEADER_RECORD_BATCH: u8 = 3;
const ALIGN: usize = 64;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

// The template's fixed offsets (inside the flatbuffer; every i64 8-byte aligned, structs too):
// 0 root → Message table at 24 (vtable at 8), RecordBatch table at 64 (vtable at 48),
// nodes vector length at 92 (elements at 96), buffers vector length at NODES + 16·n + 4.
const MESSAGE_TABLE: usize = 24;
const BATCH_TABLE: usize = 64;
const NODES: usize = 96;
const BODY_LENGTH_AT: usize = MESSAGE_TABLE + 8;
const LENGTH_AT: usize = BATCH_TABLE + 8;

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The Message flatbuffer of a batch with `nodes` field nodes and `buffers` buffers, values zero.
fn message_template(nodes: usize, buffers: usize) -> Vec<u8> {
    let buffers_at = NODES + 16 * nodes; // 8-aligned: the vector's length sits just before it, at +4
    let mut b = vec![0u8; buffers_at + 8 + 16 * buffers];
    put_u32(&mut b, 0, MESSAGE_TABLE as u32);
    // Message vtable: size, table size, then field offsets: version, header_type, header, bodyLength.
    for (i, x) in [12u16, 24, 16, 18, 4, 8].into_iter().enumerate() {
        put_u16(&mut b, 8 + 2 * i, x);
    }
    put_u32(&mut b, MESSAGE_TABLE, (MESSAGE_TABLE - 8) as u32);
    put_u32(&mut b, MESSAGE_TABLE + 4, (BATCH_TABLE - (MESSAGE_TABLE + 4)) as u32);
    put_u16(&mut b, MESSAGE_TABLE + 16, METADATA_V5 as u16);
    b[MESSAGE_TABLE + 18] = HEADER_RECORD_BATCH;
    // RecordBatch vtable: length, nodes, buffers.
    for (i, x) in [10u16, 24, 8, 4, 16].into_iter().enumerate() {
        put_u16(&mut b, 48 + 2 * i, x);
    }
    put_u32(&mut b, BATCH_TABLE, (BATCH_TABLE - 48) as u32);
    put_u32(&mut b, BATCH_TABLE + 4, (NODES - 4 - (BATCH_TABLE + 4)) as u32);
    put_u32(&mut b, BATCH_TABLE + 16, (buffers_at + 4 - (BATCH_TABLE + 16)) as u32);
    put_u32(&mut b, NODES - 4, nodes as u32);
    put_u32(&mut b, buffers_at + 4, buffers as u32);
    b
}

/// How a top-level column of `t` is laid out, for the types the stream codecs handle
/// themselves (`None`: others): validity + values (`Flat`, `Bool`) or validity + offsets + values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ColumnKind {
    Bool,
    Flat,
    Variable,
}

pub(super) fn column_kind(t: &DataType) -> Option<ColumnKind> {
    match t {
        DataType::Boolean => Some(ColumnKind::Bool),
        DataType::Binary | DataType::Utf8 | DataType::LargeBinary | DataType::LargeUtf8 => Some(ColumnKind::Variable),
        t if t.is_primitive() => Some(ColumnKind::Flat),
        _ => None,
    }
}

/// Writes the RecordBatch messages of one stream's flat schema.
pub(super) struct BatchEncoder {
    fields: usize,
    template: Vec<u8>,
    buffers_at: usize,
    body_start: usize,
    /// The batch `measure` planned: its length, field nodes and body buffers (reused from batch to batch).
    length: i64,
    nodes: Vec<(i64, i64)>,
    buffers: Vec<Buffer>,
    body_length: usize,
    empty: Buffer,
}

impl BatchEncoder {
    /// `None` when the schema has a type this encoder does not write.
    pub(super) fn for_schema(schema: &Schema) -> Option<BatchEncoder> {
        let kinds: Option<Vec<ColumnKind>> = schema.fields().iter().map(|f| column_kind(f.data_type())).collect();
        let kinds = kinds?;
        let buffers: usize = kinds.iter().map(|k| if *k == ColumnKind::Variable { 3 } else { 2 }).sum();
        let template = message_template(kinds.len(), buffers);
        Some(BatchEncoder {
            fields: kinds.len(),
            buffers_at: NODES + 16 * kinds.len() + 8,
            // The message prefix (continuation, size) and the flatbuffer end at a 64-byte boundary.
            body_start: align(8 + template.len()),
            template,
            length: 0,
            nodes: Vec::with_capacity(kinds.len()),
            buffers: Vec::with_capacity(buffers),
            body_length: 0,
            empty: Buffer::from_vec(Vec::<u8>::new()),
        })
    }

    /// Plans `batch`; returns the bytes of its encapsulated RecordBatch message, or `None` when
    /// arrow-rs's writer must write it.
    pub(super) fn measure(&mut self, batch: &RecordBatch) -> Option<usize> {
        if batch.num_columns() != self.fields || batch.num_rows() > i32::MAX as usize {
            return None;
        }
        self.clear();
        for c in batch.columns() {
            if !self.plan(c.as_ref()) {
                self.clear();
                return None;
            }
        }
        self.body_length = self.buffers.iter().fold(0, |n, b| align(n + b.len()));
        self.length = batch.num_rows() as i64;
        Some(self.body_start + self.body_length)
    }

    /// What arrow-rs's writer lays out for one flat column; false when its buffers do not start
    /// at a byte boundary or its offsets do not start at 0 (arrow-rs then rewrites them).
    fn plan(&mut self, a: &dyn Array) -> bool {
        let len = a.len();
        let (validity, null_count) = match a.nulls().filter(|n| n.null_count() > 0) {
            None => (self.empty.clone(), 0),
            Some(n) if n.offset() % 8 == 0 => (n.buffer().slice_with_length(n.offset() / 8, len.div_ceil(8)), n.null_count()),
            Some(_) => return false,
        };
        self.nodes.push((len as i64, null_count as i64));
        self.buffers.push(validity);
        match a.data_type() {
            DataType::Boolean => {
                let v = a.as_boolean().values();
                if v.offset() % 8 != 0 {
                    return false;
                }
                self.buffers.push(v.inner().slice_with_length(v.offset() / 8, len.div_ceil(8)));
                true
            }
            DataType::Binary => self.plan_bytes(a.as_binary::<i32>().offsets(), a.as_binary::<i32>().values()),
            DataType::Utf8 => self.plan_bytes(a.as_string::<i32>().offsets(), a.as_string::<i32>().values()),
            DataType::LargeBinary => self.plan_bytes(a.as_binary::<i64>().offsets(), a.as_binary::<i64>().values()),
            DataType::LargeUtf8 => self.plan_bytes(a.as_string::<i64>().offsets(), a.as_string::<i64>().values()),
            _ => {
                let values = downcast_primitive_array!(
                    a => a.values().inner().clone(),
                    _ => return false,
                );
                self.buffers.push(values);
                true
            }
        }
    }

    fn plan_bytes<O: arrow_array::OffsetSizeTrait>(&mut self, offsets: &OffsetBuffer<O>, values: &Buffer) -> bool {
        // An OffsetBuffer has at least one offset.
        let end = offsets.last().as_usize();
        if offsets.first().as_usize() != 0 || end > values.len() {
            return false;
        }
        self.buffers.push(offsets.inner().inner().clone());
        self.buffers.push(values.slice_with_length(0, end));
        true
    }

    /// Drops the planned batch's buffers: they may be leases on records of another stream (an
    /// echo), which must not outlive the write.
    pub(super) fn clear(&mut self) {
        self.nodes.clear();
        self.buffers.clear();
    }

    /// Writes the message `measure` planned into `target` (exactly its length), padding zeroed,
    /// and forgets the batch.
    pub(super) fn write(&mut self, target: &mut [u8]) {
        let t = target;
        let fb = 8;
        put_u32(t, 0, 0xFFFF_FFFF);
        put_u32(t, 4, (self.body_start - 8) as u32);
        t[fb..fb + self.template.len()].copy_from_slice(&self.template);
        t[fb + self.template.len()..self.body_start].fill(0);
        put_i64(t, fb + BODY_LENGTH_AT, self.body_length as i64);
        put_i64(t, fb + LENGTH_AT, self.length);
        for (i, (n, nulls)) in self.nodes.iter().enumerate() {
            put_i64(t, fb + NODES + 16 * i, *n);
            put_i64(t, fb + NODES + 16 * i + 8, *nulls);
        }
        let body = self.body_start;
        let mut offset = 0;
        let mut region = fb + self.buffers_at;
        for b in &self.buffers {
            put_i64(t, region, offset as i64);
            put_i64(t, region + 8, b.len() as i64);
            region += 16;
            t[body + offset..body + offset + b.len()].copy_from_slice(b.as_slice());
            let end = offset + b.len();
            offset = align(end);
            t[body + end..body + offset].fill(0);
        }
        self.clear();
    }
}
