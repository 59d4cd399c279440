//! A per-stream decode plan, as Node's src/stream/decoder.ts: the layout every batch must have
//! is fixed once from the schema (flat columns only: see encoder.rs), so a record holding exactly
//! one RecordBatch message — no dictionaries, no compression, no custom metadata, no variadic
//! counts — is read here: every flatbuffer offset is bounds- and alignment-checked as the
//! flatbuffers verifier would, the counts compared with the plan, and the arrays built over the
//! ring bytes the way arrow-rs's reader builds them (same builder, same validation). Anything
//! else, or anything these checks doubt, goes back (`None`) to the generic walk, which accepts
//! what it accepts and reports errors in its own words: so the plan never accepts what the walk
//! would refuse, and refuses nothing itself.

use std::panic::{catch_unwind, AssertUnwindSafe};

use std::sync::Arc;

use arrow_array::types::{BinaryType, ByteArrayType, LargeBinaryType, LargeUtf8Type, Utf8Type};
use arrow_array::{downcast_primitive, ArrayRef, ArrowPrimitiveType, BooleanArray, GenericByteArray, PrimitiveArray, RecordBatch};
use arrow_buffer::{ArrowNativeType, BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, SchemaRef};

use crate::ipc::Limits;

use super::encoder::{column_kind, ColumnKind};

const CONTINUATION: u32 = 0xFFFF_FFFF;
const HEADER_RECORD_BATCH: u8 = 3;
const METADATA_V4: i16 = 3;
const METADATA_V5: i16 = 4;
/// Objects the plan follows in one Message (two tables, their vtables, two vectors): a bound of
/// the verifier's apparent size is this many times the flatbuffer's size.
const PLAN_OBJECTS: usize = 6;

pub(super) struct DecodePlan {
    schema: SchemaRef,
    kinds: Vec<ColumnKind>,
    buffers: usize,
    max_metadata_bytes: usize,
    /// The last record's buffer regions in its body: (offset, length), reused from record to record.
    regions: Vec<(usize, usize)>,
}

impl DecodePlan {
    /// `None` when the schema has a column the plan does not lay out (the generic walk reads it).
    pub(super) fn for_schema(schema: &SchemaRef, limits: &Limits) -> Option<DecodePlan> {
        let kinds: Option<Vec<ColumnKind>> = schema.fields().iter().map(|f| column_kind(f.data_type())).collect();
        let kinds = kinds?;
        let buffers = kinds.iter().map(|k| if *k == ColumnKind::Variable { 3 } else { 2 }).sum::<usize>();
        // What the flatbuffer verifier counts for a batch's two vectors, and the one nested table.
        if 16 * (kinds.len() + buffers) > limits.max_metadata_bytes || limits.max_nesting_depth < 1 {
            return None;
        }
        Some(DecodePlan { schema: schema.clone(), kinds, buffers, max_metadata_bytes: limits.max_metadata_bytes, regions: Vec::new() })
    }

    /// The batch of a record's payload `bytes`, or `None`: the generic walk decides.
    pub(super) fn decode(&mut self, bytes: &Buffer) -> Option<RecordBatch> {
        let data = bytes.as_slice();
        if data.len() < 8 || u32_at(data, 0)? != CONTINUATION {
            return None;
        }
        let size = i32::from_le_bytes(data[4..8].try_into().ok()?);
        if size <= 0 || size as usize > data.len() - 8 || PLAN_OBJECTS * size as usize > self.max_metadata_bytes {
            return None;
        }
        let m = Fb(&data[8..8 + size as usize]);
        // Message: version 0, header_type 1, header 2, bodyLength 3, custom_metadata 4.
        let message = m.table(m.target(0)?)?;
        if m.u8_field(message, 1)? != Some(HEADER_RECORD_BATCH) || m.field(message, 4, 4)?.is_some() {
            return None;
        }
        let version = m.i16_field(message, 0)?.unwrap_or(0);
        if !(METADATA_V4..=METADATA_V5).contains(&version) {
            return None;
        }
        let batch = m.table(m.target(m.field(message, 2, 4)??)?)?;
        let body_length = m.i64_field(message, 3)?.unwrap_or(0);
        // RecordBatch: length 0, nodes 1, buffers 2, compression 3, variadicBufferCounts 4.
        if m.field(batch, 3, 4)?.is_some() || m.field(batch, 4, 4)?.is_some() {
            return None;
        }
        let length = m.i64_field(batch, 0)?.unwrap_or(0);
        let nodes = m.structs(m.field(batch, 1, 4)?, self.kinds.len())?;
        let buffers = m.structs(m.field(batch, 2, 4)?, self.buffers)?;
        let body_start = 8 + size as usize;
        if length < 0 || body_length < 0 || body_length as usize != data.len() - body_start {
            return None;
        }
        self.regions.clear();
        for k in 0..self.buffers {
            let (offset, n) = (m.i64_at(buffers + 16 * k)?, m.i64_at(buffers + 16 * k + 8)?);
            if offset < 0 || n < 0 || offset as u64 + n as u64 > body_length as u64 {
                return None;
            }
            self.regions.push((body_start + offset as usize, n as usize));
        }
        // arrow-rs's validation panics on some bad buffers (an offsets buffer of odd length): the
        // generic path catches that and says ERR_IPC_INVALID; here it is one more "not mine".
        catch_unwind(AssertUnwindSafe(|| self.columns(bytes, &m, nodes, length))).ok().flatten()
    }

