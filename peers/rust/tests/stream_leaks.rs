//! fd and mapping counts stay flat over many streams (its own test binary: nothing else runs in
//! this process meanwhile).

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use arrow_shm::stream::{self, ReaderOptions, StreamReader, WriterOptions};
use arrow_shm::{channel, ErrorCode, Listener, Options};
use common::*;

#[test]
fn no_fd_or_mapping_leaks_over_many_streams() {
    let t = Some(Duration::from_secs(20));
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let small = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef]).unwrap();
    let big = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..10_000)) as ArrayRef]).unwrap();
    let round = |n: usize| {
        for i in 0..n {
            let a = format!("@arrow-shm-rs-stream-leaks-{}-{}", std::process::id(), rand_u64());
            let lst = Listener::bind(&a, Options::default()).unwrap();
            let (s2, small2, big2) = (schema.clone(), small.clone(), big.clone());
            let a2 = a.clone();
            let abort = i % 3 == 2;
            let producer = std::thread::spawn(move || {
                let ch = channel::connect(&a2, Options { timeout: t, ..Options::default() }).unwrap();
                let mut w = stream::open_stream(ch, s2, WriterOptions { capacity: 65_536, ..WriterOptions::default() }).unwrap();
                for _ in 0..5 {
                    w.write(&small2).unwrap();
                    w.write(&big2).unwrap(); // 80 KB: through its own segment
                }
                if abort {
                    w.abort();
                } else {
                    w.finish(t).unwrap();
                }
            });
            let ch = lst.accept(t).unwrap();
            let mut reader = StreamReader::accept(ch, ReaderOptions { read_timeout: t, ..ReaderOptions::default() }, t).unwrap();
            let mut kept = Vec::new();
            loop {
                match reader.read() {
                    Ok(Some(b)) => kept.push(b.batch.clone()),
                    Ok(None) => break,
                    Err(e) => {
                        assert_eq!(e.code, ErrorCode::PeerClosed);
                        break;
                    }
                }
            }
            assert_eq!(kept.len(), 10);
            // Kept clones hold their records (the producer's finish waits for them).
            drop(kept);
            producer.join().unwrap();
            drop(reader);
        }
    };
    round(3); // warm-up: lazily created process-wide fds
    let (fds, maps) = (open_fds(), memfd_maps());
    round(30);
    assert_eq!(open_fds(), fds, "fds leaked");
    assert_eq!(memfd_maps(), maps, "memfd mappings leaked");
}
