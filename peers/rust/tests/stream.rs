//! Streams (PROTOCOL.md §12): Rust producer → Rust consumer over real sockets and rings.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_shm::frame::{kv_get, Frame, Kind};
use arrow_shm::ring::{self, encode_record_header, RecordKind, RingHeader, RING_HEADER_BYTES, RING_SEALS};
use arrow_shm::segment::{self, Mapping};
use arrow_shm::stream::{self, ReaderOptions, StreamReader, WriterOptions};
use arrow_shm::{channel, ipc, sys, Channel, ErrorCode, Listener, Options};
use common::*;

const T: Option<Duration> = Some(Duration::from_secs(20));

fn addr(tag: &str) -> String {
    format!("@arrow-shm-rs-stream-{tag}-{}-{}", std::process::id(), rand_u64())
}

fn gold(name: &str) -> (SchemaRef, Vec<RecordBatch>) {
    let bytes = std::fs::read(testdata().join("arrow-gold").join(name)).unwrap();
    let t = ipc::decode_stream(&buffer_of(&bytes)).unwrap();
    (t.schema, t.batches)
}

fn reader_options() -> ReaderOptions {
    ReaderOptions { read_timeout: T, ..ReaderOptions::default() }
}

fn connect(a: &str) -> Channel {
    channel::connect(a, Options { timeout: T, ..Options::default() }).unwrap()
}

/// Listens on a new address, runs `producer` (given the address) on a thread, and accepts its
/// stream here.
fn stream_from<R: Send + 'static>(tag: &str, producer: impl FnOnce(String) -> R + Send + 'static) -> (StreamReader, JoinHandle<R>) {
    let a = addr(tag);
    let lst = Listener::bind(&a, Options::default()).unwrap();
    let producer = std::thread::spawn(move || producer(a));
    let reader = StreamReader::accept(lst.accept(T).unwrap(), reader_options(), T).unwrap();
    (reader, producer)
}

/// Listens on a new address and runs `consumer` on a thread with the stream it accepts there;
/// returns the producer's channel to it.
fn stream_to<R: Send + 'static>(tag: &str, consumer: impl FnOnce(StreamReader) -> R + Send + 'static) -> (Channel, JoinHandle<R>) {
    let a = addr(tag);
    let lst = Listener::bind(&a, Options::default()).unwrap();
    let consumer = std::thread::spawn(move || consumer(StreamReader::accept(lst.accept(T).unwrap(), reader_options(), T).unwrap()));
    (connect(&a), consumer)
}

/// Streams `batches` from a producer thread to a consumer here and compares each batch read
/// with the one sent; returns how many lay inside the ring mapping (read in place). Batches are
/// dropped as they are read: held ones would hold the ring.
fn round_trip(schema: SchemaRef, batches: Vec<RecordBatch>, options: WriterOptions) -> usize {
    let want = batches.clone();
    let (mut reader, producer) = stream_from("rt", move |a| {
        let mut w = stream::open_stream(connect(&a), schema, options).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.finish(T).unwrap();
    });
    let mut got = 0;
    let mut in_ring = 0;
    while let Some(item) = reader.read().unwrap() {
        let col = item.batch.column(0).to_data();
        if col.buffers().first().is_some_and(|b| reader.data_mapping().contains(b.as_ptr(), b.len())) {
            in_ring += 1;
        }
        assert_eq!(item.sequence, got as u64);
        assert_eq!(item.batch, want[got], "batch {got}");
        got += 1;
    }
    assert_eq!(got, want.len());
    assert!(reader.read().unwrap().is_none(), "stays ended");
    producer.join().unwrap();
    in_ring
}

fn assert_same(a: &[RecordBatch], b: &[RecordBatch]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y);
    }
}

#[test]
fn gold_files_with_dictionaries_round_trip() {
    for name in [
        "1.0.0-littleendian/generated_dictionary.stream",
        "1.0.0-littleendian/generated_dictionary_unsigned.stream",
        "1.0.0-littleendian/generated_nested_dictionary.stream",
        "4.0.0-shareddict/generated_shared_dict.stream",
        "1.0.0-littleendian/generated_primitive.stream",
        "2.0.0-compression/generated_lz4.stream",
    ] {
        if !testdata().join("arrow-gold").join(name).exists() {
            continue;
        }
        let (schema, batches) = gold(name);
        round_trip(schema, batches, WriterOptions::default());
    }
}

