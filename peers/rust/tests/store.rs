//! The Rust table store client (PROTOCOL.md §15) and CLI against a real Node store process
//! (`node dist/src/cli/main.js store`), and against a fake store that answers with hostile frames.
//! Needs node and the built Node package (`npx tsc -p .`; scripts/test.sh builds it): without
//! them the tests fail, they never skip.
//!
//! The tests of this file run one at a time (`serial()`): the leak test compares what the whole
//! process has open.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_ipc as fb;
use arrow_shm::frame::{kv_get, Frame, Kind, FLAG_LEASED, FLAG_RESPONSE};
use arrow_shm::segment::{add_seals, WritableSegment};
use arrow_shm::store::{open_store, PutData, PutOptions, StoreClient, StoreEventKind, StoreOptions};
use arrow_shm::{ipc, sys, ErrorCode, Options};
use common::*;

const T: Option<Duration> = Some(Duration::from_secs(10));

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `node` and the built Node CLI: a clear failure (not a skip) if either is missing.
fn node_cli() -> (String, PathBuf) {
    let cli = repo().join("dist/src/cli/main.js");
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let ok = Command::new(&node).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "these tests need node on PATH (or $NODE) to run the Node table store");
    assert!(cli.is_file(), "these tests need the built Node package: {} is missing (run `npx tsc -p .`)", cli.display());
    (node, cli)
}

/// A Node store process on an abstract address; SIGTERM on drop, which it must survive cleanly.
struct NodeStore {
    address: String,
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl NodeStore {
    fn start(extra: &[&str]) -> NodeStore {
        let (node, cli) = node_cli();
        let address = format!("@ashm-rs-store-{}-{}", std::process::id(), rand_u64());
        let mut child = Command::new(node)
            .arg(cli)
            .args(["store", "--socket", &address])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        assert!(first.contains("listening on"), "the Node store did not start: {first}");
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        });
        NodeStore { address, child, stderr: Some(stderr) }
    }

    fn client(&self) -> StoreClient {
        open_store(&self.address, StoreOptions { options: Options { timeout: T, ..Options::default() }, ..StoreOptions::default() }).unwrap()
    }
}

impl Drop for NodeStore {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default();
        if !std::thread::panicking() {
            assert!(status.success(), "the Node store exited with {status}: {stderr}");
        }
    }
}

fn node_run(args: &[&str], input: Option<&str>) -> std::process::Output {
    let (node, _) = node_cli();
    let mut child = Command::new(node).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.unwrap_or("").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A Node client of the same store: put or get (and compare) every [name, file] of stdin.
const NODE_SCRIPT: &str = r#"
import { readFileSync } from 'node:fs';
const { openStore } = await import(process.argv[1]);
const [, , mode, address] = process.argv;
const files = JSON.parse(readFileSync(0, 'utf8'));
const store = await openStore(address);
try {
  for (const [name, file] of files) {
    const data = readFileSync(file);
    if (mode === 'put') { await store.put(name, new Uint8Array(data), { metadata: { from: 'node' } }); continue; }
    const m = await store.get(name);
    try {
      if (!Buffer.from(m.bytes).equals(data)) throw new Error(`${name}: bytes differ`);
      if (m.metadata.from !== 'rust' || m.metadata['arrow-shm.name'] !== name) throw new Error(`${name}: ${JSON.stringify(m.metadata)}`);
    } finally { m.close(); }
  }
} finally { store.close(); }
console.log('ok', files.length);
"#;

fn node_client(mode: &str, address: &str, files: &[(String, PathBuf)]) {
    let client = format!("file://{}", repo().join("dist/src/store/client.js").display());
    let json: Vec<String> = files.iter().map(|(n, f)| format!("[{n:?},{:?}]", f.display().to_string())).collect();
    let out = node_run(&["--input-type=module", "-e", NODE_SCRIPT, &client, mode, address], Some(&format!("[{}]", json.join(","))));
    assert!(out.status.success(), "node {mode}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ok {}", files.len()));
}