    /// The batch over `self.regions` of `bytes`: the arrays arrow-rs's reader would build, made
    /// directly (`None` for anything its validation would refuse, or a buffer it would copy
    /// to align it: the generic path then decides).
    fn columns(&self, bytes: &Buffer, m: &Fb<'_>, nodes: usize, length: i64) -> Option<RecordBatch> {
        let region = |k: usize| {
            let (offset, n) = self.regions[k];
            bytes.slice_with_length(offset, n)
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.kinds.len());
        let mut at = 0;
        for (i, (kind, field)) in self.kinds.iter().zip(self.schema.fields()).enumerate() {
            let (n, null_count) = (m.i64_at(nodes + 16 * i)?, m.i64_at(nodes + 16 * i + 8)?);
            if n < 0 || null_count < 0 || null_count > n {
                return None;
            }
            let (n, null_count) = (n as usize, null_count as usize);
            // What RecordBatch::try_new would refuse (new_unchecked below relies on it).
            if n as i64 != length || (null_count > 0 && !field.is_nullable()) {
                return None;
            }
            // Validity is read only when there are nulls, and must count exactly that many.
            let nulls = match null_count {
                0 => None,
                _ => {
                    let bitmap = region(at);
                    if bitmap.len() < n.div_ceil(8) {
                        return None;
                    }
                    Some(NullBuffer::new(BooleanBuffer::new(bitmap, 0, n))).filter(|b| b.null_count() == null_count)?.into()
                }
            };
            let column: ArrayRef = match kind {
                ColumnKind::Bool => {
                    let values = region(at + 1);
                    if values.len() < n.div_ceil(8) {
                        return None;
                    }
                    Arc::new(BooleanArray::new(BooleanBuffer::new(values, 0, n), nulls))
                }
                ColumnKind::Flat => {
                    let (data_type, values) = (field.data_type(), region(at + 1));
                    downcast_primitive! {
                        data_type => (primitive_column_helper, data_type, n, values, nulls),
                        _ => return None,
                    }?
                }
                ColumnKind::Variable => match field.data_type() {
                    DataType::Binary => bytes_column::<BinaryType>(n, region(at + 1), region(at + 2), nulls)?,
                    DataType::Utf8 => bytes_column::<Utf8Type>(n, region(at + 1), region(at + 2), nulls)?,
                    DataType::LargeBinary => bytes_column::<LargeBinaryType>(n, region(at + 1), region(at + 2), nulls)?,
                    DataType::LargeUtf8 => bytes_column::<LargeUtf8Type>(n, region(at + 1), region(at + 2), nulls)?,
                    _ => return None,
                },
            };
            at += if *kind == ColumnKind::Variable { 3 } else { 2 };
            columns.push(column);
        }
        // SAFETY: one column per field, each of its field's exact type (made above from it) and
        // of the batch's length (checked above).
        Some(unsafe { RecordBatch::new_unchecked(self.schema.clone(), columns, length as usize) })
    }
}

macro_rules! primitive_column_helper {
    ($t:ty, $data_type:expr, $n:expr, $values:expr, $nulls:expr) => {
        primitive_column::<$t>($data_type, $n, $values, $nulls)
    };
}
use primitive_column_helper;

