//! The Rust program of the stream bench contract (issue #16, notes: stream-contract):
//!   stream_peer consume --address A --batches N [--spin-micros S]
//!   stream_peer produce --address A --bytes B --batches N [--interval-ms I] [--capacity-bytes C]
//!   stream_peer pong --address A [--spin-micros S]
//!   stream_peer ping --address A --bytes B --rounds N [--spin-micros S]
//! Batches have one row: `sent_ms: float64` (CLOCK_MONOTONIC, ms) and `payload: binary` (B bytes
//! of 0x07, built once). stdout: the contract's JSON lines only; errors go to stderr, exit 1.
#[path = "bench_common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, BinaryArray, Float64Array, RecordBatch};
use arrow_buffer::{Buffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_shm::channel::{self, Channel, Listener, Options};
use arrow_shm::{open_stream, ReaderOptions, StreamReader, StreamWriter, WriterOptions};
use common::{cpu_ms, now_ms};

type Res<T> = std::result::Result<T, String>;

const WARM_UP_ROUNDS: usize = 100;
const CONNECT_FOR: Duration = Duration::from_secs(5);
const FINISH_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("sent_ms", DataType::Float64, false), Field::new("payload", DataType::Binary, false)]))
}

/// The payload column over `bytes` (one value): shares the buffer, allocates no payload.
fn payload_column(bytes: &Buffer) -> ArrayRef {
    let offsets = OffsetBuffer::from_lengths([bytes.len()]);
    Arc::new(BinaryArray::new(offsets, bytes.clone(), None))
}

fn batch(schema: &SchemaRef, sent_ms: f64, payload: &ArrayRef) -> Res<RecordBatch> {
    let sent: ArrayRef = Arc::new(Float64Array::from(vec![sent_ms]));
    RecordBatch::try_new(schema.clone(), vec![sent, payload.clone()]).map_err(|e| e.to_string())
}

/// Row 0's sent_ms and the payload's length.
fn sent_and_size(b: &RecordBatch) -> Res<(f64, usize)> {
    if b.num_rows() != 1 || b.num_columns() != 2 {
        return Err(format!("expected 1 row and 2 columns, got {} and {}", b.num_rows(), b.num_columns()));
    }
    let sent = b.column(0).as_primitive_opt::<Float64Type>().ok_or("sent_ms is not float64")?.value(0);
    let payload = b.column(1).as_binary_opt::<i32>().ok_or("payload is not binary")?;
    Ok((sent, payload.value_length(0) as usize))
}

struct Flags(Vec<String>);

impl Flags {
    fn get(&self, flag: &str) -> Option<&str> {
        let at = self.0.iter().position(|a| a == flag)?;
        self.0.get(at + 1).map(|s| s.as_str())
    }
    fn num<T: std::str::FromStr>(&self, flag: &str, default: Option<T>) -> Res<T> {
        match self.get(flag) {
            Some(v) => v.parse().map_err(|_| format!("{flag}: not a number: {v}")),
            None => default.ok_or_else(|| format!("{flag} is required")),
        }
    }
    fn address(&self) -> Res<String> {
        self.get("--address").map(str::to_string).ok_or_else(|| "--address is required".into())
    }
}

fn listen(address: &str) -> Res<Channel> {
    let listener = Listener::bind(address, Options::default()).map_err(|e| e.to_string())?;
    println!("{{\"ready\":true}}");
    listener.accept(None).map_err(|e| e.to_string())
}

