//! fd and mapping leak counts via /proc/self (its own test binary: nothing else runs in this
//! process meanwhile).

mod common;

use std::time::Duration;

use arrow_shm::{channel, ipc, ErrorCode, Listener, Options};
use common::*;

#[test]
fn no_fd_or_mapping_leaks() {
    let files = gold_streams();
    let payloads: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let fuzz: Vec<Vec<u8>> = std::fs::read_dir(testdata().join("arrow-fuzz"))
        .unwrap()
        .map(|f| std::fs::read(f.unwrap().path()).unwrap())
        .collect();
    let t = Some(Duration::from_secs(20));
    let round = |rounds: usize| {
        let a = format!("@arrow-shm-rs-leaks-{}-{}", std::process::id(), rand_u64());
        let lst = Listener::bind(&a, Options::default()).unwrap();
        let p2 = payloads.clone();
        let f2 = fuzz.clone();
        let a2 = a.clone();
        let sender = std::thread::spawn(move || {
            let mut ch = channel::connect(&a2, Options::default()).unwrap();
            for _ in 0..rounds {
                for p in &p2 {
                    ch.send_bytes(p, &vec![], t).unwrap();
                }
                for p in &f2 {
                    // hostile streams are refused with an ERROR (or accepted), never leak
                    match ch.send_bytes(p, &vec![], t) {
                        Ok(_) => {}
                        Err(e) => assert!(matches!(e.code, ErrorCode::IpcInvalid | ErrorCode::IpcTruncated), "{e}"),
                    }
                }
            }
            ch.close();
        });
        let mut ch = lst.accept(t).unwrap();
        loop {
            match ch.receive(t) {
                Ok(m) => {
                    let _ = m.decode().map(|tb| tb.num_rows());
                }
                Err(e) if e.code == ErrorCode::PeerClosed => break,
                Err(e) => assert!(matches!(e.code, ErrorCode::IpcInvalid | ErrorCode::IpcTruncated), "{e}"),
            }
        }
        sender.join().unwrap();
        drop(ch);
        drop(lst);
    };
    round(1); // warm up (lazy statics, thread stacks)
    let (fds, maps) = (open_fds(), memfd_maps());
    round(3);
    assert_eq!(open_fds(), fds, "fds leaked");
    assert_eq!(memfd_maps(), maps, "memfd mappings leaked");
    assert!(maps.is_empty(), "{maps:?}");
    // decoded tables keep their mapping only as long as they live
    let bytes = &payloads[0];
    let (seg, _) = ipc::write_bytes_segment(bytes, 0).unwrap();
    drop(seg);
    assert!(memfd_maps().is_empty());
}