/// `n` values of `T` over `values` (which must hold them, aligned for `T`).
fn primitive_column<T: ArrowPrimitiveType>(data_type: &DataType, n: usize, values: Buffer, nulls: Option<NullBuffer>) -> Option<ArrayRef> {
    let width = std::mem::size_of::<T::Native>();
    if values.len() < n.checked_mul(width)? || values.as_ptr().align_offset(std::mem::align_of::<T::Native>()) != 0 {
        return None;
    }
    let array = PrimitiveArray::<T>::try_new(ScalarBuffer::new(values, 0, n), nulls).ok()?;
    // A timestamp's zone, a decimal's precision: the field's type, not T's default.
    Some(if *data_type == T::DATA_TYPE { Arc::new(array) } else { Arc::new(array.with_data_type(data_type.clone())) })
}

/// `n` values of `T` over `offsets` (at least n + 1 of them, aligned, from 0 or more, never
/// decreasing, none past `values`) and `values` (UTF-8 for strings: checked by `try_new`).
fn bytes_column<T: ByteArrayType>(n: usize, offsets: Buffer, values: Buffer, nulls: Option<NullBuffer>) -> Option<ArrayRef> {
    let width = std::mem::size_of::<T::Offset>();
    // arrow-rs's validation reads the whole offsets buffer as offsets (it panics otherwise).
    if offsets.len() < n.checked_add(1)?.checked_mul(width)?
        || offsets.len() % width != 0
        || offsets.as_ptr().align_offset(std::mem::align_of::<T::Offset>()) != 0
    {
        return None;
    }
    let offsets = ScalarBuffer::<T::Offset>::new(offsets, 0, n + 1);
    let sound = offsets.first().is_some_and(|o| o.to_i64().is_some_and(|o| o >= 0))
        && offsets.windows(2).all(|w| w[0] <= w[1])
        && offsets.last().is_some_and(|o| o.as_usize() <= values.len());
    if !sound {
        return None;
    }
    let array = GenericByteArray::<T>::try_new(OffsetBuffer::new(offsets), values, nulls).ok()?;
    Some(Arc::new(array))
}

#[inline]
fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Flatbuffer reads for the plan, each checked for bounds and alignment (relative to the
/// flatbuffer's start, as the verifier checks them); `None` when out of bounds or misaligned.
struct Fb<'a>(&'a [u8]);

/// A checked table: its position, its vtable's and the vtable's length.
#[derive(Clone, Copy)]
struct Table {
    at: usize,
    vtable: usize,
    vtable_len: usize,
}

