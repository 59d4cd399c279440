//! Inline tables this peer sends (PROTOCOL.md §5.3): to real Node and Python receivers (every
//! small gold stream arrives equal, and no segment is made for it), at the frame's room boundary,
//! to a side that did not list `inline` (a fake listener that reads the raw frames), with
//! `max_inline_bytes`, and request/respond between two Rust channels. Needs node with the built
//! Node package (`npx tsc -p .`) and the Python venv (.build/venv), as scripts/test.sh makes them.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_shm::frame::{inline_room, kv_get, Frame, KeyValues, Kind, FLAG_INLINE, FLAG_REQUEST, FLAG_RESPONSE, MAX_FRAME};
use arrow_shm::{channel, ipc, sys, Listener, Options};
use common::*;

const T: Option<Duration> = Some(Duration::from_secs(20));

/// The tests compare what this process has open: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn addr(tag: &str) -> String {
    format!("@arrow-shm-rs-inline-{}-{tag}-{}", std::process::id(), rand_u64())
}

/// The memfds this process has open (a segment send leaves its size's spare one open).
fn memfds() -> Vec<String> {
    open_fds().into_iter().filter(|f| f.contains("memfd:")).collect()
}

/// Waits (up to 10 s) until `memfds()` differs from `before`.
fn memfd_appears(before: &[String]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while memfds() == before {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A valid IPC stream of exactly `len` bytes: a small gold stream, then zeros (ignored after
/// the end-of-stream marker, PROTOCOL.md §7).
fn stream_of(len: usize) -> Vec<u8> {
    let mut s = std::fs::read(testdata().join("arrow-gold/1.0.0-littleendian/generated_null_trivial.stream")).unwrap();
    assert!(s.len() <= len);
    s.resize(len, 0);
    s
}

fn meta(i: usize) -> KeyValues {
    // 17 bytes + the digits of key/values: the stream starts at 88 after padding (up to 7 digits)
    vec![("index".into(), i.to_string())]
}

// ------------------------------------------------------------------ real Node and Python receivers

/// A Node or Python `recv` listening for `count` tables, writing them to `dir/NNNNNN.arrows`.
struct Receiver {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Receiver {
    fn start(peer: &str, count: usize) -> Receiver {
        let (address, dir) = (addr(peer), tmpdir(peer));
        let mut cmd = match peer {
            "node" => {
                let cli = repo().join("dist/src/cli/main.js");
                assert!(cli.is_file(), "build the Node package first (npx tsc -p .): {cli:?}");
                let mut c = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
                c.arg(cli);
                c
            }
            _ => {
                let python = repo().join(".build/venv/bin/python");
                assert!(python.is_file(), "make the Python venv first (scripts/ensure-venv.sh): {python:?}");
                let mut c = Command::new(python);
                c.args(["-m", "arrow_shm"]).current_dir(repo().join("peers/python"));
                c
            }
        };
        let count = count.to_string();
        cmd.args(["recv", "--socket", &address, "--count", &count, "--out", dir.to_str().unwrap(), "--timeout-ms", "20000"]);
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "{peer} recv: {line}");
        Receiver { child, address, dir }
    }

    /// Waits for the receiver to exit successfully; the files it wrote, in order.
    fn finish(mut self) -> Vec<Vec<u8>> {
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut rest);
        assert!(status.success(), "recv failed: {rest}");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir).unwrap().map(|f| f.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The same tables: equal bytes, or (a receiver writes a stream up to its end-of-stream marker)
/// equal decoded batches.
fn assert_same_table(got: &[u8], sent: &[u8], what: &str) {
    if got == sent {
        return;
    }
    let decode = |b: &[u8]| ipc::decode_stream(&buffer_of(b)).map(|t| (t.schema, t.batches));
    let (g, s) = (decode(got).unwrap(), decode(sent).unwrap());
    assert!(g == s, "{what}: the received table differs");
}

fn sends_inline_to(peer: &str) {
    let _serial = serial();
    let room = inline_room(&meta(0)).unwrap();
    let small: Vec<(String, Vec<u8>)> = gold_streams()
        .iter()
        .map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(f).unwrap()))
        .filter(|(_, b)| b.len() <= room)
        .collect();
    assert!(small.len() >= 10, "{} gold streams fit a frame", small.len());
    let receiver = Receiver::start(peer, small.len() + 2);
    let mut ch = channel::connect(&receiver.address, Options { timeout: T, ..Options::default() }).unwrap();
    assert!(ch.peer_capabilities().iter().any(|c| c == "inline"), "{peer}: {:?}", ch.peer_capabilities());
    let before = memfds();
    let mut sent = Vec::new();
    for (i, (_, bytes)) in small.iter().enumerate() {
        ch.send_bytes(bytes, &meta(i), T).unwrap();
        sent.push(bytes.clone());
    }
    ch.send_bytes(&stream_of(room), &meta(small.len()), T).unwrap(); // exactly the room: inline
    sent.push(stream_of(room));
    // No segment was made: a segment send would leave a spare of its size open.
    assert_eq!(memfds(), before, "an inline send created a memfd");
    ch.send_bytes(&stream_of(room + 1), &meta(small.len() + 1), T).unwrap(); // one byte over: a segment
    sent.push(stream_of(room + 1));
    assert!(memfd_appears(&before), "a segment send prepares a spare");
    ch.close();
    assert_eq!(memfds(), before, "closing the channel closes its spare");
    let got = receiver.finish();
    assert_eq!(got.len(), sent.len());
    let names = small.iter().map(|(n, _)| n.clone()).chain(["room".into(), "room+1".into()]);
    for ((g, s), name) in got.iter().zip(&sent).zip(names) {
        assert_same_table(g, s, &format!("{peer}: {name}"));
    }
}

#[test]
fn small_tables_go_inline_to_node() {
    sends_inline_to("node");
}

#[test]
fn small_tables_go_inline_to_python() {
    sends_inline_to("python");
}

// ------------------------------------------------------------------ a fake listener's view

/// A TABLE as a fake listener read it: flags, fds attached, the stream (inline or in the segment).
#[derive(Debug)]
struct Seen {
    flags: u8,
    fds: usize,
    stream: Vec<u8>,
}

/// A fake listener that answers HELLO listing `capabilities`, then ACKs `count` TABLEs.
fn fake_listener(capabilities: &'static str, count: usize) -> (String, JoinHandle<Vec<Seen>>) {
    let address = addr("fake");
    let (listener, _) = sys::bind_listen(&sys::Address::parse(&address).unwrap(), libc::SOCK_SEQPACKET, 4).unwrap();
    let thread = std::thread::spawn(move || {
        let conn = sys::accept(listener.as_raw_fd(), Some(Instant::now() + Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; MAX_FRAME];
        let mut read = |conn: &OwnedFd| {
            sys::wait_readable(conn.as_raw_fd(), Some(Instant::now() + Duration::from_secs(10)), "frame").unwrap();
            let r = sys::recv_with_fds(conn.as_raw_fd(), &mut buf).unwrap();
            (Frame::decode(&buf[..r.len]).unwrap(), r.fds, buf[..r.len].to_vec())
        };
        let send = |conn: &OwnedFd, mut f: Frame, id: u64| {
            f.message_id = id;
            sys::send_with_fds(conn.as_raw_fd(), &f.encode().unwrap(), &[]).unwrap();
        };
        let (hello, _, _) = read(&conn);
        assert_eq!(hello.kind, Kind::Hello);
        let mut welcome = Frame::new(Kind::Welcome);
        welcome.metadata = vec![
            ("version".into(), "1".into()),
            ("capabilities".into(), capabilities.into()),
            ("implementation".into(), "fake".into()),
            ("pid".into(), "1".into()),
            ("max_message_bytes".into(), "1000000".into()),
        ];
        send(&conn, welcome, 1);
        let mut seen = Vec::new();
        for i in 0..count {
            let (t, fds, raw) = read(&conn);
            assert_eq!(t.kind, Kind::Table);
            assert_eq!(t.fd_count as usize, fds.len());
            let (start, len) = (t.ipc_offset as usize, t.ipc_length as usize);
            let stream = if t.flags & FLAG_INLINE != 0 {
                raw[start..start + len].to_vec()
            } else {
                let (map, _) = arrow_shm::segment::open_segment(fds[0].as_raw_fd(), t.ipc_offset, Some(t.ipc_length), u64::MAX, false).unwrap();
                map.as_slice()[start..start + len].to_vec()
            };
            seen.push(Seen { flags: t.flags, fds: fds.len(), stream });
            let mut ack = Frame::new(Kind::Ack);
            ack.correlation_id = t.message_id;
            send(&conn, ack, 2 + i as u64);
        }
        seen
    });
    (address, thread)
}

/// Sends `streams` with `opts` to a fake listener listing `capabilities`; what it saw.
fn sent_to_fake(capabilities: &'static str, opts: Options, streams: &[Vec<u8>]) -> Vec<Seen> {
    let (address, fake) = fake_listener(capabilities, streams.len());
    let mut ch = channel::connect(&address, Options { timeout: T, ..opts }).unwrap();
    for s in streams {
        ch.send_bytes(s, &vec![], T).unwrap();
    }
    let seen = fake.join().unwrap();
    drop(ch);
    for (s, sent) in seen.iter().zip(streams) {
        assert_eq!(&s.stream, sent);
    }
    seen
}

fn shapes(seen: &[Seen]) -> Vec<(bool, usize)> {
    seen.iter().map(|s| (s.flags & FLAG_INLINE != 0, s.fds)).collect()
}

#[test]
fn inline_only_when_listed_enabled_and_it_fits() {
    let _serial = serial();
    let room = MAX_FRAME - 64; // no metadata
    let streams = [stream_of(1000), stream_of(room), stream_of(room + 1)];
    // A peer that lists `inline`: inline up to the room, a segment past it.
    let seen = sent_to_fake("stream,inline", Options::default(), &streams);
    assert_eq!(shapes(&seen), [(true, 0), (true, 0), (false, 1)]);
    // A peer that does not: always a segment.
    assert_eq!(shapes(&sent_to_fake("stream", Options::default(), &streams)), [(false, 1); 3]);
    // max_inline_bytes: 0 never, N up to N bytes.
    assert_eq!(shapes(&sent_to_fake("inline", Options { max_inline_bytes: 0, ..Options::default() }, &streams)), [(false, 1); 3]);
    let small = [stream_of(1000), stream_of(1001)];
    assert_eq!(shapes(&sent_to_fake("inline", Options { max_inline_bytes: 1000, ..Options::default() }, &small)), [(true, 0), (false, 1)]);
}

// ------------------------------------------------------------------ request and respond

fn symbols(rows: u32) -> RecordBatch {
    let ids: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..rows));
    let names: ArrayRef = Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("sym-{i}"))));
    RecordBatch::try_from_iter([("id", ids), ("name", names)]).unwrap()
}

