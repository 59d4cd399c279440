"""UNIX sockets: addresses, listening and connecting, peer credentials, receiving fds (PROTOCOL.md §2)."""

from __future__ import annotations

import array
import errno as _errno
import os
import select
import socket
import stat
import struct
import time
from typing import Any, List, Optional

from .errors import ERR_ADDRESS_IN_USE, ERR_INVALID_ARGUMENT, ERR_TIMEOUT, ArrowShmError, syscall_error

MAX_FDS = 16  # ancillary room: more fds than a frame may carry are still received, then closed
_PEERCRED = struct.Struct("3i")


def socket_address(addr: str) -> str:
    """``@name`` → abstract address (leading NUL, no trailing NULs); anything else is a path."""
    if not addr:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, "empty socket address")
    if addr.startswith("@"):
        return "\0" + addr[1:]
    return addr


def deadline_after(timeout: Optional[float]) -> Optional[float]:
    """The monotonic time ``timeout`` seconds from now (None: no deadline)."""
    return None if timeout is None else time.monotonic() + timeout


def time_left(deadline: Optional[float]) -> Optional[float]:
    """Seconds until ``deadline`` (0 once passed; None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _live_listener_at(path: str, sock_type: int) -> bool:
    """Does a live socket answer at ``path``? (Not: a stale file of a dead process, ECONNREFUSED.)"""
    probe = socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
        return True
    except (BlockingIOError, InterruptedError):
        return True  # its backlog is full: alive
    except OSError as e:
        # EPROTOTYPE: a live socket of another type; ECONNREFUSED/ENOENT: nobody home.
        return e.errno not in (_errno.ECONNREFUSED, _errno.ENOENT)
    finally:
        probe.close()


def bind_listening_socket(address: str, sock_type: int, backlog: int) -> tuple[socket.socket, Optional[str], Optional[tuple[int, int]]]:
    """A listening socket at ``address``: a path where a live listener answers is
    ``ERR_ADDRESS_IN_USE``; a stale socket file is removed first; a path is bound, chmod 0600, then
    listened on (§2, §14.2). Returns (socket, path or None, (st_dev, st_ino) of the file)."""
    target = socket_address(address)
    path: Optional[str] = None if target.startswith("\0") else target
    inode: Optional[tuple[int, int]] = None
    sock = socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC)
    try:
        if path is not None:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{path} exists and is not a socket")
                if _live_listener_at(path, sock_type):
                    raise ArrowShmError(ERR_ADDRESS_IN_USE, f"another listener answers at {path}")
                os.unlink(path)  # a stale socket file
        try:
            sock.bind(target)
        except OSError as e:
            if e.errno == _errno.EADDRINUSE:  # an abstract name taken, or a path bound meanwhile
                raise ArrowShmError(ERR_ADDRESS_IN_USE, f"{address} is in use") from None
            raise syscall_error("bind", e) from None
        if path is not None:
            os.chmod(path, 0o600)
            st = os.stat(path)
            inode = (st.st_dev, st.st_ino)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        if inode is not None and path is not None:
            os.unlink(path)
        raise
    return sock, path, inode


def unlink_socket_file(path: Optional[str], inode: Optional[tuple[int, int]]) -> None:
    """Remove our socket file, unless someone else's file has replaced it since."""
    if path is None or inode is None:
        return
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == inode:
            os.unlink(path)
    except OSError:
        pass


def connect_socket(address: str, sock_type: int, deadline: Optional[float]) -> socket.socket:
    """Connect to ``address``. With a deadline, a listener that is not there yet (ENOENT /
    ECONNREFUSED) is retried until then (``ERR_TIMEOUT``); without one, failure is ``ERR_SYSCALL``."""
    target = socket_address(address)
    while True:
        sock = socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC)
        try:
            sock.connect(target)
            return sock
        except OSError as e:
            sock.close()
            retry = e.errno in (_errno.ENOENT, _errno.ECONNREFUSED) and deadline is not None
            if retry and time.monotonic() < deadline:  # type: ignore[operator]
                time.sleep(0.01)
                continue
            if retry:
                raise ArrowShmError(ERR_TIMEOUT, f"no listener at {address}: {e.strerror}") from None
            raise syscall_error("connect", e) from None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer via SO_PEERCRED."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError as e:
        raise syscall_error("getsockopt(SO_PEERCRED)", e) from None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def recv_with_fds(sock: socket.socket, bufsize: int, deadline: Optional[float]) -> tuple[bytes, list[int], int]:
    """One ``recvmsg`` (after waiting for readability until ``deadline``): (data, fds, msg_flags)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        remaining = time_left(deadline)
        ready = poller.poll(None if remaining is None else int(remaining * 1000) + (1 if remaining else 0))
        if ready:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise ArrowShmError(ERR_TIMEOUT, "timed out waiting for the peer")
    try:
        data, ancdata, msg_flags, _ = sock.recvmsg(
            bufsize, socket.CMSG_SPACE(MAX_FDS * 4), getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        )
    except ConnectionResetError:
        return b"", [], 0
    except OSError as e:
        raise syscall_error("recvmsg", e) from None
    return data, fds_of(ancdata), msg_flags


def fds_of(ancdata: List[Any]) -> List[int]:
    """The file descriptors of ``recvmsg`` ancillary data (SCM_RIGHTS), now ours to close."""
    fds: List[int] = []
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            fa = array.array("i")
            fa.frombytes(cdata[: len(cdata) - (len(cdata) % fa.itemsize)])
            fds.extend(fa)
    return fds


