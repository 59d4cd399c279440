//! Rust receiving half of the → rust rows of `npm run bench` (bench contract, session 7; its
//! twins: bench/receiver.py, bench/receiver.ts):
//!   bench_receiver --method M --socket ADDR [--read] [--breakdown]
//! prints "ready", then per hand-off one JSON line {"t1", "checksum"? (with --read), "cpu_ms",
//! "stages"? (with --breakdown)}, times on CLOCK_MONOTONIC in ms.
//!
//! json: rows as JSON text, framed (<f64 t0><u64 length>) on a UNIX stream socket, parsed with
//! serde into typed rows; arrow-socket: Arrow IPC bytes framed the same way, decoded with
//! arrow-ipc's StreamReader; arrow-shm: the Rust peer's channel, the table decoded in place with
//! every offset, buffer and UTF-8 string checked (Rust's `&str` must be valid UTF-8, so this
//! peer has no cheaper safe setting: no arrow-shm-trusted method). --read reads every value once
//! (the checksum of bench/methods.ts, compared by the orchestrator).
#[path = "bench_common/mod.rs"]
mod common;

use std::hint::black_box;
use std::io::{Cursor, Read};
use std::os::unix::net::UnixListener;

use arrow_array::RecordBatch;
use arrow_shm::channel::{Listener, Options};
use arrow_shm::error::ErrorCode;
use common::{checksum_batches, checksum_rows, now_ms, record_stages, take_stages, Args, Line, SymbolRow};

fn main() {
    let args = Args::parse();
    let method = args.value("--method");
    let address = args.value("--socket");
    let read = args.has("--read");
    let breakdown = args.has("--breakdown");
    // With --read the hand-off ends once every value was read.
    let report = |usable_at: f64, checksum: Option<u32>, mut stages: Option<Vec<(&'static str, f64)>>| {
        let t1 = if read { now_ms() } else { usable_at };
        if let (Some(s), true) = (stages.as_mut(), read) {
            s.push(("read", t1));
        }
        Line { key: "t1", at: t1, checksum, stages }.print();
    };

    if method == "json" || method == "arrow-socket" {
        let _ = std::fs::remove_file(&address);
        let listener = UnixListener::bind(&address).expect("bind");
        println!("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut header = [0u8; 16];
        while conn.read_exact(&mut header).is_ok() {
            let length = u64::from_le_bytes(header[8..16].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; length];
            conn.read_exact(&mut payload).expect("payload");
            if method == "json" {
                let rows: Vec<SymbolRow> = serde_json::from_slice(&payload).expect("JSON rows");
                let usable_at = now_ms();
                report(usable_at, read.then(|| checksum_rows(&rows)), None);
                black_box(&rows);
            } else {
                let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(&payload), None).expect("IPC stream");
                let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("IPC batches");
                let usable_at = now_ms();
                report(usable_at, read.then(|| checksum_batches(&batches)), None);
                black_box(&batches);
            }
        }
        let _ = std::fs::remove_file(&address);
        return;
    }

    if breakdown {
        record_stages();
    }
    let listener = Listener::bind(&address, Options::default()).expect("listen");
    println!("ready");
    let mut channel = listener.accept(None).expect("accept");
    loop {
        let message = match channel.receive(None) {
            Ok(m) => m,
            Err(e) if e.code == ErrorCode::PeerClosed => break,
            Err(e) => panic!("receive: {e}"),
        };
        let table = message.decode().expect("decode");
        let usable_at = now_ms();
        report(usable_at, read.then(|| checksum_batches(&table.batches)), breakdown.then(take_stages));
        black_box(&table);
    }
}
