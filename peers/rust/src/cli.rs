//! `arrow-shm-rs send|recv|engine` — the command line of docs/CLI.md.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef};

use crate::channel::{self, Channel, Listener, Message, Options};
use crate::engine;
use crate::error::{Error, ErrorCode, Result};
use crate::frame::KeyValues;
use crate::ipc;
use crate::seed::{self, SeedListener, DEFAULT_SEED_SOCKET};
use crate::segment::{WritableSegment, DEFAULT_MAX_MESSAGE_BYTES};

pub const PROG: &str = "arrow-shm";

/// Why the command failed: bad usage (exit 2) or an arrow-shm error (exit 1).
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Failed(Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Failed(e)
    }
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

type CliResult<T> = std::result::Result<T, CliError>;

fn usage<T>(msg: impl Into<String>) -> CliResult<T> {
    Err(CliError::Usage(msg.into()))
}

const USAGE: &str = "usage: arrow-shm-rs send --socket ADDR [--listen] [--seed-compat] [--meta KEY=VALUE]... [--timeout-ms N] FILE... | recv --socket ADDR [--connect] [--count N] [--out PATH] [--print] [--seed-compat] [--allow-unsealed] [--timeout-ms N] | engine --socket ADDR [--count N] [--timeout-ms N]";

#[derive(Default)]
struct Args {
    socket: Option<String>,
    listen: bool,
    connect: bool,
    seed_compat: bool,
    allow_unsealed: bool,
    print: bool,
    meta: KeyValues,
    timeout_ms: Option<u64>,
    count: Option<u64>,
    out: Option<String>,
    files: Vec<String>,
}

fn parse_num(v: std::ffi::OsString, flag: &str, min: u64) -> CliResult<u64> {
    let s = v.to_string_lossy().to_string();
    match s.parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => usage(format!("{flag} expects an integer >= {min}, got {s:?}")),
    }
}

