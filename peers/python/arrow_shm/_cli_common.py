"""What the CLI's commands share (cli.py, stream_cli.py): the program name, the listening line,
--timeout-ms, opening the one connection a command uses, and writing --out files."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Optional

from .channel import Channel, connect
from .listener import listen

PROG = "arrow-shm"


def listening(addr: str) -> None:
    sys.stderr.write(f"{PROG}: listening on {addr}\n")
    sys.stderr.flush()


def timeout_of(args: argparse.Namespace) -> Optional[float]:
    return None if args.timeout_ms is None else args.timeout_ms / 1000.0


def open_channel(address: str, *, listen_first: bool, timeout: Optional[float]) -> Channel:
    """Connect to ``address``, or listen there (printing the listening line) for one peer."""
    if not listen_first:
        return connect(address, timeout=timeout)
    with listen(address) as lst:
        listening(address)
        return lst.accept(timeout=timeout)


class UsageError(Exception):
    """Bad usage: one line on stderr, exit status 2 (docs/CLI.md)."""


def _errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e))


def check_out(out: str, as_dir: bool) -> None:
    """Before anything is accepted (an acknowledged table can no longer be refused): ``--out``'s
    directory (``out`` itself when ``as_dir``, created if missing) exists and is writable; else a
    usage error, worded as the TypeScript CLI's (src/cli/output.ts)."""
    directory = out if as_dir else os.path.dirname(out) or "."
    if as_dir:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the --out directory {out}: {_errno_name(e)}") from None
    elif not os.path.isdir(directory):
        raise UsageError(f"cannot write --out {out}: no directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write --out {out}: {directory} is not writable (EACCES)")


@contextmanager
def replace_when_complete(path: str) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, renamed to ``path`` only when the block completes; on any
    failure it is removed, so a partial output never appears."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with open(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