fn gold_names() -> Vec<(String, PathBuf)> {
    let root = testdata().join("arrow-gold");
    gold_streams().into_iter().map(|p| (p.strip_prefix(&root).unwrap().to_string_lossy().into_owned(), p)).collect()
}

fn meta(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn prices(n: usize) -> RecordBatch {
    let syms: ArrayRef = Arc::new(StringArray::from((0..n).map(|i| ["AAPL", "GOOG", "MSFT"][i % 3]).collect::<Vec<_>>()));
    let px: ArrayRef = Arc::new(Float64Array::from((0..n).map(|i| i as f64).collect::<Vec<_>>()));
    RecordBatch::try_from_iter([("sym", syms), ("px", px)]).unwrap()
}

/// Decoded batches of an IPC stream, or the decode error's code (some gold files use types
/// arrow-rs cannot decode: then both sides must fail alike).
fn decoded(bytes: &[u8]) -> Result<Vec<RecordBatch>, ErrorCode> {
    ipc::decode_stream(&buffer_of(bytes)).map(|t| t.batches).map_err(|e| e.code)
}

// ------------------------------------------------------------------ against the Node store

#[test]
fn gold_files_put_and_get_across_rust_and_node() {
    let _serial = serial();
    let store = NodeStore::start(&[]);
    let client = store.client();
    let names = gold_names();
    for (name, file) in &names {
        let data = std::fs::read(file).unwrap();
        let put = client.put(&format!("rs/{name}"), &data, &PutOptions { metadata: meta(&[("from", "rust")]), replace: false }).unwrap();
        assert!(put.bytes >= data.len() as u64 && put.version > 0, "{name}: {put:?}");
        let got = client.get(&format!("rs/{name}"), None).unwrap(); // Rust -> Rust
        assert_eq!(got.ipc_bytes(), &data[..], "{name}");
        let version = put.version.to_string();
        let rs_name = format!("rs/{name}");
        assert_eq!(got.metadata, meta(&[("from", "rust"), ("arrow-shm.name", &rs_name), ("arrow-shm.version", &version)]), "{name}");
        let expected = decoded(&data);
        assert_eq!(got.decode().map(|t| t.batches).map_err(|e| e.code), expected, "{name}");
        if let Ok(batches) = expected {
            assert_eq!(put.rows, batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(), "{name}");
        }
    }
    let rs: Vec<(String, PathBuf)> = names.iter().map(|(n, f)| (format!("rs/{n}"), f.clone())).collect();
    node_client("get", &store.address, &rs); // Rust -> Node
    let from_node: Vec<(String, PathBuf)> = names.iter().map(|(n, f)| (format!("node/{n}"), f.clone())).collect();
    node_client("put", &store.address, &from_node); // Node -> Rust
    for (name, file) in &from_node {
        let got = client.get(name, None).unwrap();
        assert_eq!(got.ipc_bytes(), &std::fs::read(file).unwrap()[..], "{name}");
        assert_eq!(kv_get(&got.metadata, "from"), Some("node"));
    }
    let listed: Vec<String> = client.list("node/").unwrap().into_iter().map(|e| e.name).collect();
    let mut want: Vec<String> = from_node.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(listed, want);
}

#[test]
fn cli_put_get_ls_rm_across_rust_and_node() {
    let _serial = serial();
    let store = NodeStore::start(&[]);
    let (_, cli) = node_cli();
    let cli = cli.to_string_lossy().into_owned();
    let dir = tmpdir("store-cli");
    let (_, file) = gold_names().into_iter().find(|(n, _)| n.contains("primitive")).unwrap_or_else(|| gold_names().remove(0));
    let data = std::fs::read(&file).unwrap();
    let rs = |args: &[&str]| Command::new(bin()).args(args).output().unwrap();
    let file_s = file.to_string_lossy().into_owned();

    // Rust CLI put -> Node CLI get --out, byte for byte.
    let put = rs(&["put", "--store", &store.address, "t/rs", &file_s, "--meta", "k=v"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let line = String::from_utf8(put.stdout).unwrap();
    assert!(line.starts_with("t/rs\tversion 1\t") && line.ends_with(" rows\n"), "{line:?}");
    let out = dir.join("from-rust.arrows");
    let get = node_run(&[&cli, "get", "--store", &store.address, "t/rs", "--out", out.to_str().unwrap()], None);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Node CLI put -> Rust CLI get --out and --print.
    let put = node_run(&[&cli, "put", "--store", &store.address, "t/node", &file_s], None);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let out = dir.join("from-node.arrows");
    let get = rs(&["get", "--store", &store.address, "t/node", "--out", out.to_str().unwrap(), "--print"]);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(String::from_utf8_lossy(&get.stdout).contains("arrow-shm.name=t/node"));

    // ls: the same lines as the Node CLI's (age aside); rm; a second rm and put are refused.
    let ls = |prog: &dyn Fn(&[&str]) -> std::process::Output| {
        let o = prog(&["ls", "--store", &store.address, "--prefix", "t/"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().lines().map(|l| l.rsplit_once('\t').unwrap().0.to_string()).collect::<Vec<_>>()
    };
    let node_ls = |args: &[&str]| node_run(&[&[cli.as_str()][..], args].concat(), None);
    let rs_lines = ls(&rs);
    assert_eq!(rs_lines.len(), 2, "{rs_lines:?}");
    assert!(rs_lines[0].starts_with("t/node\t"));
    assert_eq!(rs_lines, ls(&node_ls));
    assert!(rs(&["rm", "--store", &store.address, "t/rs"]).status.success());
    let again = rs(&["rm", "--store", &store.address, "t/rs"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("arrow-shm: ERR_NOT_FOUND: "));
    let exists = rs(&["put", "--store", &store.address, "t/node", &file_s]);
    assert!(String::from_utf8_lossy(&exists.stderr).starts_with("arrow-shm: ERR_EXISTS: "));
    assert!(rs(&["put", "--store", &store.address, "t/node", &file_s, "--replace"]).status.success());
    let missing = rs(&["get", "--store", &store.address, "t/none", "--timeout-ms", "200"]);
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("arrow-shm: ERR_TIMEOUT: "), "{missing:?}");
    // usage errors: exit 2, nothing sent
    assert_eq!(rs(&["put", "--store", &store.address, "only-a-name"]).status.code(), Some(2));
    assert_eq!(rs(&["get", "t/node"]).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn batches_put_and_get_and_the_errors_a_store_answers() {
    let _serial = serial();
    let store = NodeStore::start(&[]);
    let client = store.client();
    let batch = prices(1000);
    let put = client.put("p/batches", &batch, &PutOptions::default()).unwrap();
    assert_eq!(put.rows, 1000);
    let got = client.get("p/batches", None).unwrap();
    assert_eq!(got.decode().unwrap().batches, vec![batch.clone()]);
    let two = [prices(3), prices(5)];
    assert_eq!(client.put("p/two", PutData::Batches(&two[0].schema(), &two), &PutOptions::default()).unwrap().rows, 8);

    let code = |r: arrow_shm::Result<_>| r.map(|_: arrow_shm::store::PutResult| ()).unwrap_err().code;
    assert_eq!(code(client.put("p/batches", &batch, &PutOptions::default())), ErrorCode::Exists);
    let replaced = client.put("p/batches", &prices(2), &PutOptions { replace: true, ..PutOptions::default() }).unwrap();
    assert!(replaced.version > put.version);
    assert_eq!(got.decode().unwrap().num_rows(), 1000, "a reader of the old version keeps it");
    assert_eq!(code(client.put("bad name", &batch, &PutOptions::default())), ErrorCode::InvalidArgument);
    assert_eq!(code(client.put("p/x", &batch, &PutOptions { metadata: meta(&[("arrow-shm.x", "1")]), replace: false })), ErrorCode::InvalidArgument);
    assert!(code(client.put("p/x", &b"not arrow"[..], &PutOptions::default())).as_str().starts_with("ERR_IPC_"));
    let big = meta(&[("k", &"v".repeat(20_000))]);
    assert_eq!(code(client.put("p/x", &batch, &PutOptions { metadata: big, replace: false })), ErrorCode::ResourceLimit);
    assert_eq!(client.get("p/none", None).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(client.get(&"n".repeat(257), None).unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(client.delete("p/none").unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(client.delete("p/two").unwrap(), 2);

    let stats = client.stats().unwrap();
    assert_eq!((stats.entries, stats.evict.as_str()), (1, "lru"));
    assert!(stats.held_bytes > 0 && stats.bytes >= stats.held_bytes && stats.memory > 0, "{stats:?}");
    drop(got);
    let entries = client.list("").unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!((e.name.as_str(), e.version, e.rows, e.holds), ("p/batches", replaced.version, 2, 0));
    assert!(e.ipc_length > 0 && e.bytes >= e.ipc_length && e.created_ms > 1_700_000_000_000, "{e:?}");
    assert_eq!(client.stats().unwrap().held_bytes, 0, "the replaced version was dropped with its last hold");
}

#[test]
fn a_get_with_a_timeout_waits_for_a_later_put() {
    let _serial = serial();
    let store = NodeStore::start(&[]);
    let client = Arc::new(store.client());
    let started = Instant::now();
    let c2 = client.clone();
    // The put shares the waiting client's connection: the get's wait must not block it.
    let putter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.put("w/later", &prices(10), &PutOptions { metadata: meta(&[("a", "b")]), replace: false }).unwrap()
    });
    let got = client.get("w/later", Some(Duration::from_secs(10))).unwrap();
    let put = putter.join().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(kv_get(&got.metadata, "arrow-shm.version"), Some(put.version.to_string().as_str()));
    assert_eq!(got.decode().unwrap().num_rows(), 10);
    // the store's own timeout
    let t0 = Instant::now();
    assert_eq!(client.get("w/never", Some(Duration::from_millis(200))).unwrap_err().code, ErrorCode::Timeout);
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert_eq!(client.get("w/never", Some(Duration::from_secs(1_000_000))).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn holds_are_released_when_the_last_clone_is_dropped_on_any_thread() {
    let _serial = serial();
    let store = NodeStore::start(&[]);
    let client = Arc::new(store.client());
    client.put("h/a", &prices(100), &PutOptions::default()).unwrap();
    let holds = |c: &StoreClient| c.list("h/").unwrap()[0].holds;
    let a = client.get("h/a", None).unwrap();
    let b = client.get("h/a", None).unwrap();
    let a2 = a.clone();
    assert_eq!(holds(&client), 2);
    drop(a);
    assert_eq!(holds(&client), 2, "a clone still holds it");
    drop(a2);
    assert_eq!(holds(&client), 1);
    // Another thread blocks reading the connection (a watch) while this one drops the table:
    // its RELEASE goes out at once.
    let mut watch = client.watch("h/").unwrap();
    let waiter = std::thread::spawn(move || watch.next_timeout(Some(Duration::from_secs(10))).unwrap().unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let table = b.decode().unwrap(); // the decoded table keeps the mapping, not the hold
    drop(b);
    let other = store.client();
    assert_eq!(holds(&other), 0);
    other.put("h/b", &prices(1), &PutOptions::default()).unwrap();
    assert_eq!(waiter.join().unwrap().name, "h/b");
    assert_eq!(table.num_rows(), 100);
}

#[test]
fn watch_sees_puts_deletes_and_evictions_and_ends_with_its_client() {
    let _serial = serial();
    let store = NodeStore::start(&["--memory", "100000"]); // room for one 64 KiB table, not two
    let client = store.client();
    let mut watch = client.watch("w/").unwrap();
    let mut everything = client.watch("").unwrap();
    let put = client.put("w/a", &prices(10), &PutOptions::default()).unwrap();
    client.put("x/b", &prices(4000), &PutOptions::default()).unwrap();
    assert_eq!(client.delete("w/a").unwrap(), put.version);
    let next = |w: &mut arrow_shm::StoreWatch| w.next_timeout(T).unwrap().unwrap();
    let e = next(&mut watch);
    assert_eq!((e.event, e.name.as_str(), e.version, e.bytes), (StoreEventKind::Put, "w/a", put.version, Some(put.bytes)));
    let e = next(&mut watch);
    assert_eq!((e.event, e.name.as_str(), e.version, e.bytes), (StoreEventKind::Delete, "w/a", put.version, None));
    assert_eq!(watch.next_timeout(Some(Duration::from_millis(100))).unwrap_err().code, ErrorCode::Timeout);
    assert_eq!((0..3).map(|_| next(&mut everything).name).collect::<Vec<_>>(), ["w/a", "x/b", "w/a"]);
    // past the budget, the least recently used name is evicted
    client.put("w/big", &prices(4000), &PutOptions::default()).unwrap();
    let evicted = next(&mut everything);
    assert_eq!((evicted.event, evicted.name.as_str()), (StoreEventKind::Evict, "x/b"));
    assert_eq!(next(&mut watch).name, "w/big");
    watch.close();
    assert!(watch.next().is_none());
    client.close();
    assert!(everything.next().is_none(), "a closed client ends its watches cleanly");
    assert_eq!(client.list("").unwrap_err().code, ErrorCode::Closed);
}

// ------------------------------------------------------------------ against a fake store

fn read_frame(conn: &OwnedFd) -> (Frame, Vec<OwnedFd>) {
    let mut buf = vec![0u8; 65536];
    sys::wait_readable(conn.as_raw_fd(), Some(Instant::now() + Duration::from_secs(10)), "frame").unwrap();
    let r = sys::recv_with_fds(conn.as_raw_fd(), &mut buf).unwrap();
    (Frame::decode(&buf[..r.len]).unwrap(), r.fds)
}

fn send(conn: &OwnedFd, id: u64, mut frame: Frame, fds: &[i32]) {
    frame.message_id = id;
    frame.fd_count = fds.len() as u32;
    sys::send_with_fds(conn.as_raw_fd(), &frame.encode().unwrap(), fds).unwrap();
}

/// A fake store: accepts one client, answers its HELLO listing `capabilities`, then runs `script`
/// on the connection (the client's first request already read).
fn fake_store(capabilities: &'static str, script: impl FnOnce(&OwnedFd, Frame) + Send + 'static) -> (String, JoinHandle<()>) {
    let address = format!("@ashm-rs-fake-{}-{}", std::process::id(), rand_u64());
    let (listener, _) = sys::bind_listen(&sys::Address::parse(&address).unwrap(), libc::SOCK_SEQPACKET, 4).unwrap();
    let thread = std::thread::spawn(move || {
        let conn = sys::accept(listener.as_raw_fd(), Some(Instant::now() + Duration::from_secs(10))).unwrap();
        drop(listener);
        let (hello, _) = read_frame(&conn);
        assert_eq!(kv_get(&hello.metadata, "capabilities"), Some("store"));
        let mut welcome = Frame::new(Kind::Welcome);
        welcome.metadata = meta(&[("version", "1"), ("capabilities", capabilities), ("implementation", "fake"), ("pid", "1"), ("max_message_bytes", "1000000")]);
        send(&conn, 1, welcome, &[]);
        if capabilities.contains("store") {
            let (request, _) = read_frame(&conn);
            script(&conn, request);
        } else {
            let (error, _) = read_frame(&conn);
            assert_eq!(kv_get(&error.metadata, "code"), Some("ERR_PROTOCOL"));
        }
    });
    (address, thread)
}

fn fake_client(address: &str, options: StoreOptions) -> StoreClient {
    open_store(address, StoreOptions { options: Options { timeout: T, ..Options::default() }, ..options }).unwrap()
}

/// A segment holding `bytes`, sealed with `seals` (0: unsealed).
fn segment(bytes: &[u8], seals: i32) -> OwnedFd {
    let mut seg = WritableSegment::new(bytes.len()).unwrap();
    seg.write_at(0, &[bytes]).unwrap();
    let fd = seg.finish(false).unwrap();
    if seals != 0 {
        add_seals(fd.as_raw_fd(), seals).unwrap();
    }
    fd
}

fn table_answer(request: &Frame, len: usize, flags: u8) -> Frame {
    let mut t = Frame::new(Kind::Table);
    t.flags = FLAG_RESPONSE | flags;
    t.correlation_id = request.message_id;
    t.ipc_length = len as u64;
    t
}

fn gold_bytes() -> Vec<u8> {
    ipc::batches_to_stream(&prices(3).schema(), &[prices(3)]).unwrap()
}

/// Answers a get with a segment sealed `seals`; the client must refuse it with `code` and say so
/// with an ERROR for that TABLE (which ends the hold).
fn refused_get(seals: i32, code: ErrorCode) {
    let bytes = gold_bytes();
    let (address, fake) = fake_store("store", move |conn, request| {
        assert_eq!(kv_get(&request.metadata, "op"), Some("get"));
        let fd = segment(&bytes, seals);
        send(conn, 2, table_answer(&request, bytes.len(), FLAG_LEASED), &[fd.as_raw_fd()]);
        let (error, _) = read_frame(conn);
        assert_eq!((error.kind, error.correlation_id), (Kind::Error, 2));
        assert_eq!(kv_get(&error.metadata, "code"), Some(code.as_str()));
    });
    let client = fake_client(&address, StoreOptions::default());
    assert_eq!(client.get("x", None).unwrap_err().code, code);
    fake.join().unwrap();
}

#[test]
fn hostile_store_answers_are_refused_with_typed_errors() {
    let _serial = serial();
    let full = arrow_shm::segment::REQUIRED_SEALS;
    let lease_only = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    refused_get(0, ErrorCode::SegmentUnsealed);
    refused_get(lease_only, ErrorCode::SegmentUnsealed); // a held answer keeps the sealed policy
    assert!(memfd_maps().is_empty(), "a refused segment is never mapped");

    // An unasked held table: handed back with RELEASE, never mapped; then a put answered with a
    // malformed decimal is ERR_PROTOCOL, and the connection goes on.
    let bytes = gold_bytes();
    let (address, fake) = fake_store("store", move |conn, request| {
        let fd = segment(&bytes, full);
        let mut unasked = table_answer(&request, bytes.len(), FLAG_LEASED);
        unasked.correlation_id = 999;
        send(conn, 2, unasked, &[fd.as_raw_fd()]);
        let mut answer = Frame::new(Kind::Store);
        answer.flags = FLAG_RESPONSE;
        answer.correlation_id = request.message_id;
        answer.metadata = meta(&[("version", "007"), ("bytes", "1"), ("rows", "1")]);
        send(conn, 3, answer, &[]);
        let (release, _) = read_frame(conn);
        assert_eq!((release.kind, release.correlation_id), (Kind::Release, 2));
        let (stats, _) = read_frame(conn);
        let mut answer = Frame::new(Kind::Error);
        answer.flags = FLAG_RESPONSE;
        answer.correlation_id = stats.message_id;
        answer.metadata = meta(&[("code", "ERR_NEW_CODE"), ("message", "?")]);
        send(conn, 4, answer, &[]);
        let _ = read_frame(conn); // GOODBYE
    });
    let client = fake_client(&address, StoreOptions::default());
    assert_eq!(client.put("x", &prices(1), &PutOptions::default()).unwrap_err().code, ErrorCode::Protocol);
    assert_eq!(client.stats().unwrap_err().code, ErrorCode::Remote);
    client.close();
    fake.join().unwrap();

    // A listing claiming 10^12 rows: refused before anything is decoded; a listing over
    // max_list_entries too.
    for (claimed, max_entries) in [(1_000_000_000_000i64, 1_048_576), (3, 2)] {
        let (address, fake) = fake_store("store", move |conn, request| {
            assert_eq!(kv_get(&request.metadata, "op"), Some("list"));
            let bytes = listing_claiming(claimed);
            let fd = segment(&bytes, full);
            send(conn, 2, table_answer(&request, bytes.len(), 0), &[fd.as_raw_fd()]);
            let _ = read_frame(conn);
        });
        let client = fake_client(&address, StoreOptions { max_list_entries: max_entries, ..StoreOptions::default() });
        assert_eq!(client.list("").unwrap_err().code, ErrorCode::ResourceLimit);
        drop(client);
        fake.join().unwrap();
    }

    // A listing larger than max_list_bytes is not mapped (ERR_TOO_LARGE, the store is told).
    let (address, fake) = fake_store("store", move |conn, request| {
        let bytes = listing_claiming(1);
        let fd = segment(&bytes, full);
        send(conn, 2, table_answer(&request, bytes.len(), 0), &[fd.as_raw_fd()]);
        let (error, _) = read_frame(conn);
        assert_eq!(kv_get(&error.metadata, "code"), Some("ERR_TOO_LARGE"));
    });
    let client = fake_client(&address, StoreOptions { max_list_bytes: 64, ..StoreOptions::default() });
    assert_eq!(client.list("").unwrap_err().code, ErrorCode::TooLarge);
    drop(client);
    fake.join().unwrap();

    // Frames that never travel on a store connection, and bad frames: fatal ERR_PROTOCOL.
    for bad in ["stream-open", "magic", "fds-on-store"] {
        let (address, fake) = fake_store("store", move |conn, request| {
            match bad {
                "stream-open" => send(conn, 2, Frame::new(Kind::StreamOpen), &[]),
                "magic" => {
                    let mut raw = Frame::new(Kind::Store).encode().unwrap();
                    raw[0] = b'X';
                    sys::send_with_fds(conn.as_raw_fd(), &raw, &[]).unwrap();
                }
                _ => {
                    let fd = segment(b"12345678", full);
                    let mut f = Frame::new(Kind::Store);
                    (f.flags, f.correlation_id) = (FLAG_RESPONSE, request.message_id);
                    send(conn, 2, f, &[fd.as_raw_fd()]);
                }
            }
            let (error, _) = read_frame(conn);
            assert_eq!((error.kind, kv_get(&error.metadata, "code")), (Kind::Error, Some("ERR_PROTOCOL")), "{bad}");
        });
        let client = fake_client(&address, StoreOptions::default());
        assert_eq!(client.delete("x").unwrap_err().code, ErrorCode::Protocol, "{bad}");
        assert!(client.is_closed());
        fake.join().unwrap();
    }

    // A watch whose events nobody takes: past max_queued_events it ends with ERR_RESOURCE_LIMIT
    // (after the events it kept) and the store is told to stop (unwatch).
    let (address, fake) = fake_store("store", |conn, watch| {
        assert_eq!(kv_get(&watch.metadata, "op"), Some("watch"));
        let mut answer = Frame::new(Kind::Store);
        (answer.flags, answer.correlation_id) = (FLAG_RESPONSE, watch.message_id);
        send(conn, 2, answer, &[]);
        let (stats, _) = read_frame(conn);
        for i in 0..4u64 {
            let mut event = Frame::new(Kind::Store);
            event.correlation_id = watch.message_id;
            event.metadata = meta(&[("event", "put"), ("name", &format!("e/{i}")), ("version", &(i + 1).to_string()), ("bytes", "64")]);
            send(conn, 3 + i, event, &[]);
        }
        let mut answer = Frame::new(Kind::Store);
        (answer.flags, answer.correlation_id) = (FLAG_RESPONSE, stats.message_id);
        answer.metadata = meta(&[("entries", "4"), ("bytes", "256"), ("held_bytes", "0"), ("memory", "1000"), ("evict", "none"), ("evictions", "0")]);
        send(conn, 7, answer, &[]);
        let (unwatch, _) = read_frame(conn);
        assert_eq!(kv_get(&unwatch.metadata, "op"), Some("unwatch"));
        assert_eq!(kv_get(&unwatch.metadata, "watch"), Some(watch.message_id.to_string().as_str()));
    });
    let client = fake_client(&address, StoreOptions { max_queued_events: 3, ..StoreOptions::default() });
    let watch = client.watch("").unwrap();
    assert_eq!(client.stats().unwrap().evict, "none"); // reads the events queued before its answer
    let seen: Vec<_> = watch.map(|e| e.map(|e| e.name).map_err(|e| e.code)).collect();
    assert_eq!(seen, [Ok("e/0".to_string()), Ok("e/1".into()), Ok("e/2".into()), Err(ErrorCode::ResourceLimit)]);
    fake.join().unwrap();
    drop(client);

    // Not a store: the WELCOME lacks `store`.
    let (address, fake) = fake_store("stream,inline", |_, _| {});
    let e = open_store(&address, StoreOptions::default()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Protocol);
    assert!(e.message.contains("not a table store"), "{e}");
    fake.join().unwrap();

    // The store hangs up while a get waits: ERR_PEER_CLOSED; a table already received stays readable.
    let bytes = gold_bytes();
    let (address, fake) = fake_store("store", move |conn, request| {
        let fd = segment(&bytes, full);
        send(conn, 2, table_answer(&request, bytes.len(), FLAG_LEASED), &[fd.as_raw_fd()]);
        let (second, _) = read_frame(conn);
        assert_eq!(kv_get(&second.metadata, "op"), Some("get"));
    });
    let client = fake_client(&address, StoreOptions::default());
    let kept = client.get("first", None).unwrap();
    assert_eq!(client.get("second", Some(Duration::from_secs(5))).unwrap_err().code, ErrorCode::PeerClosed);
    fake.join().unwrap();
    assert_eq!(kept.decode().unwrap().batches, vec![prices(3)]);
}

/// A listing stream (the §15.3 schema) whose one record batch claims `rows` rows with empty
/// buffers: well framed, so only the row bound stops it.
fn listing_claiming(rows: i64) -> Vec<u8> {
    use arrow_schema::{DataType, Field, Schema};
    let schema = Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("ipc_length", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("created_ms", DataType::Int64, false),
        Field::new("holds", DataType::UInt32, false),
        Field::new("metadata", DataType::Utf8, false),
    ]);
    let mut stream = ipc::batches_to_stream(&schema, &[]).unwrap();
    stream.truncate(stream.len() - ipc::EOS.len());
    let mut fbb = hostile::Fbb::new();
    let nodes = fbb.create_vector(&[fb::FieldNode::new(rows, 0); 8]);
    let buffers = fbb.create_vector(&[fb::Buffer::new(0, 0); 18]);
    let rb = fb::RecordBatch::create(&mut fbb, &fb::RecordBatchArgs { length: rows, nodes: Some(nodes), buffers: Some(buffers), compression: None, variadicBufferCounts: None });
    stream.extend(hostile::message(fbb, fb::MessageHeader::RecordBatch, rb.as_union_value(), None, 0));
    stream.extend_from_slice(&ipc::EOS);
    stream
}

// ------------------------------------------------------------------ leaks

/// Waits (briefly) for `now()` to equal `before`: threads the store client started end a little
/// after the call that joined them returns.
fn settled<T: PartialEq + std::fmt::Debug>(before: &T, now: impl Fn() -> T, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while &now() != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(&now(), before, "{what} leaked");
}

#[test]
fn no_fd_or_mapping_leaks() {
    let _serial = serial();
    let store = NodeStore::start(&[]);
    let round = |i: usize| {
        let client = store.client();
        let mut watch = client.watch("l/").unwrap();
        let name = format!("l/{i}");
        client.put(&name, &prices(500), &PutOptions::default()).unwrap();
        let got = client.get(&name, None).unwrap();
        let table = got.decode().unwrap();
        assert_eq!(client.list("l/").unwrap().len(), 1);
        assert_eq!(watch.next_timeout(T).unwrap().unwrap().name, name);
        client.delete(&name).unwrap();
        assert_eq!(client.get(&name, None).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(table.num_rows(), 500);
        // a refused answer leaves nothing either
        refused_get(0, ErrorCode::SegmentUnsealed);
        drop((table, got, watch, client));
    };
    round(0); // warm up (lazy statics, thread stacks)
    let (fds, maps) = (open_fds(), memfd_maps());
    for i in 1..4 {
        round(i);
    }
    settled(&fds, open_fds, "fds");
    settled(&maps, memfd_maps, "memfd mappings");
    assert!(maps.is_empty(), "{maps:?}");
}
