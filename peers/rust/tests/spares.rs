//! Spare segments (src/pool.rs) and the fast decoder's checks: spares are prepared off the send
//! path, bounded, cut to size, sealed like any segment, and closed with their pool or channel,
//! leaving no fd, mapping or thread behind. Its own test binary: /proc/self is compared, so the
//! one test runs alone.

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_shm::pool::{size_class, SparePool, DEFAULT_SPARE_BYTES};
use arrow_shm::segment::REQUIRED_SEALS;
use arrow_shm::{channel, ErrorCode, Listener, Options};
use common::*;

/// This process's threads named like the pool's.
fn spare_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).is_ok_and(|c| c.trim() == "arrow-shm-spare"))
        .count()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn table(rows: u32) -> RecordBatch {
    let ids: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..rows));
    let names: ArrayRef = Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("symbol-{i}-é"))));
    RecordBatch::try_from_iter([("id", ids), ("name", names)]).unwrap()
}

#[test]
fn spares_are_prepared_bounded_and_closed() {
    let (fds, maps) = (open_fds(), memfd_maps());

    // A pool starts its thread when first asked to prepare a size class.
    let pool = SparePool::new(DEFAULT_SPARE_BYTES);
    let fresh = pool.take(100_000).unwrap();
    assert_eq!(spare_threads(), 0);
    pool.prepare(100_000);
    wait_until("a spare is ready", || pool.spare_bytes() == size_class(100_000));
    assert_eq!(spare_threads(), 1);
    // The same class takes the spare, cut to the size asked for; it seals like a fresh one.
    assert_eq!(size_class(110_000), size_class(100_000));
    let mut spare = pool.take(110_000).unwrap();
    assert_eq!(spare.size(), 110_000);
    spare.write_at(0, &[b"abc", &[7u8; 109_997]]).unwrap();
    let fd = spare.finish(true).unwrap();
    // SAFETY: fstat/fcntl/pread on our fd into locals.
    let (size, seals, head) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st);
        let mut head = [0u8; 4];
        libc::pread(fd.as_raw_fd(), head.as_mut_ptr().cast(), 4, 0);
        (st.st_size, libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS), head)
    };
    assert_eq!((size, seals & REQUIRED_SEALS, &head), (110_000, REQUIRED_SEALS, b"abc\x07"));
    drop((fd, fresh));
    pool.prepare(110_000);
    wait_until("the spare is replaced", || pool.spare_bytes() == size_class(100_000));
    pool.close();
    assert_eq!(spare_threads(), 0, "close joins the thread");
    assert_eq!(open_fds(), fds, "close closes the spares");

    // Bounded: a class past max_bytes is never prepared, and no thread starts for it.
    let small = SparePool::new(100_000);
    small.prepare(100_000);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!((small.spare_bytes(), spare_threads()), (0, 0));
    drop(small);

    // A channel's sends use its spares; closing the channel closes them and joins its thread.
    // The tables arrive intact (the receiver decodes and checks every value).
    let address = format!("@arrow-shm-rs-spares-{}-{}", std::process::id(), rand_u64());
    let listener = Listener::bind(&address, Options::default()).unwrap();
    let batch = table(20_000);
    let sent = batch.clone();
    let a = address.clone();
    let sender = std::thread::spawn(move || {
        let mut ch = channel::connect(&a, Options::default()).unwrap();
        for _ in 0..4 {
            ch.send_batches(&sent.schema(), std::slice::from_ref(&sent), &vec![], Some(Duration::from_secs(10))).unwrap();
            std::thread::sleep(Duration::from_millis(30)); // time for the spare
        }
        assert_eq!(spare_threads(), 1);
        ch.close();
        assert_eq!(spare_threads(), 0, "closing the channel joins its spare thread");
    });
    let mut ch = listener.accept(Some(Duration::from_secs(10))).unwrap();
    let mut received = 0;
    loop {
        match ch.receive(Some(Duration::from_secs(10))) {
            Ok(m) => {
                assert_eq!(m.decode().unwrap().batches, vec![batch.clone()]);
                received += 1;
            }
            Err(e) if e.code == ErrorCode::PeerClosed => break,
            Err(e) => panic!("{e}"),
        }
    }
    sender.join().unwrap();
    assert_eq!(received, 4);
    drop((ch, listener));
    assert_eq!(open_fds(), fds, "fds leaked");
    assert_eq!(memfd_maps(), maps, "memfd mappings leaked");

    // spare_segments: false prepares nothing.
    let listener = Listener::bind(&address, Options::default()).unwrap();
    let a = address.clone();
    let sender = std::thread::spawn(move || {
        let mut ch = channel::connect(&a, Options { spare_segments: false, ..Options::default() }).unwrap();
        ch.send_batches(&batch.schema(), std::slice::from_ref(&batch), &vec![], Some(Duration::from_secs(10))).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(spare_threads(), 0);
    });
    let mut ch = listener.accept(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ch.receive(Some(Duration::from_secs(10))).unwrap().decode().unwrap().num_rows(), 20_000);
    sender.join().unwrap();
    drop((ch, listener));
    assert_eq!(open_fds(), fds, "fds leaked");
}