fn big_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
        Field::new("d", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), false),
    ]))
}

fn batch(rows: usize, dict_size: usize) -> RecordBatch {
    use arrow_array::{DictionaryArray, Int32Array};
    let keys = Int32Array::from_iter_values((0..rows).map(|i| (i % dict_size) as i32));
    let values = StringArray::from_iter_values((0..dict_size).map(|k| format!("v{k}")));
    let dict = DictionaryArray::new(keys, Arc::new(values));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..rows as i64)),
        Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("s{i}")))),
        Arc::new(dict),
    ];
    RecordBatch::try_new(big_schema(), cols).unwrap()
}

#[test]
fn big_batches_go_through_stream_segments_and_small_ones_wrap() {
    // 64 KiB ring: a record over 16 KiB is EXTERNAL; the small ones wrap with PADDING.
    let batches: Vec<RecordBatch> = (0..40).map(|i| batch([10, 300, 5000, 40][i % 4], 3 + i)).collect();
    let options = WriterOptions { capacity: 65_536, ..WriterOptions::default() };
    let in_ring = round_trip(big_schema(), batches, options);
    assert!(in_ring >= 20, "small batches are read in place ({in_ring})");
    assert!(in_ring < 40, "big batches come in their own segment ({in_ring})");
}

#[test]
fn batches_without_dictionaries_are_written_in_place_or_in_their_own_segment() {
    // The producer writes a dictionary-free batch's messages straight into its slot; the same
    // batches as above, minus the dictionary column: wraps, PADDING and EXTERNAL records.
    let schema = Arc::new(big_schema().project(&[0, 1]).unwrap());
    let batches: Vec<RecordBatch> = (0..40).map(|i| batch([10, 300, 5000, 40][i % 4], 1).project(&[0, 1]).unwrap()).collect();
    let options = WriterOptions { capacity: 65_536, ..WriterOptions::default() };
    let in_ring = round_trip(schema, batches, options);
    assert!((20..40).contains(&in_ring), "small batches in place, big ones in their own segment ({in_ring})");
}

#[test]
fn flat_batches_of_many_types_round_trip_written_in_place_and_read_by_the_plan() {
    // Flat schemas take the template writer and the decode plan: types whose arrays carry more
    // than their Rust type (a zone, a precision), nulls, empty and sliced batches.
    use arrow_array::{BooleanArray, Date32Array, Decimal128Array, Int16Array, LargeBinaryArray, TimestampMicrosecondArray, UInt8Array};
    let schema = Arc::new(Schema::new(vec![
        Field::new("t", DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("d", DataType::Decimal128(10, 2), false),
        Field::new("b", DataType::Boolean, true),
        Field::new("dt", DataType::Date32, false),
        Field::new("u", DataType::UInt8, false),
        Field::new("h", DataType::Int16, true),
        Field::new("l", DataType::LargeBinary, true),
    ]));
    let make = |n: usize| {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from_iter((0..n as i64).map(|i| (i % 7 != 0).then_some(i * 1000))).with_timezone("UTC")),
            Arc::new(Decimal128Array::from_iter_values((0..n as i128).map(|i| i * 25)).with_precision_and_scale(10, 2).unwrap()),
            Arc::new(BooleanArray::from_iter((0..n).map(|i| (i % 5 != 0).then_some(i % 2 == 0)))),
            Arc::new(Date32Array::from_iter_values((0..n as i32).map(|i| 18_000 + i))),
            Arc::new(UInt8Array::from_iter_values((0..n).map(|i| i as u8))),
            Arc::new(Int16Array::from_iter((0..n as i16).map(|i| (i % 3 != 0).then_some(-i)))),
            Arc::new(LargeBinaryArray::from_iter((0..n).map(|i| (i % 4 != 3).then(|| vec![i as u8; i % 9])))),
        ];
        RecordBatch::try_new(schema.clone(), cols).unwrap()
    };
    let batches: Vec<RecordBatch> = (0..60).map(|i| if i % 5 == 4 { make(40).slice(8, 24) } else { make(i % 37) }).collect();
    let in_ring = round_trip(schema.clone(), batches, WriterOptions { capacity: 1 << 20, ..WriterOptions::default() });
    assert_eq!(in_ring, 60, "every batch read in place");
}

