//! Spare segments for sealed sends: memory that is ready before it is needed.
//!
//! A fresh memfd costs a page allocation per 4 KiB page at first write. After each hand-off
//! (its ACK), one background thread prepares the next segment of the same size class
//! (`fallocate`), so the next send of a similar table writes into pages that exist. The Python and Node peers do the same
//! (peers/python/arrow_shm/pool.py, src/shm/pool.ts): one spare per size class, within
//! `max_bytes` in all.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::Result;
use crate::segment::WritableSegment;

const MIN_CLASS: usize = 64 * 1024;
const PAGE: usize = 4096;
/// Bytes of spares a pool holds (or prepares) at most, as in the other peers.
pub const DEFAULT_SPARE_BYTES: usize = 1 << 30;

/// Size classes: 64 KiB, then four steps per power of two (1, 1.25, 1.5, 1.75 × 2^k,
/// page-aligned), so a spare wastes at most a fifth of its size.
pub fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_CLASS {
        return MIN_CLASS;
    }
    let power = 1usize << (usize::BITS - 1 - bytes.leading_zeros());
    for quarters in [4, 5, 6, 7] {
        let c = (power / 4 * quarters).div_ceil(PAGE) * PAGE;
        if c >= bytes {
            return c;
        }
    }
    power.saturating_mul(2)
}

#[derive(Default)]
struct State {
    free: HashMap<usize, WritableSegment>,
    /// Classes to prepare, and the one being prepared.
    wanted: Vec<usize>,
    busy: Option<usize>,
    closed: bool,
    worker: Option<JoinHandle<()>>,
}

impl State {
    fn held(&self) -> usize {
        self.free.keys().chain(&self.wanted).chain(&self.busy).sum()
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Spare, pre-allocated, not yet sealed segments for sealed sends. [`SparePool::take`] hands one
/// out (cut to the exact size); [`SparePool::prepare`] asks for the next. Closing the pool (or
/// dropping it) closes every spare and joins the thread.
pub struct SparePool {
    shared: Arc<Shared>,
    max_bytes: usize,
}

impl SparePool {
    /// A pool holding at most `max_bytes` of spares (0: never prepares any).
    pub fn new(max_bytes: usize) -> SparePool {
        SparePool { shared: Arc::new(Shared { state: Mutex::default(), wake: Condvar::new() }), max_bytes }
    }

    /// A writable segment of exactly `size` bytes: a spare when one is ready, else a fresh one.
    pub fn take(&self, size: usize) -> Result<WritableSegment> {
        let spare = self.shared.lock().free.remove(&size_class(size));
        match spare {
            Some(mut seg) => {
                seg.truncate(size)?;
                Ok(seg)
            }
            None => WritableSegment::new(size),
        }
    }

    /// Asks the pool's thread (started at the first call) for a spare of `size`'s class, unless
    /// one is ready or on its way or the pool would exceed its bytes. A channel calls it once a
    /// hand-off is over, so the preparation does not compete with the receiver's work.
    pub fn prepare(&self, size: usize) {
        let cls = size_class(size);
        let mut st = self.shared.lock();
        let known = st.free.contains_key(&cls) || st.wanted.contains(&cls) || st.busy == Some(cls);
        if st.closed || known || st.held().saturating_add(cls) > self.max_bytes {
            return;
        }
        st.wanted.push(cls);
        if st.worker.is_none() {
            let shared = self.shared.clone();
            // Without a thread (none left to spawn) sends allocate as they go.
            st.worker = std::thread::Builder::new().name("arrow-shm-spare".into()).spawn(move || prepare_spares(&shared)).ok();
        }
        self.shared.wake.notify_one();
    }

    /// Bytes of spares ready now.
    pub fn spare_bytes(&self) -> usize {
        self.shared.lock().free.keys().sum()
    }

    /// Closes the spares and joins the thread (after the segment it is preparing, if any).
    pub fn close(&self) {
        let (spares, worker) = {
            let mut st = self.shared.lock();
            st.closed = true;
            st.wanted.clear();
            (std::mem::take(&mut st.free), st.worker.take())
        };
        self.shared.wake.notify_all();
        drop(spares);
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

impl Drop for SparePool {
    fn drop(&mut self) {
        self.close();
    }
}

/// The pool's thread: prepares the wanted classes one at a time until the pool closes.
fn prepare_spares(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        if st.closed {
            return;
        }
        let Some(cls) = st.wanted.pop() else {
            st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        st.busy = Some(cls);
        drop(st);
        // Out of memory or fds: no spare, the next send allocates as it goes.
        let seg = WritableSegment::preallocated(cls).ok();
        st = shared.lock();
        st.busy = None;
        if let (Some(seg), false) = (seg, st.closed) {
            st.free.insert(cls, seg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_match_the_other_peers() {
        // the values of src/shm/pool.ts's sizeClass
        assert_eq!(size_class(1), 65_536);
        assert_eq!(size_class(65_537), 81_920);
        assert_eq!(size_class(100_000), 114_688);
        assert_eq!(size_class(6_324_232), 7_340_032);
        assert_eq!(size_class(1_900_000), 2_097_152);
        assert_eq!(size_class(1 << 30), 1 << 30);
        assert_eq!(size_class((1 << 30) + 1), 1_342_177_280);
    }
}