#[test]
fn requests_and_responses_go_inline_without_a_segment() {
    let _serial = serial();
    let a = addr("rr");
    let lst = Listener::bind(&a, Options::default()).unwrap();
    let (question, answer) = (symbols(100), symbols(7));
    let (q2, a2) = (question.clone(), answer.clone());
    let before = memfds();
    let responder = std::thread::spawn(move || {
        let mut ch = lst.accept(T).unwrap();
        let m = ch.receive(T).unwrap();
        assert_eq!(m.flags, FLAG_REQUEST | FLAG_INLINE);
        assert_eq!(m.decode().unwrap().batches, vec![q2]);
        ch.respond(m.message_id, &a2.schema(), std::slice::from_ref(&a2), &vec![("k".into(), "v".into())], T).unwrap();
        ch.receive(T).unwrap_err(); // the requester's GOODBYE
    });
    let mut ch = channel::connect(&a, Options { timeout: T, ..Options::default() }).unwrap();
    let r = ch.request(&question.schema(), std::slice::from_ref(&question), &vec![], T).unwrap();
    assert_eq!(r.flags, FLAG_RESPONSE | FLAG_INLINE);
    assert_eq!(kv_get(&r.metadata, "k"), Some("v"));
    assert_eq!(r.decode().unwrap().batches, vec![answer]);
    assert_eq!(memfds(), before, "an inline request or response created a memfd");
    drop(r);
    ch.close();
    responder.join().unwrap();
}

