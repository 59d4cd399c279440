//! The symbol engine: answers a REQUEST symbol table with per-file_id and per-kind summaries,
//! reading the request's columns in place.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{err, Error, ErrorCode, Result};
use crate::ipc::Table;

/// The request schema (names and types, in order).
pub fn request_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("fqn", DataType::Utf8, true),
        Field::new("kind", DataType::UInt8, true),
        Field::new("file_id", DataType::UInt16, true),
        Field::new("start_line", DataType::UInt32, true),
        Field::new("start_col", DataType::UInt16, true),
        Field::new("end_line", DataType::UInt32, true),
        Field::new("end_col", DataType::UInt16, true),
    ]))
}

/// The response schema (fields nullable, as agreed with the Python client's schema; there are
/// never nulls).
pub fn response_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("group", DataType::Utf8, true),
        Field::new("key", DataType::UInt32, true),
        Field::new("count", DataType::UInt64, true),
        Field::new("min_start_line", DataType::UInt32, true),
        Field::new("max_end_line", DataType::UInt32, true),
    ]))
}

/// One summary row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The `file_id` or `kind` this row summarizes.
    pub key: u32,
    /// Rows with that key.
    pub count: u64,
    /// Smallest `start_line` among them.
    pub min_start_line: u32,
    /// Largest `end_line` among them.
    pub max_end_line: u32,
}

#[derive(Clone, Copy)]
struct Acc {
    count: u64,
    min: u32,
    max: u32,
}

const EMPTY: Acc = Acc { count: 0, min: u32::MAX, max: 0 };

fn check_schema(schema: &Schema) -> Result<()> {
    let want = request_schema();
    let ok = schema.fields().len() == want.fields().len()
        && schema.fields().iter().zip(want.fields().iter()).all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if !ok {
        let got: Vec<String> = schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
        return err(
            ErrorCode::InvalidArgument,
            format!(
                "expected a symbol table (id utf8, fqn utf8, kind uint8, file_id uint16, start_line uint32, start_col uint16, end_line uint32, end_col uint16), got ({})",
                got.join(", ")
            ),
        );
    }
    Ok(())
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    let c = batch.column_by_name(name).ok_or_else(|| Error::new(ErrorCode::InvalidArgument, format!("missing column {name}")))?;
    if c.null_count() > 0 {
        return err(ErrorCode::InvalidArgument, format!("column {name} has nulls"));
    }
    c.as_any().downcast_ref::<T>().ok_or_else(|| Error::new(ErrorCode::InvalidArgument, format!("column {name} has the wrong type")))
}

/// Computes (per file_id ascending, per kind ascending) summaries over the table's batches.
pub fn summarize(table: &Table) -> Result<(Vec<Summary>, Vec<Summary>)> {
    check_schema(&table.schema)?;
    let mut files = vec![EMPTY; 1 << 16];
    let mut kinds = vec![EMPTY; 1 << 8];
    for batch in &table.batches {
        let kind = col::<UInt8Array>(batch, "kind")?.values();
        let file = col::<UInt16Array>(batch, "file_id")?.values();
        let start = col::<UInt32Array>(batch, "start_line")?.values();
        let end = col::<UInt32Array>(batch, "end_line")?.values();
        for i in 0..batch.num_rows() {
            let (s, e) = (start[i], end[i]);
            for acc in [&mut files[file[i] as usize], &mut kinds[kind[i] as usize]] {
                acc.count += 1;
                acc.min = acc.min.min(s);
                acc.max = acc.max.max(e);
            }
        }
    }
    let rows = |accs: &[Acc]| -> Vec<Summary> {
        accs.iter()
            .enumerate()
            .filter(|(_, a)| a.count > 0)
            .map(|(k, a)| Summary { key: k as u32, count: a.count, min_start_line: a.min, max_end_line: a.max })
            .collect()
    };
    Ok((rows(&files), rows(&kinds)))
}

/// Builds the response batch from the summaries.
pub fn response_batch(files: &[Summary], kinds: &[Summary]) -> Result<RecordBatch> {
    let all: Vec<(&str, &Summary)> = files.iter().map(|s| ("file_id", s)).chain(kinds.iter().map(|s| ("kind", s))).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(all.iter().map(|(g, _)| *g))),
        Arc::new(UInt32Array::from_iter_values(all.iter().map(|(_, s)| s.key))),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|(_, s)| s.count))),
        Arc::new(UInt32Array::from_iter_values(all.iter().map(|(_, s)| s.min_start_line))),
        Arc::new(UInt32Array::from_iter_values(all.iter().map(|(_, s)| s.max_end_line))),
    ];
    RecordBatch::try_new(response_schema(), columns).map_err(|e| Error::new(ErrorCode::InvalidArgument, e.to_string()))
}

/// The whole engine computation: request table → response batch.
pub fn answer(table: &Table) -> Result<RecordBatch> {
    let (files, kinds) = summarize(table)?;
    response_batch(&files, &kinds)
}
