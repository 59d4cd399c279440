"""Seed compatibility mode (PROTOCOL.md §10): the proof of concept's protocol, exactly.

SOCK_STREAM; the sender listens, accepts one connection, sends one byte ``b'F'`` with an *unsealed*
memfd of at least 40,960 bytes attached, and closes. No handshake, no ACK.
"""

from __future__ import annotations

import array
import errno
import os
import select
import socket
import time
from typing import Any, Optional

from .sockets import bind_listening_socket, connect_socket, recv_with_fds, unlink_socket_file
from .errors import ERR_PEER_CLOSED, ERR_PROTOCOL, ERR_SEGMENT_BOUNDS, ERR_TIMEOUT, ArrowShmError, syscall_error
from .ipc import DEFAULT_VALIDATE, check_validate
from .message import ReceivedTable, open_segment
from .segment import (
    DEFAULT_MAX_MESSAGE_BYTES,
    SEED_SEGMENT_BYTES,
    Segment,
    check_segment,
    write_table_segment,
)

DEFAULT_SEED_SOCKET = "/tmp/memfd_socket"


class SeedListener:
    """SOCK_STREAM listener for ``send --seed-compat`` (mode 0600, stale file removed)."""

    def __init__(self, address: str = DEFAULT_SEED_SOCKET) -> None:
        sock, self._path, self._inode = bind_listening_socket(address, socket.SOCK_STREAM, 1)
        self._sock: Optional[socket.socket] = sock

    def send(self, data: Any, *, timeout: Optional[float] = None) -> None:
        """Accept one connection and send ``b'F'`` + an unsealed memfd holding ``data``."""
        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        if not poller.poll(None if timeout is None else int(timeout * 1000)):
            raise ArrowShmError(ERR_TIMEOUT, "timed out waiting for a seed receiver")
        seg, _length = write_table_segment(data, min_size=SEED_SEGMENT_BYTES, seal=False)
        with seg:
            conn, _ = self._sock.accept()
            with conn:
                try:
                    conn.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [seg.fd]))])
                except (BrokenPipeError, ConnectionResetError):
                    raise ArrowShmError(ERR_PEER_CLOSED, "the seed receiver hung up") from None
                except OSError as e:
                    raise syscall_error("sendmsg", e) from None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            unlink_socket_file(self._path, self._inode)

    def __enter__(self) -> "SeedListener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def seed_receive(
    address: str = DEFAULT_SEED_SOCKET,
    *,
    timeout: Optional[float] = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    validate: str = DEFAULT_VALIDATE,
) -> ReceivedTable:
    """Connect to a seed sender, receive ``b'F'`` + fd, copy it into a sealed segment of our own
    (:func:`sealed_copy`: the sender may truncate its unsealed one), map that read-only and
    validate the stream.

    The returned message's ``ipc_bytes`` cover the stream up to and including its end-of-stream
    marker (the rest of the segment is zero padding).
    """
    check_validate(validate)
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = connect_socket(address, socket.SOCK_STREAM, deadline)
    with sock:
        data, fds, _flags = recv_with_fds(sock, 1, deadline)
    if not fds:
        if not data:
            raise ArrowShmError(ERR_PEER_CLOSED, "the seed sender hung up without sending")
        raise ArrowShmError(ERR_PROTOCOL, "the seed sender sent no file descriptor")
    for extra in fds[1:]:
        os.close(extra)
    fd = fds[0]
    try:
        if data != b"F" or len(fds) != 1:
            raise ArrowShmError(ERR_PROTOCOL, f"expected b'F' with one fd, got {data!r} with {len(fds)}")
        copy = sealed_copy(fd, max_message_bytes)
    finally:
        os.close(fd)
    with copy:
        mapping, info = open_segment(copy.fd, 0, None, max_message_bytes=max_message_bytes)
    return ReceivedTable(mapping=mapping, ipc_offset=0, ipc_length=info.end, validate=validate)


def sealed_copy(fd: int, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Segment:
    """A sealed copy of an unsealed segment, made by the kernel (copy_file_range, or pread): its
    sender can truncate the original at any time, and reading a truncated page of a *mapping* is
    SIGBUS, while a copy just comes up short. A short copy, or a size that changed meanwhile, is
    ``ERR_SEGMENT_BOUNDS``."""
    size = os.fstat(fd).st_size
    check_segment(fd, 0, size, max_message_bytes=max_message_bytes, allow_unsealed=True)
    copy = Segment.create(size, "arrow-shm-seed-copy")
    try:
        done = 0
        while done < size:
            try:
                n = os.copy_file_range(fd, copy.fd, size - done, done, done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise syscall_error("copy_file_range", e) from None
                chunk = os.pread(fd, min(size - done, 1 << 20), done)
                n = len(chunk)
                copy.write_at(done, chunk)
            if n == 0:
                break
            done += n
        if done != size or os.fstat(fd).st_size != size:
            raise ArrowShmError(ERR_SEGMENT_BOUNDS, "the sender truncated its unsealed segment while it was copied")
        copy.seal()
    except BaseException:
        copy.close()
        raise
    return copy
