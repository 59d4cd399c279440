"""memfd segments: create, write, seal (sender) and check, map read-only (receiver).

PROTOCOL.md §5 and §6.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import mmap
import os
import stat
from typing import Callable, Iterable, Optional, Sequence, TypeVar, Union

import pyarrow as pa

from .errors import (
    ERR_CLOSED,
    ERR_INVALID_ARGUMENT,
    ERR_SEGMENT_BOUNDS,
    ERR_SEGMENT_INVALID,
    ERR_SEGMENT_UNSEALED,
    ERR_TOO_LARGE,
    ArrowShmError,
    syscall_error,
)

F_ADD_SEALS: int = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS: int = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SEAL: int = getattr(fcntl, "F_SEAL_SEAL", 0x0001)
F_SEAL_SHRINK: int = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)
F_SEAL_GROW: int = getattr(fcntl, "F_SEAL_GROW", 0x0004)
F_SEAL_WRITE: int = getattr(fcntl, "F_SEAL_WRITE", 0x0008)
F_SEAL_FUTURE_WRITE: int = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)

#: Seals of a sealed (default) segment, §6.1.
SEALS_SEALED = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
#: Seals a LEASED segment must carry at least, §6.2.
SEALS_LEASED = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW

#: Default largest ipc_length a receiver accepts (16 GiB, as the TypeScript peer).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024**3

#: madvise(2) advice (Linux 5.14+): fault in every page of a range, writable, now.
MADV_POPULATE_WRITE: int = getattr(mmap, "MADV_POPULATE_WRITE", 23)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def populate(address: int, size: int) -> bool:
    """MADV_POPULATE_WRITE on a writable mapping that is not a Python mmap (one pyarrow made):
    every page faulted in now. Best effort: False where the kernel lacks it (pages fault later)."""
    return bool(_libc.madvise(address, size, MADV_POPULATE_WRITE) == 0)


#: Most buffers one pwritev(2) takes.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024

#: Minimum size of a seed-compat segment (the seed receiver maps 4096 * 10 bytes), §10.
SEED_SEGMENT_BYTES = 40960

TableLike = Union[pa.Table, pa.RecordBatch, "list[pa.RecordBatch]"]


_C = TypeVar("_C", bound="Closing")


class Closing:
    """A context manager that :meth:`close` s on exit, and closes when garbage-collected too (an
    owner of fds or mappings must not leak them when the application forgets)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def close_fds(fds: Iterable[int]) -> None:
    """Close each fd we own (negative: already gone); a failing close has nothing left to undo."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _memfd(name: str) -> int:
    try:
        return os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as e:
        raise syscall_error("memfd_create", e) from None


def _ftruncate(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        raise syscall_error("ftruncate", e) from None


class Segment(Closing):
    """A sender-side memfd segment (owns its fd until :meth:`detach_fd` or :meth:`close`).

    Usage::

        with Segment.create(n) as seg:
            seg.write_at(0, data)      # or map it: seg.map_writable()
            seg.seal()
            send(seg.fd)
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd: Optional[int] = fd
        self.size = size
        #: A writable mapping of the whole segment with its pages already faulted in
        #: (:meth:`prefault`, a spare's): writes go through it, one memcpy each. Unmapped by
        #: :meth:`seal` (sealing needs no writable mapping) and :meth:`close`.
        self.mapping: Optional[mmap.mmap] = None

    @classmethod
    def create(cls, size: int, name: str = "arrow-shm") -> "Segment":
        if size < 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"negative segment size {size}")
        fd = _memfd(name)
        try:
            _ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ArrowShmError(ERR_CLOSED, "segment is closed")
        return self._fd

    def write_at(self, offset: int, data: Union[bytes, bytearray, memoryview, pa.Buffer]) -> None:
        """Copy ``data`` into the segment at ``offset``."""
        self.write_all_at(offset, [data])

    def write_all_at(self, offset: int, buffers: Sequence[Union[bytes, bytearray, memoryview, pa.Buffer]]) -> None:
        """Copy ``buffers`` one after the other into the segment from ``offset``: through
        :attr:`mapping` when there is one, else with few ``pwritev`` calls (no mapping: a fresh
        mapping would take a page fault per 4 KiB page, pwritev lets the kernel fill the pages)."""
        views = [memoryview(b).cast("B") for b in buffers]
        if offset < 0 or offset + sum(len(v) for v in views) > self.size:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "write outside the segment")
        views = [v for v in views if len(v)]
        if self.mapping is not None:
            for view in views:
                self.mapping[offset : offset + len(view)] = view
                offset += len(view)
            return
        while views:
            try:
                done = os.pwritev(self.fd, views[:_IOV_MAX], offset)
            except InterruptedError:
                continue
            except OSError as e:
                raise syscall_error("pwritev", e) from None
            offset += done
            while views and done >= len(views[0]):  # drop what was written, keep the rest of a partial one
                done -= len(views[0])
                views.pop(0)
            if done:
                views[0] = views[0][done:]

    def map_writable(self) -> mmap.mmap:
        """A shared writable mapping; it must be closed before :meth:`seal` (EBUSY otherwise)."""
        try:
            # MAP_POPULATE: fault the fresh pages in one go instead of one fault per 4 KiB page.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            return mmap.mmap(self.fd, self.size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise syscall_error("mmap", e) from None

    def prefault(self) -> None:
        """Allocate every page of the segment now and keep :attr:`mapping`, a writable mapping
        with the pages faulted in (a spare made off the critical path: writing through it is then
        one memcpy). ``MADV_POPULATE_WRITE`` (Linux 5.14+), else ``posix_fallocate`` (the pages
        exist; the mapping takes a minor fault per page at first write)."""
        mapping = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            mapping.madvise(MADV_POPULATE_WRITE)
        except OSError:
            os.posix_fallocate(self.fd, 0, self.size)
        self.mapping = mapping

    def _unmap(self) -> None:
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                # A buffer over it is still referenced (a failed write's traceback): unmapped when
                # that goes. Sealing then fails with EBUSY, which is right: it is still writable.
                pass

    def seal(self, seals: int = SEALS_SEALED) -> None:
        self._unmap()
        try:
            fcntl.fcntl(self.fd, F_ADD_SEALS, seals)
        except OSError as e:
            raise syscall_error("fcntl(F_ADD_SEALS)", e) from None

    def seals(self) -> int:
        try:
            return fcntl.fcntl(self.fd, F_GET_SEALS)
        except OSError as e:
            raise syscall_error("fcntl(F_GET_SEALS)", e) from None

    def truncate(self, size: int) -> None:
        """Resize a segment not sealed yet (a spare cut to the table it will carry)."""
        _ftruncate(self.fd, size)
        self.size = size

    def detach_fd(self) -> int:
        """Give up ownership of the fd (the caller closes it)."""
        fd = self.fd
        self._fd = None
        return fd

    def close(self) -> None:
        self._unmap()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)



