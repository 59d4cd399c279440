//! The ring segment of a stream (PROTOCOL.md §12.2): header page, reader slots, records, and
//! the wake-up protocol of §12.3. Shared by the producer and the consumer.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{err, Error, ErrorCode, Result};
use crate::segment::Mapping;

/// The first 8 bytes of a ring's header page.
pub const RING_MAGIC: [u8; 8] = *b"ASHMRING";
/// Layout version in the ring header.
pub const RING_LAYOUT_VERSION: u32 = 1;
/// Size of the header page before the data area.
pub const RING_HEADER_BYTES: usize = 4096;
/// Smallest ring data area (a power of two).
pub const MIN_CAPACITY: u64 = 65_536;
/// Largest ring data area.
pub const MAX_CAPACITY: u64 = 1 << 40;
/// Reader slots a ring header has room for.
pub const MAX_READERS: u32 = 62;
/// Default ring data area: 16 MiB.
pub const DEFAULT_CAPACITY: u64 = 16 << 20;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 64;
/// Records start at multiples of this.
pub const RECORD_ALIGN: u64 = 64;
/// The ring is rewritten all the time: no `F_SEAL_WRITE` (§12.2).
pub const RING_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

const OFF_CAPACITY: usize = 16;
const OFF_MAX_READERS: usize = 24;
const OFF_WRITE_POSITION: usize = 64;
const OFF_PRODUCER_WAITING: usize = 72;
const OFF_ENDED: usize = 76;
const SLOT_BASE: usize = 128;
const SLOT_BYTES: usize = 64;

/// Record kinds (§12.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordKind {
    /// A record batch (with the dictionaries it needs).
    Batch = 1,
    /// Skip to the start of the data area (the wrap).
    Padding = 2,
    /// The batch went in a STREAM_SEGMENT of its own.
    External = 3,
    /// The stream ended.
    End = 4,
}

/// `n` rounded up to a multiple of 64.
pub fn align_record(n: u64) -> u64 {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The data offset of stream position `position`: the ring's one wrap.
pub fn ring_offset(position: u64, capacity: u64) -> u64 {
    position % capacity
}

/// Where a record goes (§12.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Data offset of the record.
    pub offset: u64,
    /// Bytes of PADDING record filling the tail first (0: the record fits before the end).
    pub padding: u64,
}

/// The one wrap decision: a `length`-byte record written at position `write` goes right there
/// if it fits before the end of the data area, else at offset 0 after a PADDING record that
/// fills the tail. Records never straddle the end.
pub fn place_record(write: u64, length: u64, capacity: u64) -> Placement {
    let offset = ring_offset(write, capacity);
    let tail = capacity - offset;
    if length <= tail {
        Placement { offset, padding: 0 }
    } else {
        Placement { offset: 0, padding: tail }
    }
}

/// `ERR_INVALID_ARGUMENT` unless `capacity` is a power of two in [64 KiB, 2^40].
pub fn check_capacity(capacity: u64) -> Result<()> {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || !capacity.is_power_of_two() {
        return err(
            ErrorCode::InvalidArgument,
            format!("ring capacity must be a power of two from {MIN_CAPACITY} to 2^40 bytes, got {capacity}"),
        );
    }
    Ok(())
}

/// The header page of a ring, through atomics. Keeps its (read-write) mapping alive.
#[derive(Clone)]
pub struct RingHeader {
    map: Arc<Mapping>,
}

impl RingHeader {
    /// `map` must be a writable mapping of at least [`RING_HEADER_BYTES`] bytes at offset 0.
    pub fn new(map: Arc<Mapping>) -> Result<RingHeader> {
        if map.len() < RING_HEADER_BYTES {
            return err(ErrorCode::InvalidArgument, "ring header mapping too small");
        }
        Ok(RingHeader { map })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= RING_HEADER_BYTES);
        // SAFETY: the mapping is page-aligned, at least 4096 bytes, writable and alive as long as
        // `self`; every field is naturally aligned and only ever accessed atomically.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= RING_HEADER_BYTES);
        // SAFETY: as in `u64_at`.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    /// Zeroes the page and writes the constants (producer, before anyone else maps it).
    pub fn init(&self, capacity: u64, max_readers: u32) {
        for off in (0..RING_HEADER_BYTES).step_by(8) {
            self.u64_at(off).store(0, Ordering::Relaxed);
        }
        self.u64_at(0).store(u64::from_le_bytes(RING_MAGIC), Ordering::Relaxed);
        self.u32_at(8).store(RING_LAYOUT_VERSION, Ordering::Relaxed);
        self.u32_at(12).store(RING_HEADER_BYTES as u32, Ordering::Relaxed);
        self.u64_at(OFF_CAPACITY).store(capacity, Ordering::Relaxed);
        self.u32_at(OFF_MAX_READERS).store(max_readers, Ordering::Release);
    }