fn parse_args(cmd: &str, mut p: lexopt::Parser) -> CliResult<Args> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    let (send, recv, eng) = (cmd == "send", cmd == "recv", cmd == "engine");
    while let Some(arg) = p.next()? {
        match arg {
            Long("socket") => a.socket = Some(p.value()?.string()?),
            Long("timeout-ms") => a.timeout_ms = Some(parse_num(p.value()?, "--timeout-ms", 0)?),
            Long("listen") if send => a.listen = true,
            Long("seed-compat") if send || recv => a.seed_compat = true,
            Long("meta") if send => {
                let v = p.value()?.string()?;
                match v.split_once('=') {
                    Some((k, val)) if !k.is_empty() => {
                        if let Some(e) = a.meta.iter_mut().find(|(k2, _)| k2 == k) {
                            e.1 = val.to_string();
                        } else {
                            a.meta.push((k.to_string(), val.to_string()));
                        }
                    }
                    _ => return usage(format!("--meta expects KEY=VALUE, got {v:?}")),
                }
            }
            Long("connect") if recv => a.connect = true,
            Long("count") if recv || eng => a.count = Some(parse_num(p.value()?, "--count", 1)?),
            Long("out") if recv => a.out = Some(p.value()?.string()?),
            Long("print") if recv => a.print = true,
            Long("allow-unsealed") if recv => a.allow_unsealed = true,
            Value(v) if send => a.files.push(v.string()?),
            Short('h') | Long("help") => return usage(USAGE),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(a)
}

fn timeout(a: &Args) -> Option<Duration> {
    a.timeout_ms.map(Duration::from_millis)
}

fn listening(addr: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{PROG}: listening on {addr}");
    let _ = e.flush();
}

/// Runs the CLI; returns the exit status. Never panics on bad input.
pub fn run(args: Vec<std::ffi::OsString>) -> i32 {
    match run_inner(args) {
        Ok(status) => status,
        Err(CliError::Usage(m)) => {
            eprintln!("{PROG}: {}", m.replace('\n', " "));
            2
        }
        Err(CliError::Failed(e)) => {
            eprintln!("{PROG}: {}: {}", e.code.as_str(), e.message.replace('\n', " "));
            1
        }
    }
}

fn run_inner(args: Vec<std::ffi::OsString>) -> CliResult<i32> {
    use lexopt::ValueExt;
    let mut p = lexopt::Parser::from_args(args);
    let cmd = match p.next()? {
        Some(lexopt::Arg::Value(v)) => v.string()?,
        Some(lexopt::Arg::Long("help")) | Some(lexopt::Arg::Short('h')) | None => return usage(USAGE),
        Some(other) => return Err(other.unexpected().into()),
    };
    match cmd.as_str() {
        "send" => cmd_send(parse_args("send", p)?),
        "recv" => cmd_recv(parse_args("recv", p)?),
        "engine" => cmd_engine(parse_args("engine", p)?),
        other => usage(format!("unknown command {other:?}; {USAGE}")),
    }
}

enum Payload {
    Stream(Vec<u8>),
    Batches(SchemaRef, Vec<RecordBatch>),
}

fn load(path: &str) -> Result<Payload> {
    let data = if path == "-" {
        let mut v = Vec::new();
        std::io::stdin().lock().read_to_end(&mut v).map_err(|e| Error::from_io("read", &e))?;
        v
    } else {
        std::fs::read(path).map_err(|e| Error::from_io("read", &e))?
    };
    let what = if path == "-" { "standard input" } else { path };
    if data.is_empty() {
        return Err(Error::new(ErrorCode::InvalidArgument, format!("{what} is empty")));
    }
    if ipc::is_ipc_file(&data) {
        let (schema, batches) = ipc::read_ipc_file(&data).map_err(|e| Error::new(e.code, format!("{what}: {}", e.message)))?;
        return Ok(Payload::Batches(schema, batches));
    }
    Ok(Payload::Stream(data)) // a stream: sent byte for byte
}

fn segment_for(p: &Payload, min_size: usize) -> Result<(WritableSegment, usize)> {
    match p {
        Payload::Stream(bytes) => ipc::write_bytes_segment(bytes, min_size),
        Payload::Batches(schema, batches) => ipc::write_batches_segment(schema, batches, min_size),
    }
}

fn cmd_send(a: Args) -> CliResult<i32> {
    if a.files.is_empty() {
        return usage("send needs at least one FILE");
    }
    for f in &a.files {
        if f != "-" && !Path::new(f).is_file() {
            return usage(format!("no such file: {f}"));
        }
    }
    let payloads = a.files.iter().map(|f| load(f)).collect::<Result<Vec<_>>>()?;
    let t = timeout(&a);
    if a.seed_compat {
        let addr = a.socket.clone().unwrap_or_else(|| DEFAULT_SEED_SOCKET.to_string());
        let lst = SeedListener::bind(&addr)?;
        listening(&addr);
        for p in &payloads {
            let len = match p {
                Payload::Stream(b) => b.len(),
                Payload::Batches(..) => 0,
            };
            let (seg, _) = segment_for(p, seed::seed_segment_size(len))?;
            lst.send(seg, t)?;
        }
        return Ok(0);
    }
    let Some(addr) = a.socket.clone() else { return usage("send needs --socket ADDR") };
    let opts = Options { timeout: t, ..Options::default() };
    let mut ch = if a.listen {
        let lst = Listener::bind(&addr, opts)?;
        listening(&addr);
        lst.accept(t)?
    } else {
        channel::connect(&addr, opts)?
    };
    for p in &payloads {
        let (seg, len) = segment_for(p, 0)?;
        let id = ch.send_segment(seg, len, &a.meta, 0, 0)?;
        ch.wait_ack(id, t)?;
    }
    ch.close();
    Ok(0)
}

struct Output {
    out: Option<PathBuf>,
    as_dir: bool,
}

impl Output {
    fn new(out: Option<&str>, count: u64) -> Result<Output> {
        let Some(out) = out else { return Ok(Output { out: None, as_dir: false }) };
        let path = PathBuf::from(out);
        let as_dir = count > 1 || path.is_dir();
        if as_dir {
            std::fs::create_dir_all(&path).map_err(|e| Error::from_io("mkdir", &e))?;
        }
        Ok(Output { out: Some(path), as_dir })
    }

    fn write(&self, m: &Message, index: u64) -> Result<()> {
        let Some(out) = &self.out else { return Ok(()) };
        let path = if self.as_dir { out.join(format!("{index:06}.arrows")) } else { out.clone() };
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, m.ipc_bytes()).map_err(|e| Error::from_io("write", &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::from_io("rename", &e))?;
        Ok(())
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
fn print_summary(m: &Message, index: u64) -> Option<Error> {
    let mut lines = vec![format!("== table {index}: {} bytes of Arrow IPC ==", m.ipc_length())];
    if !m.metadata.is_empty() {
        let kv: Vec<String> = m.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(format!("metadata: {}", kv.join(", ")));
    }
    let mut error = None;
    match m.decode() {
        Err(e) => error = Some(e),
        Ok(t) => {
            let fields: Vec<String> = t.schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
            lines.push(format!("schema: {}", fields.join(", ")));
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
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", lines.join("\n"));
    let _ = out.flush();
    error
}

fn cmd_recv(a: Args) -> CliResult<i32> {
    if a.socket.is_none() && !a.seed_compat {
        return usage("recv needs --socket ADDR");
    }
    let count = a.count.unwrap_or(1);
    let output = Output::new(a.out.as_deref(), count)?;
    let t = timeout(&a);
    let mut status = 0;
    let mut handle = |m: Message, index: u64| -> Result<()> {
        output.write(&m, index)?;
        if a.print {
            if let Some(e) = print_summary(&m, index) {
                eprintln!("{PROG}: {}: {}", e.code.as_str(), e.message);
                if e.code != ErrorCode::IpcUnsupported {
                    status = 1;
                }
            }
        }
        Ok(())
    };
    if a.seed_compat {
        let addr = a.socket.clone().unwrap_or_else(|| DEFAULT_SEED_SOCKET.to_string());
        for i in 0..count {
            handle(seed::seed_receive(&addr, t, DEFAULT_MAX_MESSAGE_BYTES)?, i)?;
        }
        return Ok(status);
    }
    let addr = a.socket.clone().unwrap();
    let opts = Options { allow_unsealed: a.allow_unsealed, timeout: t, ..Options::default() };
    let mut received = 0u64;
    let mut drain = |ch: &mut Channel, received: &mut u64| -> Result<()> {
        while *received < count {
            let m = match ch.receive(t) {
                Ok(m) => m,
                Err(e) if e.code == ErrorCode::PeerClosed => return Ok(()),
                Err(e) => return Err(e),
            };
            handle(m, *received)?;
            *received += 1;
        }
        Ok(())
    };
    if a.connect {
        let mut ch = channel::connect(&addr, opts)?;
        drain(&mut ch, &mut received)?;
        ch.close();
        if received < count {
            return Err(Error::new(ErrorCode::PeerClosed, format!("the peer hung up after {received} of {count} tables")).into());
        }
    } else {
        let lst = Listener::bind(&addr, opts)?;
        listening(&addr);
        while received < count {
            let mut ch = lst.accept(t)?;
            drain(&mut ch, &mut received)?;
            ch.close();
        }
    }
    Ok(status)
}

fn cmd_engine(a: Args) -> CliResult<i32> {
    let Some(addr) = a.socket.clone() else { return usage("engine needs --socket ADDR") };
    let limit = a.count;
    let lst = Listener::bind(&addr, Options::default())?;
    listening(&addr);
    let mut served = 0u64;
    let schema = engine::response_schema();
    while limit.is_none_or(|n| served < n) {
        let mut ch = match lst.accept(None) {
            Ok(ch) => ch,
            Err(e) => {
                eprintln!("{PROG}: {}: {}", e.code.as_str(), e.message);
                continue;
            }
        };
        while limit.is_none_or(|n| served < n) {
            let m = match ch.receive(None) {
                Ok(m) => m,
                Err(e) if ch.is_closed() || matches!(e.code, ErrorCode::PeerClosed | ErrorCode::Closed | ErrorCode::Syscall) => {
                    if e.code != ErrorCode::PeerClosed {
                        eprintln!("{PROG}: {}: {}", e.code.as_str(), e.message);
                    }
                    break;
                }
                Err(e) => {
                    // a message-level failure: the peer was told with an ERROR frame
                    eprintln!("{PROG}: {}: {}", e.code.as_str(), e.message);
                    continue;
                }
            };
            if !m.is_request() {
                continue;
            }
            served += 1;
            let result = m.decode().and_then(|t| engine::answer(&t));
            let sent = match result {
                Ok(batch) => ch.respond(m.message_id, &schema, &[batch], &Vec::new(), None).map(|_| ()),
                Err(e) => ch.respond_error(m.message_id, e.code, &e.message),
            };
            drop(m);
            if let Err(e) = sent {
                eprintln!("{PROG}: {}: {}", e.code.as_str(), e.message);
                break;
            }
        }
        ch.close();
    }
    Ok(0)
}

/// Shared helper for tests: the request schema as an `Arc`.
pub fn _engine_request_schema() -> Arc<arrow_schema::Schema> {
    engine::request_schema()
}
