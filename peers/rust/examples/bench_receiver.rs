//! Rust receiving half of the python → rust rows of `npm run bench` (see bench/receiver.py, its
//! Python twin): `bench_receiver --method M --socket ADDR [--read]` prints "ready", then one JSON
//! line {"t1": ms} per hand-off, t1 on CLOCK_MONOTONIC (the clock of the sender's time.monotonic).
//!
//! json: rows as JSON text, framed (<f64 t0><u64 length>) on a UNIX stream socket, parsed with
//! serde into typed rows; arrow-socket: Arrow IPC bytes framed the same way, decoded with
//! arrow-ipc's StreamReader; arrow-shm: the Rust peer's channel, the table decoded in place.
//! --read also reads every value once (string lengths and integer sums, kept from the optimizer).
use std::hint::black_box;
use std::io::{Cursor, Read, Write};
use std::os::unix::net::UnixListener;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use arrow_shm::channel::{Listener, Options};
use arrow_shm::error::ErrorCode;
use serde::Deserialize;

#[allow(dead_code)] // every field is parsed; --read touches them all
#[derive(Deserialize)]
struct SymbolRow {
    id: String,
    fqn: String,
    kind: u8,
    file_id: u16,
    start_line: u32,
    start_col: u16,
    end_line: u32,
    end_col: u16,
}

fn now_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain syscall into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn report() {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{{\"t1\": {}}}", now_ms()).unwrap();
    out.flush().unwrap();
}

fn read_rows(rows: &[SymbolRow]) -> u64 {
    rows.iter()
        .map(|r| (r.id.len() + r.fqn.len()) as u64 + r.kind as u64 + r.file_id as u64 + r.start_line as u64 + r.start_col as u64 + r.end_line as u64 + r.end_col as u64)
        .sum()
}

fn read_batch(batch: &RecordBatch) -> u64 {
    let mut sum = 0u64;
    for column in batch.columns() {
        sum += match column.data_type() {
            DataType::Utf8 => {
                let strings = column.as_string::<i32>();
                (0..strings.len()).map(|i| strings.value(i).len() as u64).sum::<u64>()
            }
            DataType::UInt8 => column.as_primitive::<UInt8Type>().values().iter().map(|&v| v as u64).sum(),
            DataType::UInt16 => column.as_primitive::<UInt16Type>().values().iter().map(|&v| v as u64).sum(),
            DataType::UInt32 => column.as_primitive::<UInt32Type>().values().iter().map(|&v| v as u64).sum(),
            other => panic!("unexpected column type {other}"),
        };
    }
    sum
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).unwrap_or_else(|| panic!("{flag} is required")).clone();
    let method = value("--method");
    let address = value("--socket");
    let read = args.iter().any(|a| a == "--read");

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
                if read {
                    black_box(read_rows(&rows));
                }
                black_box(&rows);
            } else {
                let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(&payload), None).expect("IPC stream");
                let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("IPC batches");
                if read {
                    black_box(batches.iter().map(read_batch).sum::<u64>());
                }
                black_box(&batches);
            }
            report();
        }
        let _ = std::fs::remove_file(&address);
        return;
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
        if read {
            black_box(table.batches.iter().map(read_batch).sum::<u64>());
        }
        black_box(&table);
        report();
    }
}
