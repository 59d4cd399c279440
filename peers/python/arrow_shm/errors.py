"""The one error type of arrow-shm, with the stable codes of PROTOCOL.md §9."""

from __future__ import annotations

from typing import Optional

ERR_PROTOCOL = "ERR_PROTOCOL"
ERR_PROTOCOL_VERSION = "ERR_PROTOCOL_VERSION"
ERR_PEER_CREDENTIALS = "ERR_PEER_CREDENTIALS"
ERR_PEER_CLOSED = "ERR_PEER_CLOSED"
ERR_SEGMENT_INVALID = "ERR_SEGMENT_INVALID"
ERR_SEGMENT_UNSEALED = "ERR_SEGMENT_UNSEALED"
ERR_SEGMENT_BOUNDS = "ERR_SEGMENT_BOUNDS"
ERR_TOO_LARGE = "ERR_TOO_LARGE"
ERR_IPC_TRUNCATED = "ERR_IPC_TRUNCATED"
ERR_IPC_INVALID = "ERR_IPC_INVALID"
ERR_IPC_UNSUPPORTED = "ERR_IPC_UNSUPPORTED"
ERR_IPC_LIMIT = "ERR_IPC_LIMIT"
ERR_TIMEOUT = "ERR_TIMEOUT"
ERR_CLOSED = "ERR_CLOSED"
ERR_INVALID_ARGUMENT = "ERR_INVALID_ARGUMENT"
ERR_SYSCALL = "ERR_SYSCALL"
ERR_REMOTE = "ERR_REMOTE"
ERR_RING_FULL = "ERR_RING_FULL"
ERR_NO_READER_SLOT = "ERR_NO_READER_SLOT"
ERR_RING_INVALID = "ERR_RING_INVALID"
ERR_RESOURCE_LIMIT = "ERR_RESOURCE_LIMIT"
ERR_ADDRESS_IN_USE = "ERR_ADDRESS_IN_USE"
#: A table store has no such name (or watch), §15.7.
ERR_NOT_FOUND = "ERR_NOT_FOUND"
#: A table store put without replace of a name that exists, §15.7.
ERR_EXISTS = "ERR_EXISTS"

CODES = frozenset(
    {
        ERR_PROTOCOL,
        ERR_PROTOCOL_VERSION,
        ERR_PEER_CREDENTIALS,
        ERR_PEER_CLOSED,
        ERR_SEGMENT_INVALID,
        ERR_SEGMENT_UNSEALED,
        ERR_SEGMENT_BOUNDS,
        ERR_TOO_LARGE,
        ERR_IPC_TRUNCATED,
        ERR_IPC_INVALID,
        ERR_IPC_UNSUPPORTED,
        ERR_IPC_LIMIT,
        ERR_TIMEOUT,
        ERR_CLOSED,
        ERR_INVALID_ARGUMENT,
        ERR_SYSCALL,
        ERR_REMOTE,
        ERR_RING_FULL,
        ERR_NO_READER_SLOT,
        ERR_RING_INVALID,
        ERR_RESOURCE_LIMIT,
        ERR_ADDRESS_IN_USE,
        ERR_NOT_FOUND,
        ERR_EXISTS,
    }
)

#: Frame-level codes: the detecting side sends ERROR (correlation_id 0) and closes the connection.
FATAL_CODES = frozenset({ERR_PROTOCOL, ERR_PROTOCOL_VERSION, ERR_PEER_CREDENTIALS})


class ArrowShmError(Exception):
    """An arrow-shm failure.

    Attributes:
        code: one of the stable codes of PROTOCOL.md §9 (``"ERR_PROTOCOL"``, ...).
        errno: the OS errno for ``ERR_SYSCALL`` (and some others), else ``None``.
        syscall: the failing system call's name for ``ERR_SYSCALL``, else ``None``.
        remote: ``True`` when the peer reported this error in an ``ERROR`` frame.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        errno: Optional[int] = None,
        syscall: Optional[str] = None,
        remote: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.errno = errno
        self.syscall = syscall
        self.remote = remote

    @property
    def fatal(self) -> bool:
        """True for frame-level errors that end the connection."""
        return self.code in FATAL_CODES


def syscall_error(syscall: str, exc: OSError) -> ArrowShmError:
    """Wrap an ``OSError`` from a system call as ``ERR_SYSCALL``."""
    return ArrowShmError(
        ERR_SYSCALL,
        f"{syscall} failed: {exc.strerror or exc}",
        errno=exc.errno,
        syscall=syscall,
    )