/// The warm part of the ring the producer reuses while its readers keep up (producer.rs).
const WARM_BYTES: usize = 256 << 10;

/// Streams 3,000 one-KB batches through a 4 MiB ring; `hold` of them at a time stay unreleased
/// at the consumer. Returns the highest data offset a record was read at; checks every batch
/// arrived once, in order.
fn warm_offsets(max_messages: Option<usize>, hold: usize) -> usize {
    let schema = Arc::new(big_schema().project(&[0, 1]).unwrap());
    let b = batch(40, 1).project(&[0, 1]).unwrap();
    let (b2, s2) = (b.clone(), schema.clone());
    let (mut reader, producer) = stream_from("warm", move |a| {
        let options = WriterOptions { capacity: 4 << 20, max_messages, ..WriterOptions::default() };
        let mut w = stream::open_stream(connect(&a), s2, options).unwrap();
        for _ in 0..3000 {
            w.write(&b2).unwrap();
        }
        w.finish(T).unwrap();
    });
    let (mut highest, mut next, mut held) = (0, 0u64, std::collections::VecDeque::new());
    while let Some(item) = reader.read().unwrap() {
        let offset = item.ipc_bytes().as_ptr() as usize - reader.data_mapping().as_ptr() as usize;
        highest = highest.max(offset);
        assert_eq!(item.sequence, next);
        assert_eq!(item.batch, b);
        next += 1;
        held.push_back(item);
        if held.len() > hold {
            held.pop_front();
        }
    }
    drop(held);
    producer.join().unwrap();
    assert_eq!(next, 3000);
    highest
}

#[test]
fn records_reuse_the_warm_start_of_the_ring_while_the_reader_keeps_up() {
    // One unreleased record at a time: the producer goes back to offset 0 (PADDING) instead of
    // cycling through the 4 MiB ring (3 MB written).
    let highest = warm_offsets(Some(1), 0);
    assert!(highest < WARM_BYTES, "records up to offset {highest}");
}

#[test]
fn a_reader_holding_records_does_not_stall_the_producer_at_the_warm_part() {
    // The reader holds 1,000 records (1 MB): the producer goes on past the warm part, into the
    // rest of the ring, without waiting (it would wait forever for this reader otherwise).
    let highest = warm_offsets(None, 1000);
    assert!(highest > WARM_BYTES, "records up to offset {highest}");
}

#[test]
fn a_full_ring_fails_fast_with_ring_full() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ch, consumer) = stream_to("full", move |mut reader| {
        let held = reader.read().unwrap().unwrap(); // hold the first batch: nothing is released
        rx.recv().unwrap();
        drop(held);
        let mut n = 1;
        while reader.read().unwrap().is_some() {
            n += 1;
        }
        n
    });
    let options = WriterOptions { capacity: 65_536, fail_when_full: true, ..WriterOptions::default() };
    let mut w = stream::open_stream(ch, big_schema(), options).unwrap();
    let b = batch(300, 5);
    let mut written = 0;
    let e = loop {
        match w.write(&b) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 1000, "the ring never filled");
    };
    assert_eq!(e.code, ErrorCode::RingFull, "{e}");
    tx.send(()).unwrap();
    // After a failed write the stream goes on: END waits for room, the reader gets every batch.
    w.finish(T).unwrap();
    assert_eq!(consumer.join().unwrap(), written);
}