def _batches(data: TableLike) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    if isinstance(data, pa.Table):
        return data.schema, data.to_batches()
    if isinstance(data, pa.RecordBatch):
        return data.schema, [data]
    batches = list(data)
    if not batches or not all(isinstance(b, pa.RecordBatch) for b in batches):
        raise ArrowShmError(
            ERR_INVALID_ARGUMENT,
            "expected a pyarrow Table, RecordBatch, a non-empty list of RecordBatches, or IPC bytes",
        )
    return batches[0].schema, batches


def _write_stream(sink: object, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
    with pa.ipc.new_stream(sink, schema) as writer:
        for b in batches:
            writer.write_batch(b)


class _GatherSink:
    """A write-only file that keeps what pyarrow's IPC writer hands it: the table's own buffers
    (zero-copy ``pyarrow.Buffer`` s) and small metadata/padding bytes, so that the stream's size is
    known before a segment is chosen and the bytes are copied once, by :meth:`Segment.write_all_at`."""

    closed = False

    def __init__(self) -> None:
        self.buffers: list[Union[bytes, memoryview, pa.Buffer]] = []
        self.position = 0

    def write(self, data: Union[bytes, memoryview, pa.Buffer]) -> int:
        length = memoryview(data).nbytes
        self.buffers.append(data)
        self.position += length
        return length

    def tell(self) -> int:
        return self.position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def write_table_segment(
    data: Union[TableLike, bytes, bytearray, memoryview, pa.Buffer],
    *,
    min_size: int = 0,
    seal: bool = True,
    create: Callable[[int], Segment] = Segment.create,
) -> tuple[Segment, int]:
    """Write ``data`` as one IPC stream at offset 0 of a new segment and (by default) seal it.

    ``data`` is a Table / RecordBatch / list of RecordBatches (written by pyarrow straight into the
    segment, no intermediate copy: see :class:`_GatherSink`) or bytes of an IPC stream (copied byte
    for byte).
    Returns the segment (owning its fd) and ``ipc_length``. The segment is at least ``min_size``
    bytes; bytes after the stream are zero. ``create(size)`` makes the segment (a spare pool's
    ``take`` hands out pre-allocated ones).
    """
    if isinstance(data, (bytes, bytearray, memoryview, pa.Buffer)):
        raw = memoryview(data).cast("B")
        length = len(raw)
        if length == 0:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "empty IPC stream")
        seg = create(max(length, min_size))
        return _filled(seg, lambda: seg.write_at(0, raw), seal), length

    schema, batches = _batches(data)
    sink = _GatherSink()
    stream = pa.PythonFile(sink, mode="w")
    _write_stream(stream, schema, batches)
    stream.close()
    seg = create(max(sink.position, min_size))
    return _filled(seg, lambda: seg.write_all_at(0, sink.buffers), seal), sink.position