    /// Checks the constants against what STREAM_OPEN said (consumer). `ERR_RING_INVALID`.
    pub fn check(&self, capacity: u64, slot: u32) -> Result<()> {
        let invalid = |m: String| Err(Error::new(ErrorCode::RingInvalid, m));
        if self.u64_at(0).load(Ordering::Acquire).to_le_bytes() != RING_MAGIC {
            return invalid("ring header without the ASHMRING magic".into());
        }
        let layout = self.u32_at(8).load(Ordering::Relaxed);
        if layout != RING_LAYOUT_VERSION {
            return invalid(format!("ring layout version {layout}, this side reads {RING_LAYOUT_VERSION}"));
        }
        let header_length = self.u32_at(12).load(Ordering::Relaxed);
        if header_length as usize != RING_HEADER_BYTES {
            return invalid(format!("ring header length {header_length}, expected {RING_HEADER_BYTES}"));
        }
        let declared = self.u64_at(OFF_CAPACITY).load(Ordering::Relaxed);
        if declared != capacity {
            return invalid(format!("ring header says capacity {declared}, STREAM_OPEN says {capacity}"));
        }
        let max_readers = self.u32_at(OFF_MAX_READERS).load(Ordering::Relaxed);
        if !(1..=MAX_READERS).contains(&max_readers) || slot >= max_readers {
            return invalid(format!("reader slot {slot} outside the ring's {max_readers} slots"));
        }
        Ok(())
    }

    /// The producer's position (bytes written since the start).
    pub fn write_position(&self) -> &AtomicU64 {
        self.u64_at(OFF_WRITE_POSITION)
    }
    /// 1 while the producer sleeps for room.
    pub fn producer_waiting(&self) -> &AtomicU32 {
        self.u32_at(OFF_PRODUCER_WAITING)
    }
    /// 1 once the producer wrote the END record.
    pub fn ended(&self) -> &AtomicU32 {
        self.u32_at(OFF_ENDED)
    }
    fn slot_off(slot: u32) -> usize {
        assert!(slot < MAX_READERS, "reader slot out of range");
        SLOT_BASE + SLOT_BYTES * slot as usize
    }
    /// How far the reader of `slot` released records.
    pub fn read_position(&self, slot: u32) -> &AtomicU64 {
        self.u64_at(Self::slot_off(slot))
    }
    /// Reader `slot`'s state: 0 free, 1 attached.
    pub fn slot_state(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(Self::slot_off(slot) + 8)
    }
    /// 1 while the consumer of `slot` sleeps for data.
    pub fn reader_waiting(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(Self::slot_off(slot) + 12)
    }
    /// The pid of the reader holding `slot`.
    pub fn slot_pid(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(Self::slot_off(slot) + 16)
    }
}

/// The waker's half of §12.3, after it stored its position (SeqCst): clear the other side's
/// flag and write its eventfd only if it was set, so a busy pair makes no system call. The plain
/// load first spares the locked instruction while nobody sleeps (a 0 it reads is as final as a
/// failed exchange: both come after the position's store in the single total order).
pub fn wake_if_waiting(flag: &AtomicU32, event_fd: RawFd) {
    if flag.load(Ordering::SeqCst) == 1 && flag.compare_exchange(1, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        eventfd_signal(event_fd);
    }
}

/// A decoded record header (§12.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Bytes of the record, header included.
    pub length: u64,
    /// What the record holds.
    pub kind: RecordKind,
    /// The record's sequence number.
    pub sequence: u64,
    /// Bytes of IPC payload after the header.
    pub ipc_length: u64,
}

/// The 64-byte header of a record.
pub fn encode_record_header(length: u64, kind: RecordKind, sequence: u64, ipc_length: u64) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&(length as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    h[8..16].copy_from_slice(&sequence.to_le_bytes());
    h[16..24].copy_from_slice(&ipc_length.to_le_bytes());
    h
}

