"""What the CLI's commands share (cli.py, stream_cli.py): the program name, the listening line,
--timeout-ms, and opening the one connection a command uses."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .channel import Channel, connect, listen

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
