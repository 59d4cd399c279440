//! `arrow-shm-rs send|recv|pub|sub|engine|put|get|ls|rm` — the command line of docs/CLI.md. The
//! commands and their flags are one table (`usage`); `output` writes and prints what was
//! received; `stream` holds the stream commands (send --stream, recv --stream, pub, sub), `store`
//! the table store's (put, get, ls, rm).

mod output;
mod store;
mod stream;
mod usage;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::channel::{self, Listener, Options, ReceivedTable};
use crate::engine;
use crate::error::{Error, ErrorCode, Result};
use crate::ipc;
use crate::seed::{self, SeedListener, DEFAULT_SEED_SOCKET};
use crate::segment::{WritableSegment, DEFAULT_MAX_MESSAGE_BYTES};
use crate::server::Server;

use output::{print_summary, Output};
use usage::{command, parse_args, usage_line, Args};

/// The program name used in messages (`arrow-shm: ...`), as the other peers' CLIs print it.
pub const PROG: &str = "arrow-shm";

/// Why the command failed: bad usage (exit 2) or an arrow-shm error (exit 1); or help was
/// asked for (printed to stdout, exit 0).
#[derive(Debug)]
pub enum CliError {
    /// Help was asked for: the text for stdout (exit 0).
    Help(String),
    /// Bad usage: the one-line message for stderr (exit 2).
    Usage(String),
    /// The command failed with an arrow-shm error (exit 1).
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

/// An error that does not end the command: one line on stderr.
fn report(e: &Error) {
    eprintln!("{PROG}: {}: {}", e.code.as_str(), e.message.replace('\n', " "));
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
            report(&e);
            1
        }
    }
}

fn run_inner(args: Vec<std::ffi::OsString>) -> CliResult<i32> {
    use lexopt::{Arg, ValueExt};
    let mut p = lexopt::Parser::from_args(args);
    let name = match p.next()? {
        Some(Arg::Value(v)) => v.string()?,
        Some(Arg::Long("help")) | Some(Arg::Short('h')) => return Err(CliError::Help(usage::program_help())),
        None => return usage(usage_line()),
        Some(other) => return Err(other.unexpected().into()),
    };
    if name == "help" {
        return match p.next()? {
            Some(Arg::Value(v)) => match command(&v.string()?) {
                Some(c) => Err(CliError::Help(usage::command_help(c))),
                None => usage(usage_line()),
            },
            _ => Err(CliError::Help(usage::program_help())),
        };
    }
    let Some(c) = command(&name) else { return usage(format!("unknown command {name:?}; {}", usage_line())) };
    let a = parse_args(c, p)?;
    match c.name {
        "send" if a.stream => stream::cmd_send_stream(a),
        "send" => cmd_send(a),
        "recv" if a.stream => stream::cmd_recv_stream(a),
        "recv" => cmd_recv(a),
        "pub" => stream::cmd_pub(a),
        "sub" => stream::cmd_sub(a),
        "put" => store::cmd_put(a),
        "get" => store::cmd_get(a),
        "ls" => store::cmd_ls(a),
        "rm" => store::cmd_rm(a),
        _ => cmd_engine(a),
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
    a.check_files()?;
    let payloads = a.files.iter().map(|f| load(f)).collect::<Result<Vec<_>>>()?;
    let t = a.timeout();
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
    let addr = a.socket()?;
    let mut opts = Options { timeout: t, ..Options::default() };
    if let Some(n) = a.max_inline_bytes {
        opts.max_inline_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    let mut ch = if a.listen {
        let lst = Listener::bind(&addr, opts)?;
        listening(&addr);
        lst.accept(t)?
    } else {
        channel::connect(&addr, opts)?
    };
    for p in &payloads {
        match p {
            Payload::Stream(bytes) => ch.send_bytes(bytes, &a.meta, t)?,
            Payload::Batches(schema, batches) => ch.send_batches(schema, batches, &a.meta, t)?,
        };
    }
    ch.close();
    Ok(0)
}

fn cmd_recv(a: Args) -> CliResult<i32> {
    if !a.seed_compat {
        a.socket()?;
    }
    let count = a.count.unwrap_or(1);
    let output = Output::new(a.out.as_deref(), count)?;
    let t = a.timeout();
    let mut status = 0;
    let mut handle = |m: ReceivedTable, index: u64| -> Result<()> {
        output.write(&m, index)?;
        if a.print {
            if let Some(e) = print_summary(&m, index) {
                report(&e);
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
    let addr = a.socket()?;
    let opts = Options { allow_unsealed: a.allow_unsealed, timeout: t, ..Options::default() };
    // A refused table (the sender was told with an ERROR) or a failed connection: reported,
    // not counted; the receiver goes on.
    let mut received = 0u64;
    if a.connect {
        let mut ch = channel::connect(&addr, opts)?;
        while received < count {
            match ch.receive(t) {
                Ok(m) => {
                    handle(m, received)?;
                    received += 1;
                }
                Err(e) if e.code == ErrorCode::Timeout => return Err(e.into()),
                Err(_) if ch.is_closed() => break,
                Err(e) => report(&e),
            }
        }
        let closed = ch.close_error().cloned();
        ch.close();
        if received < count {
            return Err(match closed {
                Some(e) if e.code != ErrorCode::PeerClosed => e,
                _ => Error::new(ErrorCode::PeerClosed, format!("the peer hung up after {received} of {count} tables")),
            }
            .into());
        }
    } else {
        // Every sender is served at once (one thread each): an idle or hostile connection
        // delays nobody, and --count counts tables across connections.
        let mut server = Server::new(Listener::bind(&addr, opts)?)?;
        listening(&addr);
        while received < count {
            let deadline = t.map(|t| std::time::Instant::now() + t);
            match server.next(deadline)? {
                Ok(m) => {
                    handle(m, received)?;
                    received += 1;
                }
                Err(e) => report(&e),
            }
        }
    }
    Ok(status)
}

fn cmd_engine(a: Args) -> CliResult<i32> {
    let addr = a.socket()?;
    let limit = a.count;
    let opts = Options::default();
    // One connection at a time: one that stays idle is closed after idle_timeout_ms (§14.2).
    let idle = Some(Duration::from_millis(opts.idle_timeout_ms)).filter(|d| !d.is_zero());
    let lst = Listener::bind(&addr, opts)?;
    listening(&addr);
    let mut served = 0u64;
    let schema = engine::response_schema();
    while limit.is_none_or(|n| served < n) {
        let mut ch = match lst.accept(None) {
            Ok(ch) => ch,
            Err(e) => {
                report(&e);
                continue;
            }
        };
        while limit.is_none_or(|n| served < n) {
            let m = match ch.receive(idle) {
                Ok(m) => m,
                Err(e) if e.code == ErrorCode::Timeout => {
                    let _ = ch.send_error(0, 0, ErrorCode::Timeout, "no request for idle_timeout_ms");
                    break;
                }
                Err(e) if ch.is_closed() || matches!(e.code, ErrorCode::PeerClosed | ErrorCode::Closed | ErrorCode::Syscall) => {
                    if e.code != ErrorCode::PeerClosed {
                        report(&e);
                    }
                    break;
                }
                Err(e) => {
                    // a message-level failure: the peer was told with an ERROR frame
                    report(&e);
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
                report(&e);
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