/// Checks the record header `raw` found at data `offset` of a `capacity`-byte data area, with
/// `available` bytes published from it (§12.2's list). Failures are `ERR_RING_INVALID`.
pub fn check_record_header(raw: &[u8; RECORD_HEADER_BYTES], offset: u64, capacity: u64, available: u64) -> Result<RecordHeader> {
    let length = u32::from_le_bytes(raw[0..4].try_into().unwrap()) as u64;
    let kind = u32::from_le_bytes(raw[4..8].try_into().unwrap());
    let sequence = u64::from_le_bytes(raw[8..16].try_into().unwrap());
    let ipc_length = u64::from_le_bytes(raw[16..24].try_into().unwrap());
    let invalid = |m: String| Err(Error::new(ErrorCode::RingInvalid, format!("record at data offset {offset}: {m}")));
    if offset >= capacity || offset % RECORD_ALIGN != 0 {
        return invalid(format!("offset outside the {capacity}-byte data area or misaligned"));
    }
    if length < RECORD_HEADER_BYTES as u64 || length % RECORD_ALIGN != 0 {
        return invalid(format!("length {length} is not a positive multiple of 64"));
    }
    if length > capacity - offset {
        return invalid(format!("length {length} runs past the end of the {capacity}-byte data area"));
    }
    if length > available {
        return invalid(format!("length {length} runs past the write position ({available} bytes published)"));
    }
    let kind = match kind {
        1 => {
            if ipc_length == 0 || ipc_length > length - RECORD_HEADER_BYTES as u64 {
                return invalid(format!("IPC length {ipc_length} does not fit its {length}-byte record"));
            }
            RecordKind::Batch
        }
        2 => {
            if length != capacity - offset {
                return invalid(format!("padding of {length} bytes does not fill the {} bytes left", capacity - offset));
            }
            RecordKind::Padding
        }
        3 => RecordKind::External,
        4 => RecordKind::End,
        other => return invalid(format!("unknown record kind {other}")),
    };
    Ok(RecordHeader { length, kind, sequence, ipc_length })
}

/// A new eventfd (`EFD_CLOEXEC | EFD_NONBLOCK`).
pub fn eventfd() -> Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(Error::last_os("eventfd"));
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's counter. A saturated counter (EAGAIN) wakes the waiter anyway, and
/// a wake-up is best effort (waits are bounded), so errors are ignored.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

/// Reads (and so resets) an eventfd's counter; nothing to read is fine.
pub fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    unsafe {
        libc::read(fd, (&mut v as *mut u64).cast(), 8);
    }
}

/// `ERR_SEGMENT_INVALID` unless `fd` is an eventfd.
pub fn check_eventfd(fd: &OwnedFd, what: &str) -> Result<()> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    if target != "anon_inode:[eventfd]" {
        return err(ErrorCode::SegmentInvalid, format!("the {what} fd is not an eventfd ({target})"));
    }
    Ok(())
}

/// Polls `fds` for input for at most `timeout_ms`; returns which are readable (or hung up).
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `p` holds `p.len()` valid pollfds.
        let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::from_io("poll", &e));
        }
        return Ok(p.iter().map(|x| x.revents != 0).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_header_checks() {
        let cap = 65_536;
        let ok = |h: [u8; 64], off: u64, avail: u64| check_record_header(&h, off, cap, avail);
        assert_eq!(ok(encode_record_header(128, RecordKind::Batch, 3, 10), 0, 128).unwrap().sequence, 3);
        let bad = |h: [u8; 64], off: u64, avail: u64| ok(h, off, avail).unwrap_err().code;
        assert_eq!(bad(encode_record_header(100, RecordKind::Batch, 0, 10), 0, 1000), ErrorCode::RingInvalid);
        assert_eq!(bad(encode_record_header(0, RecordKind::End, 0, 0), 0, 1000), ErrorCode::RingInvalid);
        assert_eq!(bad(encode_record_header(128, RecordKind::Batch, 0, 10), 0, 64), ErrorCode::RingInvalid);
        assert_eq!(bad(encode_record_header(128, RecordKind::Batch, 0, 65), 0, 128), ErrorCode::RingInvalid);
        assert_eq!(bad(encode_record_header(128, RecordKind::Batch, 0, 0), 0, 128), ErrorCode::RingInvalid);
        assert_eq!(bad(encode_record_header(128, RecordKind::Padding, 0, 0), 0, 128), ErrorCode::RingInvalid);
        assert!(ok(encode_record_header(128, RecordKind::Padding, 0, 0), cap - 128, 128).is_ok());
        assert_eq!(bad(encode_record_header(256, RecordKind::End, 0, 0), cap - 128, 1000), ErrorCode::RingInvalid);
        let mut unknown = encode_record_header(64, RecordKind::End, 0, 0);
        unknown[4] = 9;
        assert_eq!(bad(unknown, 0, 64), ErrorCode::RingInvalid);
        assert_eq!(place_record(cap + 128, 256, cap), Placement { offset: 128, padding: 0 });
        assert_eq!(place_record(cap - 128, 128, cap), Placement { offset: cap - 128, padding: 0 });
        assert_eq!(place_record(2 * cap - 128, 256, cap), Placement { offset: 0, padding: 128 });
        assert_eq!(ring_offset(3 * cap + 64, cap), 64);
        assert!(check_capacity(65_536).is_ok());
        assert!(check_capacity(65_537).is_err() && check_capacity(32_768).is_err() && check_capacity(1 << 41).is_err());
    }
}
