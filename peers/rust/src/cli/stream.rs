//! The stream commands (docs/CLI.md, Streams): send --stream, recv --stream, pub, sub.

use std::path::Path;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::output::{check_out_file, metadata_line, print_lines, schema_line, PendingFile};
use super::{listening, load, report, usage, Args, CliResult, Payload};
use crate::channel::{self, Channel, Listener, Options};
use crate::error::{Error, ErrorCode, Result};
use crate::ipc;
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

fn writer_options(a: &Args) -> WriterOptions {
    WriterOptions {
        capacity: a.ring_bytes.unwrap_or(DEFAULT_CAPACITY),
        metadata: a.meta.clone(),
        write_timeout: a.timeout(),
        ..WriterOptions::default()
    }
}

fn open_channel(a: &Args, addr: &str, listen_first: bool) -> Result<Channel> {
    let opts = Options { timeout: a.timeout(), ..Options::default() };
    if listen_first {
        let lst = Listener::bind(addr, opts)?;
        listening(addr);
        // A connection that fails its handshake costs only itself: report it, accept again.
        let deadline = a.timeout().map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match lst.accept(left) {
                Ok(ch) => return Ok(ch),
                Err(e) if e.code == ErrorCode::Timeout && deadline.is_some_and(|d| Instant::now() >= d) => return Err(e),
                Err(e) => report(&e),
            }
        }
    } else {
        channel::connect(addr, opts)
    }
}

pub fn cmd_send_stream(a: Args) -> CliResult<i32> {
    let addr = a.socket()?;
    if a.seed_compat {
        return usage("--stream and --seed-compat cannot be combined");
    }
    a.check_files()?;
    let (schema, batches) = batches_of(&a.files)?;
    let options = writer_options(&a);
    crate::ring::check_capacity(options.capacity)?;
    let ch = open_channel(&a, &addr, a.listen)?;
    let mut writer = stream::open_stream(ch, schema, options)?;
    for b in &batches {
        if let Err(e) = writer.write(b) {
            writer.abort();
            return Err(e.into());
        }
    }
    writer.finish(a.timeout())?;
    Ok(0)
}

pub fn cmd_recv_stream(a: Args) -> CliResult<i32> {
    let addr = a.socket()?;
    if a.seed_compat || a.count.is_some_and(|c| c != 1) {
        return usage("--stream receives one stream: no --seed-compat or --count");
    }
    if let Some(out) = &a.out {
        check_out_file(Path::new(out))?;
    }
    let ch = open_channel(&a, &addr, !a.connect)?;
    let reader = StreamReader::accept(ch, reader_options(&a), a.timeout())?;
    drain(reader, &a)?;
    Ok(0)
}

fn reader_options(a: &Args) -> ReaderOptions {
    ReaderOptions { read_timeout: a.timeout(), ..ReaderOptions::default() }
}

pub fn cmd_pub(a: Args) -> CliResult<i32> {
    let addr = a.socket()?;
    a.check_files()?;
    let (schema, batches) = batches_of(&a.files)?;
    let options = writer_options(&a);
    crate::ring::check_capacity(options.capacity)?;
    let mut publication = stream::publish(&addr, schema, options)?;
    listening(&addr);
    publication.wait_for_subscribers(a.subscribers.unwrap_or(1) as usize, a.timeout())?;
    for b in &batches {
        publication.write(b)?;
    }
    publication.finish(a.timeout())?;
    Ok(0)
}

pub fn cmd_sub(a: Args) -> CliResult<i32> {
    let addr = a.socket()?;
    if let Some(out) = &a.out {
        check_out_file(Path::new(out))?;
    }
    let t = a.timeout();
    let deadline = t.map(|t| Instant::now() + t);
    let reader = loop {
        match stream::subscribe(&addr, &Vec::new(), reader_options(&a), t) {
            Ok(r) => break r,
            // The publication may not be up yet: ENOENT (no socket file) or ECONNREFUSED.
            Err(e) if matches!(e.errno, Some(libc::ENOENT) | Some(libc::ECONNREFUSED))
                && deadline.is_none_or(|d| Instant::now() < d) =>
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
    let mut out = a.out.as_ref().map(|path| PendingFile::create(Path::new(path))).transpose()?;
    let (mut rows, mut batches) = (0u64, 0u64);
    if let Some(w) = &mut out {
        w.write_all(reader.prologue())?;
    }
    while let Some(item) = reader.read()? {
        if let Some(w) = &mut out {
            w.write_all(item.ipc_bytes())?;
        }
        rows += item.batch.num_rows() as u64;
        batches += 1;
    }
    if let Some(mut w) = out {
        w.write_all(&ipc::EOS)?;
        w.commit()?;
    }
    if a.print {
        let mut lines = vec![format!("== stream: {batches} batches ==")];
        lines.extend(metadata_line(&reader.metadata));
        lines.push(schema_line(reader.schema()));
        lines.push(format!("rows: {rows}, columns: {}, batches: {batches}", reader.schema().fields().len()));
        print_lines(&lines);
    }
    Ok(())
}
