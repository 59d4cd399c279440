//! `arrow-shm-rs send|recv|pub|sub|engine` — the command line of docs/CLI.md.

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

/// Why the command failed: bad usage (exit 2) or an arrow-shm error (exit 1); or help was
/// asked for (printed to stdout, exit 0).
#[derive(Debug)]
pub enum CliError {
    Help(String),
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

const USAGE: &str = "usage: arrow-shm-rs send --socket ADDR [--listen] [--seed-compat] [--meta KEY=VALUE]... [--timeout-ms N] [--stream [--ring-bytes N]] FILE... | recv --socket ADDR [--connect] [--count N] [--out PATH] [--print] [--seed-compat] [--allow-unsealed] [--timeout-ms N] [--stream] | pub --socket ADDR [--subscribers N] [--meta KEY=VALUE]... [--ring-bytes N] [--timeout-ms N] FILE... | sub --socket ADDR [--out FILE] [--print] [--timeout-ms N] | engine --socket ADDR [--count N] [--timeout-ms N]";

const HELP: &str = "Usage: arrow-shm-rs [options] [command]

Hand Apache Arrow tables to another process through sealed shared memory, zero-copy.

Options:
  -h, --help                 display help

Commands:
  send [options] <files...>  send each FILE (Arrow IPC stream or file, - for stdin) as one table
  recv [options]             receive tables; write them as IPC stream files and/or print a summary
  pub [options] <files...>   publish every batch of the FILEs once N subscribers have joined
  sub [options]              subscribe to a publication and write what it publishes as one IPC stream file
  engine [options]           answer symbol-table requests with per-file and per-kind summaries

Run `arrow-shm-rs COMMAND --help` for a command's options.
";

const HELP_SEND: &str = "Usage: arrow-shm-rs send [options] <files...>

send each FILE (Arrow IPC stream or file, - for stdin) as one table

Options:
  --socket <addr>     socket path, or @name for an abstract socket
  --listen            listen for the receiver instead of connecting
  --seed-compat       speak the seed proof of concept's protocol (listen, send 'F' + unsealed memfd)
  --meta <key=value>  user metadata for every message (repeatable)
  --timeout-ms <n>    give up after N ms
  --stream            send every batch of the FILEs as one stream through a shared ring
  --ring-bytes <n>    ring capacity for --stream (a power of two)
  -h, --help          display help for command
";

const HELP_RECV: &str = "Usage: arrow-shm-rs recv [options]

receive tables; write them as IPC stream files and/or print a summary

Options:
  --socket <addr>   socket path, or @name for an abstract socket
  --connect         connect to the sender instead of listening
  --count <n>       number of tables to receive (default: 1)
  --out <path>      FILE for one table, or DIR for DIR/000000.arrows, ...
  --print           print schema, rows, metadata and the first rows
  --seed-compat     speak the seed proof of concept's protocol (connect, accept an unsealed memfd)
  --allow-unsealed  accept segments without seals (unsafe with untrusted senders)
  --timeout-ms <n>  give up after N ms
  --stream          receive one stream; --out writes it as one IPC stream file
  -h, --help        display help for command
";

const HELP_PUB: &str = "Usage: arrow-shm-rs pub [options] <files...>

publish every batch of the FILEs once N subscribers have joined

Options:
  --socket <addr>     socket path, or @name for an abstract socket
  --subscribers <n>   subscribers to wait for (default: 1)
  --meta <key=value>  user metadata for the stream (repeatable)
  --ring-bytes <n>    ring capacity (a power of two)
  --timeout-ms <n>    give up after N ms
  -h, --help          display help for command
";

const HELP_SUB: &str = "Usage: arrow-shm-rs sub [options]

subscribe to a publication and write what it publishes as one IPC stream file

Options:
  --socket <addr>   socket path, or @name for an abstract socket
  --out <file>      write the stream to FILE
  --print           print schema and row counts
  --timeout-ms <n>  give up after N ms
  -h, --help        display help for command
";

const HELP_ENGINE: &str = "Usage: arrow-shm-rs engine [options]

answer symbol-table requests (flag REQUEST) with per-file_id and per-kind summaries

Options:
  --socket <addr>   socket path, or @name for an abstract socket
  --count <n>       stop after N requests (default: serve until killed)
  --timeout-ms <n>  accepted for symmetry; requests have no timeout
  -h, --help        display help for command
";

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
    stream: bool,
    ring_bytes: Option<u64>,
    subscribers: Option<u64>,
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
    let (publ, sub) = (cmd == "pub", cmd == "sub");
    while let Some(arg) = p.next()? {
        match arg {
            Long("socket") => a.socket = Some(p.value()?.string()?),
            Long("timeout-ms") => a.timeout_ms = Some(parse_num(p.value()?, "--timeout-ms", 0)?),
            Long("listen") if send => a.listen = true,
            Long("seed-compat") if send || recv => a.seed_compat = true,
            Long("meta") if send || publ => {
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
            Long("out") if recv || sub => a.out = Some(p.value()?.string()?),
            Long("print") if recv || sub => a.print = true,
            Long("allow-unsealed") if recv => a.allow_unsealed = true,
            Long("stream") if send || recv => a.stream = true,
            Long("ring-bytes") if send || publ => a.ring_bytes = Some(parse_num(p.value()?, "--ring-bytes", 1)?),
            Long("subscribers") if publ => a.subscribers = Some(parse_num(p.value()?, "--subscribers", 1)?),
            Value(v) if send || publ => a.files.push(v.string()?),
            Short('h') | Long("help") => {
                let text = match cmd {
                    "send" => HELP_SEND,
                    "recv" => HELP_RECV,
                    "pub" => HELP_PUB,
                    "sub" => HELP_SUB,
                    _ => HELP_ENGINE,
                };
                return Err(CliError::Help(text.to_string()));
            }
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
        Err(CliError::Help(text)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            0
        }
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
        Some(lexopt::Arg::Long("help")) | Some(lexopt::Arg::Short('h')) => return Err(CliError::Help(HELP.to_string())),
        None => return usage(USAGE),
        Some(other) => return Err(other.unexpected().into()),
    };
    match cmd.as_str() {
        "send" => cmd_send(parse_args("send", p)?),
        "recv" => cmd_recv(parse_args("recv", p)?),
        "pub" => stream_cli::cmd_pub(parse_args("pub", p)?),
        "sub" => stream_cli::cmd_sub(parse_args("sub", p)?),
        "help" => match p.next()? {
            Some(lexopt::Arg::Value(v)) => parse_args(&v.string()?, lexopt::Parser::from_args(["--help"])).map(|_| 0),
            _ => Err(CliError::Help(HELP.to_string())),
        },
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
    if a.stream {
        return stream_cli::cmd_send_stream(a);
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
    if a.stream {
        return stream_cli::cmd_recv_stream(a);
    }
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

/// The stream commands (docs/CLI.md, Streams): send --stream, recv --stream, pub, sub.
mod stream_cli {
    use super::*;
    use crate::ring::DEFAULT_CAPACITY;
    use crate::stream::{self, ReaderOptions, StreamReader, WriterOptions};

    /// Every batch of every FILE, in order; the FILEs must share one schema.
    fn batches_of(files: &[String]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut schema: Option<SchemaRef> = None;
        let mut batches = Vec::new();
        for f in files {
            let (s, b) = match load(f)? {
                Payload::Batches(s, b) => (s, b),
                Payload::Stream(bytes) => {
                    let t = ipc::decode_stream(&arrow_buffer::Buffer::from(bytes))
                        .map_err(|e| Error::new(e.code, format!("{f}: {}", e.message)))?;
                    (t.schema, t.batches)
                }
            };
            if let Some(first) = &schema {
                if first.fields() != s.fields() {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        format!("{f} has another schema than the files before it: one stream has one schema"),
                    ));
                }
            }
            schema.get_or_insert(s);
            batches.extend(b);
        }
        Ok((schema.expect("at least one FILE"), batches))
    }

    fn check_files(a: &Args) -> CliResult<()> {
        for f in &a.files {
            if f != "-" && !Path::new(f).is_file() {
                return usage(format!("no such file: {f}"));
            }
        }
        Ok(())
    }

    fn writer_options(a: &Args) -> WriterOptions {
        WriterOptions {
            capacity: a.ring_bytes.unwrap_or(DEFAULT_CAPACITY),
            metadata: a.meta.clone(),
            write_timeout: timeout(a),
            ..WriterOptions::default()
        }
    }

    fn open_channel(a: &Args, listen_first: bool) -> Result<Channel> {
        let addr = a.socket.clone().expect("checked");
        let opts = Options { timeout: timeout(a), ..Options::default() };
        if listen_first {
            let lst = Listener::bind(&addr, opts)?;
            listening(&addr);
            lst.accept(timeout(a))
        } else {
            channel::connect(&addr, opts)
        }
    }

    pub fn cmd_send_stream(a: Args) -> CliResult<i32> {
        if a.socket.is_none() {
            return usage("send needs --socket ADDR");
        }
        if a.seed_compat {
            return usage("--stream and --seed-compat cannot be combined");
        }
        check_files(&a)?;
        let (schema, batches) = batches_of(&a.files)?;
        let options = writer_options(&a);
        crate::ring::check_capacity(options.capacity)?;
        let ch = open_channel(&a, a.listen)?;
        let mut writer = stream::open_stream(ch, schema, options)?;
        for b in &batches {
            if let Err(e) = writer.write(b) {
                writer.abort();
                return Err(e.into());
            }
        }
        writer.finish(timeout(&a))?;
        Ok(0)
    }

    pub fn cmd_recv_stream(a: Args) -> CliResult<i32> {
        if a.socket.is_none() {
            return usage("recv needs --socket ADDR");
        }
        if a.seed_compat || a.count.is_some_and(|c| c != 1) {
            return usage("--stream receives one stream: no --seed-compat or --count");
        }
        let ch = open_channel(&a, !a.connect)?;
        let reader = StreamReader::accept(ch, reader_options(&a), timeout(&a))?;
        drain(reader, &a)?;
        Ok(0)
    }

    fn reader_options(a: &Args) -> ReaderOptions {
        ReaderOptions { read_timeout: timeout(a), ..ReaderOptions::default() }
    }

    pub fn cmd_pub(a: Args) -> CliResult<i32> {
        let Some(addr) = a.socket.clone() else { return usage("pub needs --socket ADDR") };
        if a.files.is_empty() {
            return usage("pub needs at least one FILE");
        }
        check_files(&a)?;
        let (schema, batches) = batches_of(&a.files)?;
        let options = writer_options(&a);
        crate::ring::check_capacity(options.capacity)?;
        let mut publication = stream::publish(&addr, schema, options)?;
        listening(&addr);
        publication.wait_for_subscribers(a.subscribers.unwrap_or(1) as usize, timeout(&a))?;
        for b in &batches {
            publication.write(b)?;
        }
        publication.finish(timeout(&a))?;
        Ok(0)
    }

    pub fn cmd_sub(a: Args) -> CliResult<i32> {
        let Some(addr) = a.socket.clone() else { return usage("sub needs --socket ADDR") };
        let t = timeout(&a);
        let deadline = t.map(|t| std::time::Instant::now() + t);
        let reader = loop {
            match stream::subscribe(&addr, &Vec::new(), reader_options(&a), t) {
                Ok(r) => break r,
                // The publication may not be up yet: ENOENT (no socket file) or ECONNREFUSED.
                Err(e) if matches!(e.errno, Some(libc::ENOENT) | Some(libc::ECONNREFUSED))
                    && deadline.is_none_or(|d| std::time::Instant::now() < d) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        drain(reader, &a)?;
        Ok(0)
    }

    /// Reads a whole stream; `--out` gets the prologue, every record's messages, then the
    /// end-of-stream marker: one IPC stream file.
    fn drain(mut reader: StreamReader, a: &Args) -> Result<()> {
        let mut out = match &a.out {
            Some(path) => {
                let mut tmp = std::ffi::OsString::from(path);
                tmp.push(".tmp");
                let file = std::fs::File::create(&tmp).map_err(|e| Error::from_io("open", &e))?;
                Some((PathBuf::from(path), PathBuf::from(tmp), std::io::BufWriter::new(file)))
            }
            None => None,
        };
        let io = |e: std::io::Error| Error::from_io("write", &e);
        let result = (|| -> Result<(u64, u64)> {
            let (mut rows, mut batches) = (0u64, 0u64);
            if let Some((_, _, w)) = &mut out {
                w.write_all(reader.prologue()).map_err(io)?;
            }
            while let Some(item) = reader.read()? {
                if let Some((_, _, w)) = &mut out {
                    w.write_all(item.ipc_bytes()).map_err(io)?;
                }
                rows += item.batch.num_rows() as u64;
                batches += 1;
            }
            if let Some((_, _, w)) = &mut out {
                w.write_all(&ipc::EOS).map_err(io)?;
                w.flush().map_err(io)?;
            }
            Ok((rows, batches))
        })();
        let (rows, batches) = match result {
            Ok(x) => x,
            Err(e) => {
                if let Some((_, tmp, _)) = out {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e);
            }
        };
        if let Some((path, tmp, w)) = out {
            drop(w);
            std::fs::rename(&tmp, &path).map_err(|e| Error::from_io("rename", &e))?;
        }
        if a.print {
            let mut lines = vec![format!("== stream: {batches} batches ==")];
            if !reader.metadata.is_empty() {
                let kv: Vec<String> = reader.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                lines.push(format!("metadata: {}", kv.join(", ")));
            }
            let schema = reader.schema().clone();
            let fields: Vec<String> = schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
            lines.push(format!("schema: {}", fields.join(", ")));
            lines.push(format!("rows: {rows}, columns: {}, batches: {batches}", schema.fields().len()));
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{}", lines.join("\n"));
            let _ = o.flush();
        }
        Ok(())
    }
}