#[test]
fn max_messages_limits_unreleased_records() {
    let (ch, consumer) = stream_to("maxmsg", |mut reader| {
        std::thread::sleep(Duration::from_millis(300));
        let mut n = 0;
        while reader.read().unwrap().is_some() {
            n += 1;
        }
        n
    });
    let options = WriterOptions { max_messages: Some(2), fail_when_full: true, ..WriterOptions::default() };
    let mut w = stream::open_stream(ch, big_schema(), options).unwrap();
    let b = batch(10, 2);
    w.write(&b).unwrap();
    w.write(&b).unwrap();
    let e = w.write(&b).unwrap_err();
    assert_eq!(e.code, ErrorCode::RingFull);
    assert!(e.message.contains("max_messages"), "{e}");
    w.finish(T).unwrap();
    assert_eq!(consumer.join().unwrap(), 2);
}

#[test]
fn producer_gone_before_end_drains_then_peer_closed() {
    for abort in [true, false] {
        let (mut reader, producer) = stream_from("gone", move |a| {
            let mut w = stream::open_stream(connect(&a), big_schema(), WriterOptions::default()).unwrap();
            for i in 0..3 {
                w.write(&batch(100, 2 + i)).unwrap();
            }
            if abort {
                w.abort();
            } else {
                drop(w); // as if the process died: no END record
            }
        });
        producer.join().unwrap();
        for _ in 0..3 {
            assert!(reader.read().unwrap().is_some());
        }
        let e = reader.read().unwrap_err();
        assert_eq!(e.code, ErrorCode::PeerClosed, "{e}");
    }
}

#[test]
fn a_consumer_that_leaves_fails_the_writer_with_peer_closed() {
    let (ch, consumer) = stream_to("leave", |mut reader| {
        let _ = reader.read().unwrap();
        // dropped here: leaves the stream
    });
    let mut w = stream::open_stream(ch, big_schema(), WriterOptions { capacity: 65_536, ..WriterOptions::default() }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        if let Err(e) = w.write(&batch(300, 4)) {
            break e;
        }
        assert!(Instant::now() < deadline, "the writer never noticed");
    };
    assert_eq!(e.code, ErrorCode::PeerClosed, "{e}");
    consumer.join().unwrap();
}

// ------------------------------------------------------------------- a hostile raw producer

/// A hand-made producer: connects, opens a stream over a ring it builds itself, lets `corrupt`
/// write records and positions, and returns the ERROR frame the consumer answered with.
fn hostile_producer(a: &str, corrupt: impl FnOnce(&RingHeader, &mut [u8])) -> Frame {
    let (fd, w) = raw_hello(a, "stream");
    assert_eq!(kv_get(&w.metadata, "capabilities"), Some("stream,inline"));

    let capacity = 65_536u64;
    let ring_fd = segment::create_memfd(c"hostile-ring", RING_HEADER_BYTES as u64 + capacity).unwrap();
    segment::add_seals(ring_fd.as_raw_fd(), RING_SEALS).unwrap();
    let header = RingHeader::new(Arc::new(Mapping::map(ring_fd.as_raw_fd(), RING_HEADER_BYTES, true).unwrap())).unwrap();
    header.init(capacity, 1);
    let mut data = Mapping::map_at(ring_fd.as_raw_fd(), capacity as usize, RING_HEADER_BYTES as u64, true).unwrap();
    let schema = ipc::batches_to_stream(&big_schema(), &[]).unwrap();
    let (seg, len) = ipc::write_bytes_segment(&schema[..schema.len() - 8], 0).unwrap();
    let prologue = seg.finish(true).unwrap();
    let (data_event, space_event) = (ring::eventfd().unwrap(), ring::eventfd().unwrap());
    let mut open = Frame::new(Kind::StreamOpen);
    open.message_id = 2;
    open.ipc_length = len as u64;
    open.fd_count = 4;
    open.metadata = vec![
        ("stream_id".into(), "1".into()),
        ("reader_slot".into(), "0".into()),
        ("start_position".into(), "0".into()),
        ("capacity".into(), capacity.to_string()),
    ];
    let fds = [ring_fd.as_raw_fd(), prologue.as_raw_fd(), data_event.as_raw_fd(), space_event.as_raw_fd()];
    sys::send_with_fds(fd.as_raw_fd(), &open.encode().unwrap(), &fds).unwrap();
    let ack = raw_read(&fd);
    assert_eq!((ack.kind, ack.correlation_id), (Kind::Ack, 2));
    corrupt(&header, data.as_mut_slice());
    ring::eventfd_signal(data_event.as_raw_fd());
    raw_read(&fd)
}

