//! What `recv` and `sub` write and print: `--out` files that appear only when complete, and
//! the `--print` summaries.

use std::io::Write;
use std::path::{Path, PathBuf};

use arrow_array::Array;
use arrow_schema::{DataType, Schema};

use crate::channel::ReceivedTable;
use crate::error::{Error, ErrorCode, Result};
use crate::frame::KeyValues;

/// A file written under a temporary name in its final directory (created with `O_EXCL`: never
/// an existing file or a symlink) and renamed over its path once complete; removed if dropped
/// before [`PendingFile::commit`], so `--out` never holds a partial table.
pub(super) struct PendingFile {
    file: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PendingFile {
    pub(super) fn create(path: &Path) -> Result<PendingFile> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::from_io("open", &e).with_context(&tmp))?;
        Ok(PendingFile { file: std::io::BufWriter::new(file), tmp, path: path.to_path_buf(), committed: false })
    }

    pub(super) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).map_err(|e| Error::from_io("write", &e))
    }

    pub(super) fn commit(mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::from_io("write", &e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::from_io("rename", &e).with_context(&self.path))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Checks that `--out FILE` can be written (its directory exists and takes a new file, and FILE
/// is not a directory) before anything is accepted.
pub(super) fn check_out_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::new(ErrorCode::InvalidArgument, format!("--out {} is a directory", path.display())));
    }
    PendingFile::create(path).map(drop)
}

pub(super) struct Output {
    out: Option<PathBuf>,
    as_dir: bool,
}

impl Output {
    /// Checks `--out` before anything is accepted: a directory (made if needed) for several
    /// tables or an existing directory, else a file that can be written.
    pub(super) fn new(out: Option<&str>, count: u64) -> Result<Output> {
        let Some(out) = out else { return Ok(Output { out: None, as_dir: false }) };
        let path = PathBuf::from(out);
        let as_dir = count > 1 || path.is_dir();
        if as_dir {
            std::fs::create_dir_all(&path).map_err(|e| Error::from_io("mkdir", &e).with_context(&path))?;
            PendingFile::create(&path.join("000000.arrows")).map(drop)?;
        } else {
            check_out_file(&path)?;
        }
        Ok(Output { out: Some(path), as_dir })
    }

    pub(super) fn write(&self, m: &ReceivedTable, index: u64) -> Result<()> {
        let Some(out) = &self.out else { return Ok(()) };
        let path = if self.as_dir { out.join(format!("{index:06}.arrows")) } else { out.clone() };
        let mut f = PendingFile::create(&path)?;
        f.write_all(m.ipc_bytes())?;
        f.commit()
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Binary values as a hex string (first 32 bytes).
fn hex(b: &[u8]) -> String {
    let shown: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
    let more = if b.len() > 32 { format!("... ({} bytes)", b.len()) } else { String::new() };
    json_str(&format!("0x{shown}{more}"))
}

/// One value for the summary (primitives, strings, booleans; other types in arrow-rs's Debug
/// form squeezed onto one line).
fn format_value(arr: &dyn Array, i: usize) -> String {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    if arr.is_null(i) {
        return "null".into();
    }
    macro_rules! prim {
        ($t:ty) => {
            arr.as_primitive::<$t>().value(i).to_string()
        };
    }
    match arr.data_type() {
        DataType::Boolean => arr.as_boolean().value(i).to_string(),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::Utf8 => json_str(arr.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => json_str(arr.as_string::<i64>().value(i)),
        DataType::Utf8View => json_str(arr.as_string_view().value(i)),
        DataType::Binary => hex(arr.as_binary::<i32>().value(i)),
        DataType::LargeBinary => hex(arr.as_binary::<i64>().value(i)),
        DataType::FixedSizeBinary(_) => hex(arr.as_fixed_size_binary().value(i)),
        _ => {
            let dbg = format!("{:?}", arr.slice(i, 1));
            let body = dbg.split_once('\n').map(|(_, b)| b).unwrap_or(&dbg);
            let squeezed: Vec<&str> = body.split_whitespace().collect();
            let s = squeezed.join(" ");
            let s = s.trim_start_matches('[').trim_end_matches(']').trim().trim_end_matches(',');
            json_str(s)
        }
    }
}

/// Prints the `--print` summary; returns the decode error, if any.
pub(super) fn print_summary(m: &ReceivedTable, index: u64) -> Option<Error> {
    let mut lines = vec![format!("== table {index}: {} bytes of Arrow IPC ==", m.ipc_length())];
    lines.extend(metadata_line(&m.metadata));
    let mut error = None;
    match m.decode() {
        Err(e) => error = Some(e),
        Ok(t) => {
            lines.push(schema_line(&t.schema));
            lines.push(format!("rows: {}, columns: {}, batches: {}", t.num_rows(), t.schema.fields().len(), t.batches.len()));
            if t.realigned {
                lines.push("note: some buffers were not aligned for their type and were copied (realigned)".into());
            }
            if t.num_rows() > 0 {
                lines.push("first rows:".into());
                let mut left = 5usize;
                'outer: for b in &t.batches {
                    for r in 0..b.num_rows() {
                        if left == 0 {
                            break 'outer;
                        }
                        left -= 1;
                        let cells: Vec<String> = b
                            .schema()
                            .fields()
                            .iter()
                            .zip(b.columns())
                            .map(|(f, c)| format!("{}: {}", json_str(f.name()), format_value(c.as_ref(), r)))
                            .collect();
                        lines.push(format!("  {{{}}}", cells.join(", ")));
                    }
                }
            }
        }
    }
    print_lines(&lines);
    error
}

/// `metadata: k=v, ...` when there is any.
pub(super) fn metadata_line(kv: &KeyValues) -> Option<String> {
    let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (!pairs.is_empty()).then(|| format!("metadata: {}", pairs.join(", ")))
}

pub(super) fn schema_line(schema: &Schema) -> String {
    let fields: Vec<String> = schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
    format!("schema: {}", fields.join(", "))
}

pub(super) fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", lines.join("\n"));
    let _ = out.flush();
}
