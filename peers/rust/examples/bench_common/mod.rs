//! What the benchmark's Rust sender and receiver share (bench contract, session 7): flags, the
//! clock, CPU time, the per-stage hook of `--breakdown`, the JSON lines, the symbol rows and the
//! checksum every receiver prints with `--read` (the one of bench/methods.ts).
#![allow(dead_code)] // each example uses a part

use std::io::Write;
use std::sync::Mutex;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_shm::trace::{self, HandoffEvent};
use serde::{Deserialize, Serialize};

/// `--flag VALUE` (required) and `--flag` (present or not).
pub struct Args(Vec<String>);

impl Args {
    pub fn parse() -> Args {
        Args(std::env::args().collect())
    }
    pub fn value(&self, flag: &str) -> String {
        let at = self.0.iter().position(|a| a == flag);
        at.and_then(|i| self.0.get(i + 1)).unwrap_or_else(|| panic!("{flag} is required")).clone()
    }
    pub fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }
}

pub fn now_ms() -> f64 {
    trace::monotonic_ms()
}

/// The process's CPU time so far (user + system, every thread), in ms.
pub fn cpu_ms() -> f64 {
    // SAFETY: getrusage into a zeroed local.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

static STAGES: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

fn record(event: &HandoffEvent) {
    STAGES.lock().unwrap().push((event.stage.as_str(), event.at_ms));
}

/// `--breakdown`: from now on the library's hand-off stages are recorded for [`Line::stages`].
pub fn record_stages() {
    trace::set_handoff_hook(Some(record));
}

/// The stages recorded since the last call.
pub fn take_stages() -> Vec<(&'static str, f64)> {
    std::mem::take(&mut *STAGES.lock().unwrap())
}

/// One JSON line of the contract: `{"t0"|"t1": ms, "checksum"?, "cpu_ms", "stages"?}`.
pub struct Line {
    pub key: &'static str,
    pub at: f64,
    pub checksum: Option<u32>,
    pub stages: Option<Vec<(&'static str, f64)>>,
}

impl Line {
    pub fn print(self) {
        let mut text = format!("{{\"{}\": {}", self.key, self.at);
        if let Some(c) = self.checksum {
            text += &format!(", \"checksum\": {c}");
        }
        if let Some(stages) = self.stages {
            let list: Vec<String> = stages.iter().map(|(name, at)| format!("[\"{name}\", {at}]")).collect();
            text += &format!(", \"stages\": [{}]", list.join(", "));
        }
        text += &format!(", \"cpu_ms\": {}}}", cpu_ms()); // read last, just before printing
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").unwrap();
        out.flush().unwrap();
    }
}

/// One row of the symbol table, as the JSON methods send it.
#[derive(Serialize, Deserialize)]
pub struct SymbolRow {
    pub id: String,
    pub fqn: String,
    pub kind: u8,
    pub file_id: u16,
    pub start_line: u32,
    pub start_col: u16,
    pub end_line: u32,
    pub end_col: u16,
}

const NUMBER_COLUMNS: [&str; 6] = ["kind", "file_id", "start_line", "start_col", "end_line", "end_col"];
const STRING_COLUMNS: [&str; 2] = ["id", "fqn"];

/// bench/methods.ts's checksum (FNV-style over every value of every column, in column order).
struct Checksum(u32);

impl Checksum {
    fn new() -> Checksum {
        Checksum(0x811c_9dc5)
    }
    fn mix(&mut self, x: u32) {
        self.0 = (self.0 ^ x).wrapping_mul(0x0100_0193);
    }
}

fn primitive_values<T: ArrowPrimitiveType>(column: &dyn Array) -> impl Iterator<Item = u32> + '_
where
    T::Native: Into<u32>,
{
    column.as_primitive::<T>().values().iter().map(|&v| v.into())
}

/// The checksum of a table (checksumSymbolTable): per batch, the integer columns, then each
/// string column's lengths and bytes.
pub fn checksum_batches(batches: &[RecordBatch]) -> u32 {
    let mut h = Checksum::new();
    for batch in batches {
        for name in NUMBER_COLUMNS {
            let column = batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
            let values: Box<dyn Iterator<Item = u32>> = match column.data_type() {
                arrow_schema::DataType::UInt8 => Box::new(primitive_values::<UInt8Type>(column)),
                arrow_schema::DataType::UInt16 => Box::new(primitive_values::<UInt16Type>(column)),
                arrow_schema::DataType::UInt32 => Box::new(primitive_values::<UInt32Type>(column)),
                other => panic!("column {name} has type {other}"),
            };
            values.for_each(|v| h.mix(v));
        }
        for name in STRING_COLUMNS {
            let strings = batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).as_string::<i32>();
            let offsets = strings.value_offsets();
            offsets.windows(2).for_each(|w| h.mix((w[1] - w[0]) as u32));
            let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
            strings.value_data()[first..last].iter().for_each(|&b| h.mix(b as u32));
        }
    }
    h.0
}

/// The checksum of the same table as rows (checksumRows; ASCII strings).
pub fn checksum_rows(rows: &[SymbolRow]) -> u32 {
    let mut h = Checksum::new();
    let numbers: [fn(&SymbolRow) -> u32; 6] = [
        |r| r.kind.into(),
        |r| r.file_id.into(),
        |r| r.start_line,
        |r| r.start_col.into(),
        |r| r.end_line,
        |r| r.end_col.into(),
    ];
    for get in numbers {
        rows.iter().for_each(|r| h.mix(get(r)));
    }
    let strings: [fn(&SymbolRow) -> &str; 2] = [|r| &r.id, |r| &r.fqn];
    for get in strings {
        rows.iter().for_each(|r| h.mix(get(r).len() as u32));
        rows.iter().for_each(|r| get(r).bytes().for_each(|b| h.mix(b as u32)));
    }
    h.0
}

/// The rows of a symbol table (before any clock starts).
pub fn symbol_rows(batches: &[RecordBatch]) -> Vec<SymbolRow> {
    let mut rows = Vec::new();
    for b in batches {
        let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (id, fqn) = (s("id"), s("fqn"));
        let u8s = |name: &str| b.column_by_name(name).unwrap().as_primitive::<UInt8Type>().clone();
        let u16s = |name: &str| b.column_by_name(name).unwrap().as_primitive::<UInt16Type>().clone();
        let u32s = |name: &str| b.column_by_name(name).unwrap().as_primitive::<UInt32Type>().clone();
        let (kind, file_id, start_line, start_col, end_line, end_col) =
            (u8s("kind"), u16s("file_id"), u32s("start_line"), u16s("start_col"), u32s("end_line"), u16s("end_col"));
        for i in 0..b.num_rows() {
            rows.push(SymbolRow {
                id: id.value(i).to_string(),
                fqn: fqn.value(i).to_string(),
                kind: kind.value(i),
                file_id: file_id.value(i),
                start_line: start_line.value(i),
                start_col: start_col.value(i),
                end_line: end_line.value(i),
                end_col: end_col.value(i),
            });
        }
    }
    rows
}