fn consume_hostile(tag: &str, corrupt: impl FnOnce(&RingHeader, &mut [u8]) + Send + 'static) -> (arrow_shm::Error, Frame) {
    let (mut reader, producer) = stream_from(tag, move |a| hostile_producer(&a, corrupt));
    let e = loop {
        match reader.read() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a hostile stream ended cleanly"),
            Err(e) => break e,
        }
    };
    drop(reader); // leaves: the hostile side's read ends with our ERROR or GOODBYE
    (e, producer.join().unwrap())
}

#[test]
fn hostile_ring_records_are_ring_invalid_without_a_panic() {
    let cases: Vec<(&str, Box<dyn FnOnce(&RingHeader, &mut [u8]) + Send>)> = vec![
        ("past-write-position", Box::new(|h, d| {
            d[..64].copy_from_slice(&encode_record_header(4096, RecordKind::Batch, 0, 10));
            h.write_position().store(128, Ordering::SeqCst);
        })),
        ("unknown-kind", Box::new(|h, d| {
            let mut r = encode_record_header(64, RecordKind::End, 0, 0);
            r[4] = 77;
            d[..64].copy_from_slice(&r);
            h.write_position().store(64, Ordering::SeqCst);
        })),
        ("short-padding", Box::new(|h, d| {
            d[..64].copy_from_slice(&encode_record_header(128, RecordKind::Padding, 0, 0));
            h.write_position().store(128, Ordering::SeqCst);
        })),
        ("too-far-ahead", Box::new(|h, _| h.write_position().store(1 << 20, Ordering::SeqCst))),
    ];
    for (tag, corrupt) in cases {
        let (e, frame) = consume_hostile(tag, corrupt);
        assert_eq!(e.code, ErrorCode::RingInvalid, "{tag}: {e}");
        assert_eq!(frame.kind, Kind::Error, "{tag}");
        assert_eq!(kv_get(&frame.metadata, "code"), Some("ERR_RING_INVALID"), "{tag}");
    }
}

#[test]
fn garbage_ipc_inside_a_valid_record_is_an_ipc_error() {
    let (e, _) = consume_hostile("garbage", |h, d| {
        d[..64].copy_from_slice(&encode_record_header(256, RecordKind::Batch, 0, 192));
        for (i, b) in d[64..256].iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        d[64..68].copy_from_slice(&[0xFF; 4]);
        d[68..72].copy_from_slice(&100i32.to_le_bytes());
        h.write_position().store(256, Ordering::SeqCst);
        h.ended().store(0, Ordering::SeqCst);
    });
    assert!(e.code.as_str().starts_with("ERR_IPC_"), "{e}");
}

#[test]
fn publication_serves_several_subscribers() {
    let a = addr("pub");
    let (schema, batches) = gold("1.0.0-littleendian/generated_nested_dictionary.stream");
    let mut publication = stream::publish(&a, schema, WriterOptions::default()).unwrap();
    let subs: Vec<_> = (0..3)
        .map(|_| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut r = stream::subscribe(&a, &vec![("want".into(), "all".into())], reader_options(), T).unwrap();
                let mut got = Vec::new();
                while let Some(b) = r.read().unwrap() {
                    got.push(b.batch.clone());
                }
                got
            })
        })
        .collect();
    publication.wait_for_subscribers(3, T).unwrap();
    for b in &batches {
        publication.write(b).unwrap();
    }
    publication.finish(T).unwrap();
    for s in subs {
        assert_same(&s.join().unwrap(), &batches);
    }
}

