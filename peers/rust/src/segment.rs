//! memfd segments: creation, writing through a shared mapping, sealing, and the receiver's
//! checks of PROTOCOL.md §5.1 before a read-only mapping.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::error::{err, Error, ErrorCode, Result};

/// The seals a sealed segment must carry (PROTOCOL.md §6.1).
pub const REQUIRED_SEALS: i32 =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
/// Default largest `ipc_length` a receiver accepts: 16 GiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 16 << 30;
/// Size of the seed proof of concept's segment (4096 × 10).
pub const SEED_SEGMENT_BYTES: usize = 40_960;

/// A memory mapping that is unmapped when dropped.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain memory owned by this value; shared access only reads it
// (read-only mappings) or goes through `&mut self` (writable ones).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}
impl std::panic::RefUnwindSafe for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-only or read-write.
    pub fn map(fd: RawFd, len: usize, writable: bool) -> Result<Mapping> {
        Mapping::map_at(fd, len, 0, writable)
    }

    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page size), shared.
    pub fn map_at(fd: RawFd, len: usize, offset: u64, writable: bool) -> Result<Mapping> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| Error::new(ErrorCode::InvalidArgument, "mapping offset too large"))?;
        if len == 0 {
            return err(ErrorCode::InvalidArgument, "cannot map 0 bytes");
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping chosen by the kernel; the result is checked.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap"));
        }
        Ok(Mapping { ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL"), len, writable })
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least 1 byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for the lifetime of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable. Panics on a read-only mapping (a programming error).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(self.writable, "read-only mapping");
        // SAFETY: writable mapping of `len` bytes, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Whether `[p, p + n)` lies inside this mapping.
    pub fn contains(&self, p: *const u8, n: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        let p = p as usize;
        p >= start && p.checked_add(n).is_some_and(|e| e <= start + self.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)` sized to `size` bytes.
pub fn create_memfd(name: &CStr, size: u64) -> Result<OwnedFd> {
    // SAFETY: plain syscall with a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(Error::last_os("memfd_create"));
    }
    // SAFETY: a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = libc::off_t::try_from(size)
        .map_err(|_| Error::new(ErrorCode::TooLarge, format!("segment of {size} bytes is too large")))?;
    // SAFETY: valid fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(Error::last_os("ftruncate"));
    }
    Ok(fd)
}

/// Adds `seals` with `F_ADD_SEALS`.
pub fn add_seals(fd: RawFd, seals: i32) -> Result<()> {
    // SAFETY: plain fcntl.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(Error::last_os("fcntl(F_ADD_SEALS)"));
    }
    Ok(())
}

/// A segment being written: a memfd, written with `pwritev`. No mapping: the kernel copies into
/// the file's pages without faulting them into this process or zeroing them first, and there is
/// nothing to unmap before sealing.
pub struct WritableSegment {
    fd: OwnedFd,
    size: usize,
}

impl WritableSegment {
    /// A new memfd segment of `size` bytes (> 0).
    pub fn new(size: usize) -> Result<WritableSegment> {
        if size == 0 {
            return err(ErrorCode::InvalidArgument, "a segment needs at least 1 byte");
        }
        let fd = create_memfd(c"arrow-shm", size as u64)?;
        Ok(WritableSegment { fd, size })
    }

    /// A new segment of `size` bytes whose pages are allocated now (`fallocate`), so writing it
    /// later allocates nothing. Made off the send path by [`crate::pool::SparePool`].
    pub fn preallocated(size: usize) -> Result<WritableSegment> {
        let seg = WritableSegment::new(size)?;
        let len = libc::off_t::try_from(size).map_err(|_| Error::new(ErrorCode::TooLarge, "segment too large"))?;
        // SAFETY: valid fd, range inside the file.
        if unsafe { libc::fallocate(seg.fd.as_raw_fd(), 0, 0, len) } != 0 {
            return Err(Error::last_os("fallocate"));
        }
        Ok(seg)
    }

    /// The segment's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Cuts a segment not sealed yet to `size` bytes (a spare cut to the table it will carry).
    pub fn truncate(&mut self, size: usize) -> Result<()> {
        if size == 0 || size > self.size {
            return err(ErrorCode::InvalidArgument, format!("cannot cut a {}-byte segment to {size} bytes", self.size));
        }
        // SAFETY: valid fd; the size fits (it is at most the current one).
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(Error::last_os("ftruncate"));
        }
        self.size = size;
        Ok(())
    }

    /// Writes `parts`, one after another, at byte `offset` with `pwritev` (the one copy of a send).
    pub fn write_at(&mut self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        let total = parts.iter().try_fold(offset, |n, p| n.checked_add(p.len()));
        if total.is_none_or(|end| end > self.size) {
            return err(ErrorCode::InvalidArgument, format!("{} bytes at {offset} do not fit a {}-byte segment", total.unwrap_or(usize::MAX) - offset, self.size));
        }
        let (mut at, mut i, mut done) = (offset, 0usize, 0usize); // parts[i][..done] is written
        while i < parts.len() {
            if done == parts[i].len() {
                (i, done) = (i + 1, 0);
                continue;
            }
            let iov: Vec<libc::iovec> = parts[i..]
                .iter()
                .take(1024) // IOV_MAX
                .enumerate()
                .map(|(k, p)| {
                    let p = if k == 0 { &p[done..] } else { p };
                    libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() }
                })
                .collect();
            // SAFETY: the iovecs point into live slices; the file range was checked above.
            let r = unsafe { libc::pwritev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32, at as libc::off_t) };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if r < 0 && e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(if r < 0 { Error::from_io("pwritev", &e) } else { Error::new(ErrorCode::Syscall, "pwritev wrote nothing") });
            }
            let mut n = r as usize;
            at += n;
            while n > 0 {
                let step = n.min(parts[i].len() - done);
                (n, done) = (n - step, done + step);
                if done == parts[i].len() {
                    (i, done) = (i + 1, 0);
                }
            }
        }
        Ok(())
    }

    /// Seals with the §6.1 set if `seal`, and returns the fd.
    pub fn finish(self, seal: bool) -> Result<OwnedFd> {
        if seal {
            add_seals(self.fd.as_raw_fd(), REQUIRED_SEALS)?;
        }
        Ok(self.fd)
    }
}

/// What the receiver learned from the §5.1 checks.
#[derive(Debug, Clone, Copy)]
pub struct SegmentInfo {
    /// The file's size (`fstat`).
    pub size: u64,
    /// Its seals (`F_GET_SEALS`).
    pub seals: i32,
}

/// Checks 2–5 of PROTOCOL.md §5.1 on a received fd. `ipc_length` `None` means "to the end of
/// the file" (seed compatibility).
pub fn check_segment(
    fd: RawFd,
    ipc_offset: u64,
    ipc_length: Option<u64>,
    max_message_bytes: u64,
    allow_unsealed: bool,
) -> Result<(SegmentInfo, u64)> {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(Error::last_os("fstat"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return err(ErrorCode::SegmentInvalid, "the fd is not a regular file (memfd expected)");
    }
    // SAFETY: plain fcntl.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if errno == libc::EINVAL {
            return err(ErrorCode::SegmentInvalid, "the fd is not a memfd/shmem file (F_GET_SEALS: EINVAL)");
        }
        return Err(Error::from_errno("fcntl(F_GET_SEALS)", errno));
    }
    if !allow_unsealed && seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return err(
            ErrorCode::SegmentUnsealed,
            format!("segment seals 0x{seals:x} lack the required 0x{REQUIRED_SEALS:x} (SEAL|SHRINK|GROW|WRITE)"),
        );
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let length = match ipc_length {
        Some(l) => l,
        None => size.saturating_sub(ipc_offset),
    };
    if length == 0 {
        return err(ErrorCode::SegmentBounds, "ipc_length is 0");
    }
    if ipc_offset % 8 != 0 {
        return err(ErrorCode::SegmentBounds, format!("ipc_offset {ipc_offset} is not a multiple of 8"));
    }
    match ipc_offset.checked_add(length) {
        Some(end) if end <= size => {}
        _ => {
            return err(
                ErrorCode::SegmentBounds,
                format!("ipc range {ipc_offset}+{length} lies outside the {size}-byte segment"),
            )
        }
    }
    if length > max_message_bytes {
        return err(
            ErrorCode::TooLarge,
            format!("ipc_length {length} exceeds max_message_bytes {max_message_bytes}"),
        );
    }
    if usize::try_from(size).is_err() {
        return err(ErrorCode::TooLarge, format!("segment of {size} bytes cannot be mapped"));
    }
    Ok((SegmentInfo { size, seals }, length))
}

/// Checks a received segment (§5.1 steps 2–6) and maps the whole file read-only. A segment
/// its sender can still shrink (no `F_SEAL_SHRINK`: only accepted with `allow_unsealed` or in
/// seed mode) is copied instead, with `pread`, up to the end of its IPC range: reading a mapping
/// of a file truncated meanwhile would kill the receiver with `SIGBUS`.
/// Returns the mapping and the effective `ipc_length`.
pub fn open_segment(
    fd: RawFd,
    ipc_offset: u64,
    ipc_length: Option<u64>,
    max_message_bytes: u64,
    allow_unsealed: bool,
) -> Result<(Mapping, u64)> {
    let (info, length) = check_segment(fd, ipc_offset, ipc_length, max_message_bytes, allow_unsealed)?;
    if info.seals & libc::F_SEAL_SHRINK == 0 {
        return Ok((copy_segment(fd, (ipc_offset + length) as usize)?, length));
    }
    // Not MAP_POPULATE: measured slower (mapping every page up front costs more than the faults
    // of the first read, which map 16 pages each).
    let map = Mapping::map(fd, info.size as usize, false)?;
    Ok((map, length))
}

/// A private anonymous mapping of `len` (> 0) zero bytes, writable.
fn anonymous(len: usize) -> Result<Mapping> {
    // SAFETY: a fresh private anonymous mapping; the result is checked.
    let ptr = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::last_os("mmap"));
    }
    Ok(Mapping { ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL"), len, writable: true })
}

impl Mapping {
    /// This process's own copy of `bytes` (> 0), page-aligned (an inline table, §5.3).
    pub fn copy_of(bytes: &[u8]) -> Result<Mapping> {
        if bytes.is_empty() {
            return err(ErrorCode::InvalidArgument, "cannot map 0 bytes");
        }
        let mut map = anonymous(bytes.len())?;
        map.as_mut_slice().copy_from_slice(bytes);
        map.writable = false;
        Ok(map)
    }
}

/// The first `len` bytes of `fd`, read into private memory.
fn copy_segment(fd: RawFd, len: usize) -> Result<Mapping> {
    let mut map = anonymous(len)?;
    let buf = map.as_mut_slice();
    let mut done = 0usize;
    while done < len {
        // SAFETY: reading into the rest of our own buffer.
        let r = unsafe { libc::pread(fd, buf[done..].as_mut_ptr().cast(), len - done, done as libc::off_t) };
        match r {
            0 => return err(ErrorCode::SegmentBounds, format!("the unsealed segment shrank below {len} bytes while it was read")),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(Error::from_io("pread", &e));
                }
            }
            r => done += r as usize,
        }
    }
    map.writable = false;
    Ok(map)
}
