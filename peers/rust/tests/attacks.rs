//! Hostile amounts from a same-uid peer (PROTOCOL.md §14): the real receiver (the CLI binary)
//! against the cross-peer attacker test/python/attacks.py and raw frames built here. Each test
//! checks that the receiver stays alive, answers with a typed ERROR, serves an honest sender
//! within about 2 s afterwards, and holds no more fds or memfd mappings than before.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_shm::frame::{kv_get, Frame, Kind};
use arrow_shm::server::Server;
use arrow_shm::{channel, ipc, segment, sys, ErrorCode, Listener, Options};
use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gold() -> PathBuf {
    testdata().join("arrow-gold/1.0.0-littleendian/generated_primitive.stream")
}

/// Runs attacks.py to its end; returns its JSON lines.
fn attacker(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(repo().join(".build/venv/bin/python"))
        .arg(repo().join("test/python/attacks.py"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run attacks.py (.build/venv)");
    assert_eq!(out.status.code(), Some(0), "attacks.py {args:?}");
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The code of the attacker's first ERROR reply.
fn replied_code(events: &[serde_json::Value]) -> String {
    let reply = events.iter().find(|e| e["event"] == "reply" && e["kind"] == "ERROR").unwrap_or_else(|| panic!("no ERROR reply: {events:?}"));
    reply["code"].as_str().unwrap().to_string()
}

/// The CLI receiver, listening.
struct Receiver {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
    address: String,
}

impl Receiver {
    fn start(tag: &str, args: &[&str]) -> Receiver {
        let address = std::env::temp_dir().join(format!("arrow-shm-rs-attacks-{}-{tag}-{}.sock", std::process::id(), rand_u64()));
        let address = address.to_str().unwrap().to_string();
        let mut child = Command::new(bin()).args(["recv", "--socket", &address]).args(args).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert_eq!(line, format!("arrow-shm: listening on {address}\n"));
        Receiver { child, stderr, address }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; returns the status code and the rest of stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (status.code(), rest)
    }
}

/// A receiver killed (or left behind by a failed assertion) cannot remove its socket file.
impl Drop for Receiver {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.address);
    }
}

/// What a process has open: every fd's target (sockets and pipes by inode), sorted.
fn open_fds(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn memfd_maps(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().lines().filter(|l| l.contains("memfd:")).count()
}

/// Waits up to 2 s for the receiver's connection threads to close what the attackers left.
fn assert_holds_only(pid: u32, fds: &[String]) {
    let until = Instant::now() + Duration::from_secs(2);
    while (open_fds(pid) != fds || memfd_maps(pid) != 0) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open_fds(pid), fds, "fds of the receiver");
    assert_eq!(memfd_maps(pid), 0, "memfd mappings of the receiver");
}

/// An honest `send` of the gold stream; returns how long it took.
fn honest_send(address: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new(bin()).args(["send", "--socket", address, "--timeout-ms", "10000"]).arg(gold()).status().unwrap();
    assert!(st.success(), "honest send");
    t.elapsed()
}

fn sealed(bytes: &[u8]) -> OwnedFd {
    let (seg, _) = ipc::write_bytes_segment(bytes, 0).unwrap();
    seg.finish(true).unwrap()
}

/// One TABLE over a raw connection; returns the ERROR code it got.
fn raw_refusal(address: &str, bytes: &[u8]) -> String {
    let fd = raw_connect(address);
    raw_table(&fd, 2, &sealed(bytes), bytes.len() as u64, 0);
    let f = raw_read(&fd);
    assert_eq!((f.kind, f.correlation_id), (Kind::Error, 2));
    kv_get(&f.metadata, "code").unwrap().to_string()
}

#[test]
fn hostile_tables_get_typed_errors_and_the_receiver_serves_on() {
    let dir = tmpdir("hostile");
    let out = dir.join("out.arrows");
    let mut recv = Receiver::start("hostile", &["--count", "1", "--out", out.to_str().unwrap()]);
    let (pid, address) = (recv.pid(), recv.address.clone());
    let baseline = open_fds(pid);
    for (kind, code) in [
        ("metadata-bomb", "ERR_IPC_LIMIT"),
        ("schema-bomb", "ERR_IPC_LIMIT"),
        ("node-count-bomb", "ERR_IPC_LIMIT"),
        ("counts-mismatch", "ERR_IPC_INVALID"),
    ] {
        let t = Instant::now();
        let events = attacker(&["attack", kind, "--socket", &address, "--seconds", "10"]);
        assert_eq!(replied_code(&events), code, "{kind}");
        assert!(t.elapsed() < Duration::from_secs(5), "{kind}: {:?}", t.elapsed());
    }
    assert_eq!(raw_refusal(&address, &hostile::fields_many(70_000)), "ERR_IPC_LIMIT");
    assert_eq!(raw_refusal(&address, &hostile::node_count_bomb(5_000_000)), "ERR_IPC_LIMIT");
    // fatal frames and bad handshakes close only their own connection
    assert_eq!(replied_code(&attacker(&["attack", "bad-frame", "--socket", &address, "--seconds", "5"])), "ERR_PROTOCOL");
    for value in ["0x1", "", "-0", "1e0", "+1", "01", "1234567890"] {
        let events = attacker(&["attack", "hello-version", "--value", value, "--socket", &address, "--seconds", "5"]);
        assert_eq!(replied_code(&events), "ERR_PROTOCOL", "min_version {value:?}");
    }
    assert!(recv.alive());
    assert_holds_only(pid, &baseline);
    assert!(!out.exists());
    assert!(honest_send(&address) < Duration::from_secs(2));
    let (code, stderr) = recv.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(gold()).unwrap());
    // one line per refusal, every one typed
    assert_eq!(stderr.lines().count(), 6 + 1 + 7, "{stderr}");
    assert!(stderr.lines().all(|l| l.starts_with("arrow-shm: ERR_")), "{stderr}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idle_and_silent_connections_delay_no_sender_and_count_spans_connections() {
    let dir = tmpdir("idle");
    let recv = Receiver::start("idle", &["--count", "2", "--out", dir.to_str().unwrap()]);
    let address = recv.address.clone();
    let addr2 = address.clone();
    let idlers = std::thread::spawn(move || attacker(&["attack", "idle-connections", "--count", "100", "--seconds", "4", "--socket", &addr2]));
    // a connector that never says HELLO
    let silent = sys::connect(&sys::Address::parse(&address).unwrap(), libc::SOCK_SEQPACKET, None).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // one sender that stays connected, and another one meanwhile
    let mut first = channel::connect(&address, Options { timeout: Some(Duration::from_secs(5)), ..Options::default() }).unwrap();
    let t = Instant::now();
    first.send_bytes(&std::fs::read(gold()).unwrap(), &vec![], Some(Duration::from_secs(5))).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(honest_send(&address) < Duration::from_secs(2));
    let (code, stderr) = recv.finish();
    assert_eq!(code, Some(0), "{stderr}");
    for i in 0..2 {
        assert_eq!(std::fs::read(dir.join(format!("{i:06}.arrows"))).unwrap(), std::fs::read(gold()).unwrap());
    }
    drop((first, silent));
    let events = idlers.join().unwrap();
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{events:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_inbox_flood_is_held_back_and_honest_senders_still_get_through() {
    let mut recv = Receiver::start("flood", &["--count", "1000000"]);
    let (pid, address) = (recv.pid(), recv.address.clone());
    let addr2 = address.clone();
    let flood = std::thread::spawn(move || attacker(&["attack", "inbox-flood", "--count", "100000", "--seconds", "3", "--socket", &addr2]));
    std::thread::sleep(Duration::from_millis(500));
    // the flood's tables are bounded per connection; an honest sender is not starved
    assert!(honest_send(&address) < Duration::from_secs(2));
    let events = flood.join().unwrap();
    assert_eq!(events.last().unwrap()["event"], "done");
    assert!(recv.alive());
    assert!(memfd_maps(pid) <= 65, "{} memfd mappings", memfd_maps(pid));
    assert!(open_fds(pid).len() < 32, "{:?}", open_fds(pid));
    recv.child.kill().unwrap();
    recv.finish();
}

/// Runs `server` on a thread until `deadline`; returns what it handed over (ok, errors).
fn run_server(mut server: Server, until: Instant) -> std::thread::JoinHandle<(usize, Vec<ErrorCode>)> {
    std::thread::spawn(move || {
        let (mut ok, mut errors) = (0, Vec::new());
        loop {
            match server.next(Some(until)) {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => errors.push(e.code),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Timeout);
                    return (ok, errors);
                }
            }
        }
    })
}

#[test]
fn max_connections_evicts_the_idlest_or_refuses_and_idle_ones_time_out() {
    let address = format!("@arrow-shm-rs-conns-{}-{}", std::process::id(), rand_u64());
    let opts = Options { max_connections: 4, idle_timeout_ms: 2500, ..Options::default() };
    let server = Server::new(Listener::bind(&address, opts).unwrap()).unwrap();
    let started = Instant::now();
    let handle = run_server(server, started + Duration::from_secs(6));
    let four: Vec<OwnedFd> = (0..4).map(|_| raw_connect(&address)).collect();
    // nobody has been idle 1 s: the fifth is refused
    let fifth = channel::connect(&address, Options { timeout: Some(Duration::from_secs(5)), ..Options::default() });
    assert_eq!(fifth.err().map(|e| e.code), Some(ErrorCode::ResourceLimit));
    std::thread::sleep(Duration::from_millis(1100));
    // now the idlest (the first) makes room
    let sixth = raw_connect(&address);
    let f = raw_read(&four[0]);
    assert_eq!((f.kind, f.correlation_id, kv_get(&f.metadata, "code")), (Kind::Error, 0, Some("ERR_TIMEOUT")));
    // idle_timeout_ms: the others go after 2.5 s without a table
    for fd in four[1..].iter().chain([&sixth]) {
        let f = raw_read(fd);
        assert_eq!((f.kind, kv_get(&f.metadata, "code")), (Kind::Error, Some("ERR_TIMEOUT")));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let (ok, errors) = handle.join().unwrap();
    assert_eq!((ok, errors), (0, vec![]));
}

#[test]
fn a_full_inbox_stops_reading_the_socket() {
    // by count (4 queued + 1 waiting to be handed over), then by bytes (1 + 1)
    for (max_inbox_messages, max_inbox_bytes, expect) in [(4, 1 << 30, 5..=6), (64, 1, 2..=3)] {
        let address = format!("@arrow-shm-rs-inbox-{}-{}", std::process::id(), rand_u64());
        let opts = Options { max_inbox_messages, max_inbox_bytes, ..Options::default() };
        let mut server = Server::new(Listener::bind(&address, opts).unwrap()).unwrap();
        let bytes = std::fs::read(gold()).unwrap();
        let a2 = address.clone();
        let sender = std::thread::spawn(move || {
            let fd = raw_connect(&a2);
            let seg = sealed(&bytes);
            for id in 2..52 {
                raw_table(&fd, id, &seg, bytes.len() as u64, 0);
            }
            fd
        });
        // the server hands over nothing until asked; one table taken
        let first = server.next(Some(Instant::now() + Duration::from_secs(5))).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let fd = sender.join().unwrap();
        let acks = || {
            let mut n = 0;
            while sys::wait_readable(fd.as_raw_fd(), Some(Instant::now() + Duration::from_millis(100)), "ack").is_ok() {
                assert_eq!(raw_read(&fd).kind, Kind::Ack);
                n += 1;
            }
            n
        };
        let early = acks();
        assert!(expect.contains(&early), "{early} ACKs with one table taken");
        let mut held = vec![first];
        for _ in 1..50 {
            held.push(server.next(Some(Instant::now() + Duration::from_secs(5))).unwrap().unwrap());
        }
        assert_eq!(early + acks(), 50);
        drop(held);
    }

    // a single-threaded channel: waiting for an ACK with a full inbox fails instead of hanging
    let a3 = format!("@arrow-shm-rs-inbox1-{}-{}", std::process::id(), rand_u64());
    let lst = Listener::bind(&a3, Options::default()).unwrap();
    let a4 = a3.clone();
    let peer = std::thread::spawn(move || {
        let mut ch = lst.accept(Some(Duration::from_secs(5))).unwrap();
        let ids: Vec<u64> = (0..3)
            .map(|_| {
                let (seg, len) = ipc::write_bytes_segment(&std::fs::read(gold()).unwrap(), 0).unwrap();
                ch.send_segment(seg, len, &vec![], 0, 0).unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(600));
        ch.receive(Some(Duration::from_secs(5))).unwrap(); // the other side's table
        for id in ids {
            ch.wait_ack(id, Some(Duration::from_secs(5))).unwrap();
        }
    });
    let mut ch = channel::connect(&a4, Options { max_inbox_messages: 2, timeout: Some(Duration::from_secs(5)), ..Options::default() }).unwrap();
    let (seg, len) = ipc::write_bytes_segment(&std::fs::read(gold()).unwrap(), 0).unwrap();
    let id = ch.send_segment(seg, len, &vec![], 0, 0).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let e = ch.wait_ack(id, Some(Duration::from_secs(5))).unwrap_err();
    assert_eq!(e.code, ErrorCode::ResourceLimit, "{e}");
    for _ in 0..3 {
        ch.receive(Some(Duration::from_secs(5))).unwrap();
    }
    ch.wait_ack(id, Some(Duration::from_secs(5))).unwrap();
    peer.join().unwrap();
}

#[test]
fn stream_offers_are_bounded() {
    let address = format!("@arrow-shm-rs-offers-{}-{}", std::process::id(), rand_u64());
    let lst = Listener::bind(&address, Options::default()).unwrap();
    let a2 = address.clone();
    let attacker = std::thread::spawn(move || {
        let fd = raw_connect(&a2);
        let (seg, _) = ipc::write_bytes_segment(b"x", 0).unwrap();
        let memfd = seg.finish(true).unwrap();
        for id in 2..22 {
            let mut f = Frame::new(Kind::StreamOpen);
            f.message_id = id;
            f.fd_count = 4;
            let fds = [memfd.as_raw_fd(); 4];
            sys::send_with_fds(fd.as_raw_fd(), &f.encode().unwrap(), &fds).unwrap();
        }
        let mut refused = BTreeMap::new();
        for _ in 0..4 {
            let f = raw_read(&fd);
            *refused.entry(kv_get(&f.metadata, "code").unwrap().to_string()).or_insert(0) += 1;
        }
        (refused, fd)
    });
    let mut ch = lst.accept(Some(Duration::from_secs(5))).unwrap();
    let e = ch.receive(Some(Duration::from_millis(500))).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    let (refused, _fd) = attacker.join().unwrap();
    assert_eq!(refused, BTreeMap::from([("ERR_RESOURCE_LIMIT".to_string(), 4)]));
}

#[test]
fn a_live_socket_path_is_never_taken_over() {
    let dir = tmpdir("addr");
    let path = dir.join("s.sock");
    let p = path.to_str().unwrap();
    let first = Listener::bind(p, Options::default()).unwrap();
    assert_eq!(Listener::bind(p, Options::default()).err().unwrap().code, ErrorCode::AddressInUse);
    // the CLI says so too
    let out = Command::new(bin()).args(["recv", "--socket", p, "--timeout-ms", "100"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.starts_with("arrow-shm: ERR_ADDRESS_IN_USE"), "{err}");
    let abs = format!("@arrow-shm-rs-addr-{}-{}", std::process::id(), rand_u64());
    let a1 = Listener::bind(&abs, Options::default()).unwrap();
    assert_eq!(Listener::bind(&abs, Options::default()).err().unwrap().code, ErrorCode::AddressInUse);
    drop(a1);
    // the first listener's file was replaced behind its back: closing it leaves the new one
    std::fs::remove_file(&path).unwrap();
    let second = Listener::bind(p, Options::default()).unwrap();
    drop(first);
    assert!(path.exists());
    drop(second);
    assert!(!path.exists());
    // a stale file (bound, never listening, closed) is replaced
    let stale = sys::socket(libc::SOCK_SEQPACKET).unwrap();
    let (sa, len) = sys::Address::parse(p).unwrap().sockaddr();
    assert_eq!(unsafe { libc::bind(stale.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) }, 0);
    drop(stale);
    assert!(path.exists());
    let third = Listener::bind(p, Options::default()).unwrap();
    drop(third);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn welcome_decimals_are_strict() {
    for (version, pid, code) in [("1", "7", None), ("01", "7", Some(ErrorCode::Protocol)), ("1", "0x7", Some(ErrorCode::Protocol)), ("2", "7", Some(ErrorCode::ProtocolVersion))] {
        let address = format!("@arrow-shm-rs-welcome-{}-{}", std::process::id(), rand_u64());
        let lfd = sys::socket(libc::SOCK_SEQPACKET).unwrap();
        let (sa, len) = sys::Address::parse(&address).unwrap().sockaddr();
        assert_eq!(unsafe { libc::bind(lfd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) }, 0);
        assert_eq!(unsafe { libc::listen(lfd.as_raw_fd(), 1) }, 0);
        let fake = std::thread::spawn(move || {
            let c = sys::accept(lfd.as_raw_fd(), None).unwrap();
            assert_eq!(raw_read(&c).kind, Kind::Hello);
            let mut w = Frame::new(Kind::Welcome);
            w.metadata = vec![("version".into(), version.into()), ("pid".into(), pid.into()), ("capabilities".into(), "".into())];
            sys::send_with_fds(c.as_raw_fd(), &w.encode().unwrap(), &[]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        let got = channel::connect(&address, Options { timeout: Some(Duration::from_secs(5)), ..Options::default() });
        assert_eq!(got.err().map(|e| e.code), code, "version {version:?} pid {pid:?}");
        fake.join().unwrap();
    }
}

#[test]
fn out_is_checked_before_accepting_and_written_whole() {
    let dir = tmpdir("out");
    // a directory that does not exist: refused before listening
    let out = Command::new(bin()).args(["recv", "--socket", "@never", "--out"]).arg(dir.join("no/such/file")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("listening"), "{err}");
    assert!(err.starts_with("arrow-shm: ERR_SYSCALL"), "{err}");
    // a seed-compat sender that truncates its unsealed memfd right after sending it: never a
    // SIGBUS, never a partial file
    for round in 0..5 {
        let sock = dir.join(format!("seed{round}.sock"));
        let s = sock.to_str().unwrap().to_string();
        let target = dir.join(format!("seed{round}.arrows"));
        let evil = std::thread::spawn(move || attacker(&["seed-truncate", "--socket", &s, "--seconds", "10"]));
        let run = Command::new(bin())
            .args(["recv", "--seed-compat", "--socket", sock.to_str().unwrap(), "--timeout-ms", "10000", "--out"])
            .arg(&target)
            .output()
            .unwrap();
        evil.join().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        match run.status.code() {
            Some(0) => assert!(ipc::validate_stream(&std::fs::read(&target).unwrap(), &Default::default()).is_ok()),
            Some(1) => {
                assert!(err.starts_with("arrow-shm: ERR_SEGMENT_BOUNDS") || err.starts_with("arrow-shm: ERR_IPC_"), "{err}");
                assert!(!target.exists());
            }
            other => panic!("receiver ended with {other:?} (a signal?): {err}"),
        }
    }
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_unsealed_segment_is_copied_not_mapped() {
    let bytes = std::fs::read(gold()).unwrap();
    let (seg, _) = ipc::write_bytes_segment(&bytes, 0).unwrap();
    let fd = seg.finish(false).unwrap();
    let (map, len) = segment::open_segment(fd.as_raw_fd(), 0, Some(bytes.len() as u64), 1 << 30, true).unwrap();
    assert_eq!(&map.as_slice()[..len as usize], &bytes[..]);
    // truncating the file afterwards changes nothing (and cannot raise SIGBUS)
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, 0);
    assert_eq!(&map.as_slice()[..len as usize], &bytes[..]);
    // the memory holding it is private, not the memfd
    let at = map.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| {
            let (start, end) = l.split_whitespace().next().unwrap().split_once('-').unwrap();
            (usize::from_str_radix(start, 16).unwrap()..usize::from_str_radix(end, 16).unwrap()).contains(&at)
        })
        .unwrap();
    assert!(!line.contains("memfd:"), "{line}");
}