#[test]
fn no_reader_slot_is_reported_to_the_subscriber() {
    let a = addr("slots");
    let mut publication = stream::publish(&a, big_schema(), WriterOptions { max_readers: 1, ..WriterOptions::default() }).unwrap();
    let a1 = a.clone();
    let first = std::thread::spawn(move || stream::subscribe(&a1, &vec![], reader_options(), T).map(|_| ()));
    publication.wait_for_subscribers(1, T).unwrap();
    let a2 = a.clone();
    let second = std::thread::spawn(move || stream::subscribe(&a2, &vec![], reader_options(), T).map(|_| ()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.is_finished() && Instant::now() < deadline {
        let _ = publication.wait_for_subscribers(2, Some(Duration::from_millis(100)));
    }
    let e = second.join().unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::NoReaderSlot, "{e}");
    drop(publication);
    let _ = first.join().unwrap();
}

#[test]
fn cli_help_goes_to_stdout_with_status_0() {
    for args in [vec!["--help"], vec!["-h"], vec!["send", "--help"], vec!["recv", "-h"], vec!["pub", "--help"], vec!["sub", "--help"], vec!["engine", "--help"]] {
        let out = std::process::Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("Usage: arrow-shm-rs"), "{args:?}: {text}");
    }
    let text = String::from_utf8(std::process::Command::new(bin()).args(["send", "--help"]).output().unwrap().stdout).unwrap();
    assert!(text.contains("--stream") && text.contains("--ring-bytes"));
}

#[test]
fn cli_send_stream_to_recv_stream_writes_one_ipc_stream() {
    let dir = tmpdir("cli-stream");
    let out = dir.join("out.arrows");
    let sock = dir.join("s.sock");
    let file = testdata().join("arrow-gold/1.0.0-littleendian/generated_dictionary.stream");
    let mut recv = std::process::Command::new(bin())
        .args(["recv", "--stream", "--socket", sock.to_str().unwrap(), "--out", out.to_str().unwrap(), "--timeout-ms", "20000", "--print"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sent = std::process::Command::new(bin())
        .args(["send", "--stream", "--socket", sock.to_str().unwrap(), "--timeout-ms", "20000", "--ring-bytes", "65536", file.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = recv.wait().unwrap();
    assert!(status.success());
    let mut printed = String::new();
    std::io::Read::read_to_string(recv.stdout.as_mut().unwrap(), &mut printed).unwrap();
    assert!(printed.contains("== stream: 2 batches ==") && printed.contains("rows: 17, columns: 3, batches: 2"), "{printed}");
    let got = ipc::decode_stream(&buffer_of(&std::fs::read(&out).unwrap())).unwrap();
    let (_, want) = gold("1.0.0-littleendian/generated_dictionary.stream");
    assert_same(&got.batches, &want);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_reply_stream_shares_the_connection_both_ways() {
    // Ping-pong: the consumer opens a stream back on the same connection and echoes each batch;
    // both ends spin before sleeping. Each side ends its stream and reads the other's END.
    let (ch, echo) = stream_to("reply", |mut reader| {
        let schema = reader.schema().clone();
        let options = WriterOptions { capacity: 65_536, spin_micros: 50, ..WriterOptions::default() };
        let mut w = reader.open_reply(schema, options).unwrap();
        let mut echoed = 0;
        while let Some(item) = reader.read().unwrap() {
            w.write(&item.batch).unwrap();
            echoed += 1;
        }
        w.finish(T).unwrap();
        echoed
    });
    // No dictionary column: an echoing writer keeps the dictionaries it sent (for deltas), and
    // those arrays would hold their records in the ring.
    let schema = Arc::new(big_schema().project(&[0, 1]).unwrap());
    let mut w = stream::open_stream(ch, schema.clone(), WriterOptions { capacity: 65_536, ..WriterOptions::default() }).unwrap();
    let mut replies = w.accept_reply(ReaderOptions { spin_micros: 50, ..reader_options() }, T).unwrap();
    for i in 0..200 {
        let sent = batch(1 + i % 50, 1).project(&[0, 1]).unwrap();
        w.write(&sent).unwrap();
        let reply = replies.read().unwrap().expect("a reply");
        assert_eq!(reply.sequence, i as u64);
        assert_eq!(reply.batch, sent, "reply {i}");
    }
    w.finish(T).unwrap();
    assert!(replies.read().unwrap().is_none(), "the reply stream ends after the echo's END");
    assert_eq!(echo.join().unwrap(), 200);
}