/// `send --max-inline-bytes N` (as the C++ CLI): the CLI's sends follow the option.
#[test]
fn cli_send_max_inline_bytes() {
    let _serial = serial();
    let file = tmpdir("cli").join("small.arrows");
    std::fs::write(&file, stream_of(2000)).unwrap();
    for (flag, want) in [(None, (true, 0)), (Some("0"), (false, 1)), (Some("1999"), (false, 1)), (Some("2000"), (true, 0))] {
        let (address, fake) = fake_listener("stream,inline", 1);
        let mut args = vec!["send", "--socket", &address, "--timeout-ms", "20000"];
        if let Some(n) = flag {
            args.extend(["--max-inline-bytes", n]);
        }
        args.push(file.to_str().unwrap());
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(shapes(&fake.join().unwrap()), [want], "{args:?}");
    }
    let out = Command::new(bin()).args(["send", "--socket", "@x", "--max-inline-bytes", "-1", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

// ------------------------------------------------------------------ measurement (not a timed test)

/// A Node receiver of two connections that takes and closes every table (its ACK goes out when
/// the table is checked, before this script sees it).
const NODE_SINK: &str = r#"
const { listen } = await import(process.argv[1]);
const listener = listen(process.argv[2]);
console.error('arrow-shm: listening on', process.argv[2]);
const serve = async (ch) => { try { for (;;) (await ch.receive()).close(); } catch {} };
const first = serve(await listener.accept());
const second = serve(await listener.accept());
listener.close();
await Promise.all([first, second]);
"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Send→ACK of a 100-row table (id u32, name utf8), inline vs in a segment (`max_inline_bytes`
/// 0), to a Rust receiver (a thread) and a Node one, rounds alternating; medians in µs:
/// `cargo test --release --manifest-path peers/rust/Cargo.toml --target-dir .build/rust --test inline -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_inline_vs_segment() {
    let _serial = serial();
    let batch = symbols(100);
    let len = ipc::batches_to_stream(&batch.schema(), std::slice::from_ref(&batch)).unwrap().len();
    for peer in ["rust", "node"] {
        let address = addr("measure");
        let (mut node, mut rust) = (None, None);
        if peer == "node" {
            let mut child = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()))
                .args(["--input-type=module", "-e", NODE_SINK, repo().join("dist/src/index.js").to_str().unwrap(), &address])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut line).unwrap();
            assert!(line.contains("listening on"), "{line}");
            node = Some(child);
        } else {
            let lst = Listener::bind(&address, Options::default()).unwrap();
            rust = Some(std::thread::spawn(move || {
                let serve = |mut ch: channel::Channel| std::thread::spawn(move || while ch.receive(None).is_ok() {});
                let first = serve(lst.accept(T).unwrap());
                let second = serve(lst.accept(T).unwrap());
                first.join().unwrap();
                second.join().unwrap();
            }));
        }
        let open = |max_inline_bytes| channel::connect(&address, Options { timeout: T, max_inline_bytes, ..Options::default() }).unwrap();
        let mut channels = [open(MAX_FRAME), open(0)];
        let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..12 {
            for (ch, t) in channels.iter_mut().zip(times.iter_mut()) {
                for _ in 0..500 {
                    let start = Instant::now();
                    ch.send_batches(&batch.schema(), std::slice::from_ref(&batch), &vec![], T).unwrap();
                    if round > 1 {
                        t.push(start.elapsed().as_secs_f64() * 1e6); // the first rounds warm up
                    }
                }
            }
        }
        for ch in channels {
            ch.close();
        }
        if let Some(mut child) = node {
            assert!(child.wait().unwrap().success());
        }
        if let Some(thread) = rust {
            thread.join().unwrap();
        }
        let [inline, segment] = times.map(median);
        println!("rust -> {peer}, 100 rows ({len} B of IPC), send->ACK median: inline {inline:.1} us, segment {segment:.1} us, segment/inline {:.2}x", segment / inline);
    }
}