def _filled(seg: Segment, write: Callable[[], object], seal: bool) -> Segment:
    """``seg`` after ``write()`` (and sealing, if asked); closed if anything fails."""
    try:
        write()
        if seal:
            seg.seal()
    except BaseException:
        seg.close()
        raise
    return seg


# ---------------------------------------------------------------------------------------------
# Receiver side


def check_segment(
    fd: int,
    ipc_offset: int,
    ipc_length: int,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    allow_unsealed: bool = False,
    leased: bool = False,
) -> int:
    """PROTOCOL.md §5.1 steps 2-5 on a received fd. Returns ``st_size``.

    Raises ``ERR_SEGMENT_INVALID``, ``ERR_SEGMENT_UNSEALED``, ``ERR_SEGMENT_BOUNDS`` or
    ``ERR_TOO_LARGE``. ``leased`` accepts the lease seal set (no ``F_SEAL_WRITE``).
    """
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise syscall_error("fstat", e) from None
    if not stat.S_ISREG(st.st_mode):
        raise ArrowShmError(ERR_SEGMENT_INVALID, "the fd is not a regular file (not a memfd)")
    try:
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError as e:
        if e.errno == _errno.EINVAL:
            raise ArrowShmError(
                ERR_SEGMENT_INVALID, "F_GET_SEALS failed with EINVAL: not a memfd/shmem file"
            ) from None
        raise syscall_error("fcntl(F_GET_SEALS)", e) from None
    if not allow_unsealed:
        required = SEALS_LEASED if leased else SEALS_SEALED
        if seals & required != required:
            missing = required & ~seals
            raise ArrowShmError(
                ERR_SEGMENT_UNSEALED,
                f"segment seals 0x{seals:x} lack the required 0x{missing:x}"
                + (" (leased segment)" if leased else ""),
            )
    size = st.st_size
    if ipc_length <= 0:
        raise ArrowShmError(ERR_SEGMENT_BOUNDS, "ipc_length is 0")
    if ipc_offset % 8:
        raise ArrowShmError(ERR_SEGMENT_BOUNDS, f"ipc_offset {ipc_offset} is not a multiple of 8")
    if ipc_offset > size or ipc_length > size - ipc_offset:
        raise ArrowShmError(
            ERR_SEGMENT_BOUNDS,
            f"IPC range [{ipc_offset}, +{ipc_length}) is outside the {size}-byte segment",
        )
    if ipc_length > max_message_bytes:
        raise ArrowShmError(
            ERR_TOO_LARGE, f"ipc_length {ipc_length} exceeds max_message_bytes {max_message_bytes}"
        )
    return size


def map_readonly(fd: int, size: int) -> mmap.mmap:
    """Map ``size`` bytes of ``fd`` PROT_READ / MAP_SHARED (§5.1 step 6)."""
    if size <= 0:
        raise ArrowShmError(ERR_SEGMENT_BOUNDS, "cannot map an empty segment")
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except OSError as e:
        raise syscall_error("mmap", e) from None