/// Connects, retrying while the listener is not up yet (for up to 5 s).
fn connect(address: &str) -> Res<Channel> {
    let until = Instant::now() + CONNECT_FOR;
    loop {
        match channel::connect(address, Options { timeout: Some(CONNECT_FOR), ..Options::default() }) {
            Ok(ch) => return Ok(ch),
            Err(e) if Instant::now() >= until => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn reader_options(f: &Flags) -> Res<ReaderOptions> {
    Ok(ReaderOptions { spin_micros: f.num("--spin-micros", Some(0))?, ..ReaderOptions::default() })
}

/// Median and 99th percentile of `v` (sorted in place).
fn median_p99(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn consume(f: &Flags) -> Res<()> {
    let expected: u64 = f.num("--batches", None)?;
    let ch = listen(&f.address()?)?;
    let mut reader = StreamReader::accept(ch, reader_options(f)?, None).map_err(|e| e.to_string())?;
    let mut latencies = Vec::with_capacity(expected as usize);
    let (mut first_sent, mut last_recv) = (0.0, 0.0);
    while let Some(b) = reader.read().map_err(|e| e.to_string())? {
        let (sent, _size) = sent_and_size(&b.batch)?;
        last_recv = now_ms();
        if latencies.is_empty() {
            first_sent = sent;
        }
        latencies.push((last_recv - sent) * 1000.0);
        drop(b);
    }
    let n = latencies.len();
    let (median, p99) = median_p99(&mut latencies);
    println!(
        "{{\"batches\":{n},\"first_sent_ms\":{first_sent},\"last_recv_ms\":{last_recv},\"latency_median_us\":{median},\"latency_p99_us\":{p99},\"cpu_ms\":{}}}",
        cpu_ms()
    );
    Ok(())
}

fn pause(interval_ms: f64) {
    if interval_ms >= 1.0 {
        std::thread::sleep(Duration::from_secs_f64(interval_ms / 1000.0));
    } else if interval_ms > 0.0 {
        let until = now_ms() + interval_ms;
        while now_ms() < until {
            std::hint::spin_loop();
        }
    }
}

fn produce(f: &Flags) -> Res<()> {
    let bytes: usize = f.num("--bytes", None)?;
    let batches: u64 = f.num("--batches", None)?;
    let interval: f64 = f.num("--interval-ms", Some(0.0))?;
    let capacity: u64 = f.num("--capacity-bytes", Some(64 << 20))?;
    let schema = schema();
    let payload = payload_column(&Buffer::from(vec![7u8; bytes]));
    let ch = connect(&f.address()?)?;
    let options = WriterOptions { capacity, ..WriterOptions::default() };
    let mut writer = open_stream(ch, schema.clone(), options).map_err(|e| e.to_string())?;
    for i in 0..batches {
        if i > 0 {
            pause(interval);
        }
        writer.write(&batch(&schema, now_ms(), &payload)?).map_err(|e| e.to_string())?;
    }
    writer.finish(FINISH_TIMEOUT).map_err(|e| e.to_string())?;
    println!("{{\"cpu_ms\":{}}}", cpu_ms());
    Ok(())
}

fn pong(f: &Flags) -> Res<()> {
    let ch = listen(&f.address()?)?;
    let mut reader = StreamReader::accept(ch, reader_options(f)?, None).map_err(|e| e.to_string())?;
    let schema = schema();
    let mut writer = reader.open_reply(schema.clone(), WriterOptions::default()).map_err(|e| e.to_string())?;
    let mut payload = payload_column(&Buffer::from(Vec::<u8>::new()));
    while let Some(b) = reader.read().map_err(|e| e.to_string())? {
        let (sent, size) = sent_and_size(&b.batch)?;
        drop(b);
        if payload.len() != 1 || payload.as_binary::<i32>().value_length(0) as usize != size {
            payload = payload_column(&Buffer::from(vec![7u8; size]));
        }
        writer.write(&batch(&schema, sent, &payload)?).map_err(|e| e.to_string())?;
    }
    writer.finish(FINISH_TIMEOUT).map_err(|e| e.to_string())?;
    println!("{{\"cpu_ms\":{}}}", cpu_ms());
    Ok(())
}

fn ping(f: &Flags) -> Res<()> {
    let bytes: usize = f.num("--bytes", None)?;
    let rounds: usize = f.num("--rounds", None)?;
    let schema = schema();
    let payload = payload_column(&Buffer::from(vec![7u8; bytes]));
    let ch = connect(&f.address()?)?;
    let mut writer: StreamWriter = open_stream(ch, schema.clone(), WriterOptions::default()).map_err(|e| e.to_string())?;
    let mut reader = writer.accept_reply(reader_options(f)?, Some(CONNECT_FOR)).map_err(|e| e.to_string())?;
    let mut rtts = Vec::with_capacity(rounds);
    for round in 0..WARM_UP_ROUNDS + rounds {
        writer.write(&batch(&schema, now_ms(), &payload)?).map_err(|e| e.to_string())?;
        let reply = reader.read().map_err(|e| e.to_string())?.ok_or("the reply stream ended early")?;
        let (sent, _) = sent_and_size(&reply.batch)?;
        let rtt = (now_ms() - sent) * 1000.0;
        drop(reply);
        if round >= WARM_UP_ROUNDS {
            rtts.push(rtt);
        }
    }
    writer.finish(FINISH_TIMEOUT).map_err(|e| e.to_string())?;
    while reader.read().map_err(|e| e.to_string())?.is_some() {}
    let (median, p99) = median_p99(&mut rtts);
    println!("{{\"rounds\":{rounds},\"rtt_median_us\":{median},\"rtt_p99_us\":{p99},\"cpu_ms\":{}}}", cpu_ms());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let f = Flags(args);
    let run = match role.as_str() {
        "consume" => consume(&f),
        "produce" => produce(&f),
        "pong" => pong(&f),
        "ping" => ping(&f),
        _ => Err(format!("usage: stream_peer consume|produce|pong|ping --address A ... (got {role:?})")),
    };
    if let Err(e) = run {
        eprintln!("stream_peer {role}: {e}");
        std::process::exit(1);
    }
}