impl Fb<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        if at % N != 0 {
            return None;
        }
        self.0.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    #[inline(always)]
    fn i64_at(&self, at: usize) -> Option<i64> {
        self.bytes::<8>(at).map(i64::from_le_bytes)
    }

    /// The position a uoffset at `at` points to.
    #[inline(always)]
    fn target(&self, at: usize) -> Option<usize> {
        let t = at.checked_add(u32::from_le_bytes(self.bytes::<4>(at)?) as usize)?;
        (t < self.0.len()).then_some(t)
    }

    /// The table at `at`, if its soffset and vtable lie inside the flatbuffer.
    #[inline(always)]
    fn table(&self, at: usize) -> Option<Table> {
        let soffset = i32::from_le_bytes(self.bytes::<4>(at)?);
        let vtable = usize::try_from(at as i64 - soffset as i64).ok()?;
        let vtable_len = u16::from_le_bytes(self.bytes::<2>(vtable)?) as usize;
        if vtable_len < 4 || vtable_len % 2 != 0 || vtable + vtable_len > self.0.len() {
            return None;
        }
        Some(Table { at, vtable, vtable_len })
    }

    /// The position of field `i` (of `size` bytes, aligned to them) of a checked table:
    /// `Some(None)` when absent, `None` when out of bounds or misaligned.
    #[inline(always)]
    fn field(&self, t: Table, i: usize, size: usize) -> Option<Option<usize>> {
        let slot = 4 + 2 * i;
        if slot >= t.vtable_len {
            return Some(None);
        }
        let offset = u16::from_le_bytes(self.bytes::<2>(t.vtable + slot)?) as usize;
        if offset == 0 {
            return Some(None);
        }
        let at = t.at + offset;
        (at % size == 0 && at + size <= self.0.len()).then_some(Some(at))
    }

    #[inline(always)]
    fn u8_field(&self, t: Table, i: usize) -> Option<Option<u8>> {
        Some(self.field(t, i, 1)?.map(|at| self.0[at]))
    }

    #[inline(always)]
    fn i16_field(&self, t: Table, i: usize) -> Option<Option<i16>> {
        self.field(t, i, 2)?.map(|at| self.bytes::<2>(at).map(i16::from_le_bytes)).map_or(Some(None), |v| v.map(Some))
    }

    #[inline(always)]
    fn i64_field(&self, t: Table, i: usize) -> Option<Option<i64>> {
        self.field(t, i, 8)?.map(|at| self.i64_at(at)).map_or(Some(None), |v| v.map(Some))
    }

    /// The first element of the vector of `count` 16-byte, 8-aligned structs that the uoffset
    /// field at `at` points to; `None` unless it has exactly that many and they fit.
    #[inline(always)]
    fn structs(&self, at: Option<usize>, count: usize) -> Option<usize> {
        let Some(at) = at else { return (count == 0).then_some(0) };
        let v = self.target(at)?;
        let start = v + 4;
        if u32::from_le_bytes(self.bytes::<4>(v)?) as usize != count || start % 8 != 0 || 16 * count > self.0.len().saturating_sub(start) {
            return None;
        }
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray};
    use arrow_buffer::{Buffer, MutableBuffer};
    use arrow_schema::{DataType, Field, Schema, SchemaRef};

    use super::DecodePlan;
    use crate::ipc::{self, walk_messages, Limits, WalkMode};
    use crate::stream::encoder::BatchEncoder;
    use crate::stream::open::MessageDecoder;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("f", DataType::Float64, false),
            Field::new("b", DataType::Boolean, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("l", DataType::LargeBinary, false),
            Field::new("t", DataType::Int64, false),
        ]))
    }

    fn batch(rows: usize) -> RecordBatch {
        let n = rows as i32;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter((0..n).map(|i| (i % 3 != 1).then_some(i)))),
            Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 / 2.0))),
            Arc::new(BooleanArray::from_iter((0..n).map(|i| (i % 5 != 0).then_some(i % 2 == 0)))),
            Arc::new(StringArray::from_iter((0..n).map(|i| (i % 4 != 3).then(|| "é".repeat(i as usize % 7))))),
            Arc::new(LargeBinaryArray::from_iter_values((0..n).map(|i| vec![i as u8; i as usize % 5]))),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i as i64 * 1000))),
        ];
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    /// The encoder's message for `b` in a 64-byte aligned buffer (as in the ring).
    fn encode(encoder: &mut BatchEncoder, b: &RecordBatch) -> Option<Buffer> {
        let len = encoder.measure(b)?;
        let mut out = MutableBuffer::from_len_zeroed(len);
        encoder.write(out.as_slice_mut());
        Some(out.into())
    }

    /// What the consumer's generic path makes of a record (the walk, then arrow-rs's reader).
    fn generic(bytes: &Buffer) -> crate::error::Result<RecordBatch> {
        let prologue: Vec<u8> = ipc::encode_stream(&schema(), &[]).unwrap().iter().flat_map(|b| b.as_slice().to_vec()).collect();
        let prologue = Buffer::from_vec(prologue);
        let mut layout = None;
        let mut decoder = MessageDecoder::new();
        for s in walk_messages(prologue.as_slice(), WalkMode::Prologue, &Limits::default(), &mut layout).unwrap() {
            decoder.decode(&prologue, &s).unwrap();
        }
        let mut batch = None;
        for s in walk_messages(bytes.as_slice(), WalkMode::Record, &Limits::default(), &mut layout)? {
            batch = decoder.decode(bytes, &s)?;
        }
        Ok(batch.expect("a record batch"))
    }

    #[test]
    fn the_plan_reads_what_the_encoder_writes_as_the_generic_path_does() {
        let mut encoder = BatchEncoder::for_schema(&schema()).expect("a flat schema");
        let mut plan = DecodePlan::for_schema(&schema(), &Limits::default()).expect("a plan");
        for rows in [0, 1, 7, 64, 1000] {
            let b = batch(rows);
            let bytes = encode(&mut encoder, &b).unwrap();
            assert_eq!(plan.decode(&bytes).expect("the plan takes it"), b, "{rows} rows");
            assert_eq!(generic(&bytes).unwrap(), b, "{rows} rows, generic");
        }
        // Sliced: the template writes fixed-width columns sliced at a byte boundary; offsets
        // that do not start at 0 or bitmaps at a bit offset are arrow-rs's to rewrite.
        let b = batch(100);
        assert!(encoder.measure(&b.slice(8, 50)).is_none(), "string offsets from 8");
        let fixed = b.project(&[0, 1, 2, 5]).unwrap();
        let mut fixed_encoder = BatchEncoder::for_schema(&fixed.schema()).unwrap();
        let mut fixed_plan = DecodePlan::for_schema(&fixed.schema(), &Limits::default()).unwrap();
        let bytes = encode(&mut fixed_encoder, &fixed.slice(8, 50)).unwrap();
        assert_eq!(fixed_plan.decode(&bytes).unwrap(), fixed.slice(8, 50));
        assert!(fixed_encoder.measure(&fixed.slice(3, 50)).is_none(), "a bitmap at bit 3");
        // arrow-rs's own writer's records are read by the plan too.
        let flat = |parts: Vec<Buffer>| parts.iter().flat_map(|p| p.as_slice().to_vec()).collect::<Vec<u8>>();
        let schema_len = flat(ipc::encode_stream(&schema(), &[]).unwrap()).len() - ipc::EOS.len();
        let stream = flat(ipc::encode_stream(&schema(), std::slice::from_ref(&b)).unwrap());
        let record = stream[schema_len..stream.len() - ipc::EOS.len()].to_vec();
        assert_eq!(plan.decode(&Buffer::from_vec(record)).expect("arrow-rs's record"), b);
        // Nested and dictionary schemas have no plan (nor template).
        let nested = Schema::new(vec![Field::new("l", DataType::List(Arc::new(Field::new("x", DataType::Int32, true))), true)]);
        assert!(BatchEncoder::for_schema(&nested).is_none());
        assert!(DecodePlan::for_schema(&Arc::new(nested), &Limits::default()).is_none());
    }

    #[test]
    fn the_plan_never_accepts_what_the_generic_path_refuses() {
        // Random byte and word changes to a record: whatever the plan returns, the generic path
        // returns too (the plan only says "not mine" otherwise).
        for (rows, seed) in [(9, 0x2545_F491_4F6C_DD1Du64), (1, 0x9E37_79B9_7F4A_7C15), (40, 0xD1B5_4A32_D192_ED03)] {
            fuzz_plan(rows, seed);
        }
    }

    fn fuzz_plan(rows: usize, mut seed: u64) {
        let mut encoder = BatchEncoder::for_schema(&schema()).unwrap();
        let mut plan = DecodePlan::for_schema(&schema(), &Limits::default()).unwrap();
        let original = encode(&mut encoder, &batch(rows)).unwrap().as_slice().to_vec();
        let body_start = 8 + u32::from_le_bytes(original[4..8].try_into().unwrap()) as usize;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut taken, mut refused) = (0, 0);
        for round in 0..20_000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 3 {
                // Mostly the flatbuffer (where the plan's checks are), sometimes the body.
                let limit = if round % 4 == 0 { bytes.len() } else { body_start };
                let at = (next() % limit as u64) as usize;
                match next() % 4 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    2 => bytes[at] = [0, 0xFF, 0x7F, 0x80][(next() % 4) as usize],
                    _ => {
                        let at = at & !7;
                        let v = [0i64, -1, 1, i64::MAX, i32::MAX as i64, 1 << 32][(next() % 6) as usize];
                        if at + 8 <= bytes.len() {
                            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
            let mut aligned = MutableBuffer::from_len_zeroed(bytes.len());
            aligned.as_slice_mut().copy_from_slice(&bytes);
            let bytes: Buffer = aligned.into();
            match plan.decode(&bytes) {
                Some(b) => {
                    taken += 1;
                    assert_eq!(generic(&bytes).unwrap_or_else(|e| panic!("{rows} rows, round {round}: the plan took what the walk refuses: {e:?}")), b);
                }
                None => refused += 1,
            }
        }
        assert!(taken > 100 && refused > 100, "taken {taken}, refused {refused}");
    }
}
