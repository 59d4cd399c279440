//! Records leased to Arrow buffers: a consumed record is released (its slot's read position
//! advanced) only when the last buffer over it drops, from any thread.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;

use crate::error::{err, ErrorCode, Result};
use crate::ring::{wake_if_waiting, RingHeader};
use crate::segment::Mapping;

pub(super) struct Held {
    pub(super) end: u64,
    pub(super) released: bool,
}

pub(super) struct ReleaseQueue {
    pub(super) held: VecDeque<Held>,
    /// Everything below it is released (the slot's `read_position`).
    pub(super) read_position: u64,
    /// `None` once the reader closed: releases then change nothing shared.
    pub(super) space_event: Option<OwnedFd>,
}

/// What a batch needs to release its record, from any thread.
pub(super) struct ReleaseState {
    pub(super) queue: Mutex<ReleaseQueue>,
    pub(super) header: RingHeader,
    pub(super) slot: u32,
}

impl ReleaseState {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ReleaseQueue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the record ending at `end` released and publishes the end of the leading run of
    /// released records (§12.3). A waiting producer is woken by every advance: a producer of
    /// another peer may sleep without a bound, and the room it needs may be far less than half
    /// the ring.
    pub(super) fn release(&self, end: u64) {
        let mut q = self.lock();
        if let Some(h) = q.held.iter_mut().find(|h| h.end == end) {
            h.released = true;
        }
        let mut advanced = None;
        while q.held.front().is_some_and(|h| h.released) {
            advanced = q.held.pop_front().map(|h| h.end);
        }
        let Some(position) = advanced else { return };
        q.read_position = position;
        if let Some(space) = &q.space_event {
            self.header.read_position(self.slot).store(position, Ordering::SeqCst);
            wake_if_waiting(self.header.producer_waiting(), space.as_raw_fd());
        }
    }
}

/// The owner of one record's bytes inside Arrow buffers: while any buffer (of the batch or of
/// a clone of its arrays) points into the record, the record is not released, so the producer
/// can never rewrite bytes a live array reads. Dropping the last one releases it.
struct RecordLease {
    releases: Arc<ReleaseState>,
    end: u64,
    /// The ring's data area, or the STREAM_SEGMENT's mapping.
    _mapping: Arc<Mapping>,
}

impl Drop for RecordLease {
    fn drop(&mut self) {
        self.releases.release(self.end);
    }
}

/// `[offset, offset + len)` of `mapping` as a Buffer owned by a lease on the record ending at `end`.
pub(super) fn leased_buffer(mapping: &Arc<Mapping>, offset: usize, len: usize, releases: &Arc<ReleaseState>, end: u64) -> Result<Buffer> {
    if offset.checked_add(len).is_none_or(|e| e > mapping.len()) {
        return err(ErrorCode::RingInvalid, "record bytes outside the mapping");
    }
    let lease = Arc::new(RecordLease { releases: releases.clone(), end, _mapping: mapping.clone() });
    // SAFETY: in bounds (checked above) of a mapping the lease keeps alive; the producer does
    // not rewrite a record before it is released, which happens only when the lease drops.
    let ptr = unsafe { std::ptr::NonNull::new_unchecked(mapping.as_ptr().add(offset) as *mut u8) };
    // SAFETY: see above.
    Ok(unsafe { Buffer::from_custom_allocation(ptr, len, lease) })
}

/// A batch decoded in place from the ring. Its record is released once this value and every
/// clone of its arrays are dropped (releases are in order: a record held longer holds back the
/// ones after it, and so the producer's room).
pub struct StreamBatch {
    /// The batch; its buffers point into the ring.
    pub batch: RecordBatch,
    /// The record's sequence number (0, 1, 2, ... over the stream's batches).
    pub sequence: u64,
    pub(super) bytes: Buffer,
}

impl StreamBatch {
    /// The record's IPC messages (dictionaries, then the batch), in place.
    pub fn ipc_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Drops this batch's hold on its record (the same as dropping it).
    pub fn release(self) {}
}

impl std::fmt::Debug for StreamBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBatch").field("sequence", &self.sequence).field("rows", &self.batch.num_rows()).finish()
    }
}
