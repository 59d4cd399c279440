//! Rust sending half of the rust → rows of `npm run bench` (bench contract, session 7; its twin:
//! bench/sender.py):
//!   bench_sender --method M --socket ADDR --file FILE [--breakdown]
//! reads the table from FILE (an Arrow IPC stream, before any clock starts), connects, prints
//! "ready", then for each "go" line on stdin hands the table off and prints one JSON line
//! {"t0", "cpu_ms", "stages"? (with --breakdown)}, times on CLOCK_MONOTONIC in ms.
//!
//! json: the rows as JSON objects (serde_json, from typed rows made before the clock starts),
//! framed (<f64 t0><u64 length>) on a UNIX stream socket; arrow-socket: Arrow IPC stream bytes
//! (arrow-ipc's StreamWriter) framed the same way; arrow-shm: the Rust peer's `send_batches`
//! (the table written once into a sealed segment; returns at the receiver's ACK).
#[path = "bench_common/mod.rs"]
mod common;

use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_shm::channel::{self, Options};
use common::{now_ms, record_stages, symbol_rows, take_stages, Args, Line};

fn framed(conn: &mut UnixStream, t0: f64, payload: &[u8]) {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&t0.to_le_bytes());
    header[8..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    conn.write_all(&header).expect("send header");
    conn.write_all(payload).expect("send payload");
}

fn main() {
    let args = Args::parse();
    let method = args.value("--method");
    let address = args.value("--socket");
    let breakdown = args.has("--breakdown") && method.starts_with("arrow-shm");
    let file = std::fs::File::open(args.value("--file")).expect("--file");
    let reader = StreamReader::try_new(std::io::BufReader::new(file), None).expect("an Arrow IPC stream file");
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("IPC batches");

    let mut send: Box<dyn FnMut(f64)> = if method == "arrow-shm" {
        if breakdown {
            record_stages();
        }
        let opts = Options { timeout: Some(Duration::from_secs(10)), ..Options::default() };
        let mut ch = channel::connect(&address, opts).expect("connect");
        Box::new(move |_t0| {
            ch.send_batches(&schema, &batches, &vec![], None).expect("send");
        })
    } else {
        let mut conn = UnixStream::connect(&address).expect("connect");
        let rows = (method == "json").then(|| symbol_rows(&batches));
        Box::new(move |t0| {
            let payload = match &rows {
                Some(rows) => serde_json::to_vec(rows).expect("JSON"),
                None => {
                    let mut w = StreamWriter::try_new(Vec::new(), &schema).expect("IPC writer");
                    batches.iter().for_each(|b| w.write(b).expect("IPC write"));
                    w.finish().expect("IPC finish");
                    w.into_inner().expect("IPC bytes")
                }
            };
            framed(&mut conn, t0, &payload);
        })
    };

    println!("ready");
    for line in std::io::stdin().lock().lines() {
        line.expect("stdin");
        let t0 = now_ms();
        send(t0);
        Line { key: "t0", at: t0, checksum: None, stages: breakdown.then(take_stages) }.print();
    }
}
