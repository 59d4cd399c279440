"""HELLO / WELCOME (PROTOCOL.md §4): what each side says and what it accepts of the other. The
channel does the I/O; a bad field here is a fatal ERR_PROTOCOL, a version mismatch
ERR_PROTOCOL_VERSION."""

from __future__ import annotations

import os
from typing import Dict, Iterable, NamedTuple, Optional, Set

from . import __version__
from .errors import ERR_PROTOCOL_VERSION, ArrowShmError
from .frame import PROTOCOL_VERSION, parse_decimal

IMPLEMENTATION = f"arrow-shm-python/{__version__}"


class Agreement(NamedTuple):
    """What the peer said of itself."""

    capabilities: Set[str]
    implementation: str
    #: The largest message it receives (WELCOME only; None: not said).
    max_message_bytes: Optional[int] = None


def _about_me(capabilities: Iterable[str]) -> Dict[str, str]:
    return {"capabilities": ",".join(capabilities), "implementation": IMPLEMENTATION, "pid": str(os.getpid())}


def hello_metadata(capabilities: Iterable[str]) -> Dict[str, str]:
    return {"min_version": str(PROTOCOL_VERSION), "max_version": str(PROTOCOL_VERSION), **_about_me(capabilities)}


def welcome_metadata(capabilities: Iterable[str], max_message_bytes: int) -> Dict[str, str]:
    return {"version": str(PROTOCOL_VERSION), **_about_me(capabilities), "max_message_bytes": str(max_message_bytes)}


def check_hello(kv: Dict[str, str]) -> Agreement:
    lo = parse_decimal(kv.get("min_version"), "HELLO min_version")
    hi = parse_decimal(kv.get("max_version"), "HELLO max_version")
    peer = _peer(kv)
    if not lo <= PROTOCOL_VERSION <= hi:
        raise ArrowShmError(ERR_PROTOCOL_VERSION, f"peer speaks protocol versions {lo}..{hi}, this side speaks {PROTOCOL_VERSION}")
    return peer


def check_welcome(kv: Dict[str, str]) -> Agreement:
    version = parse_decimal(kv.get("version"), "WELCOME version")
    peer = _peer(kv)
    if "max_message_bytes" in kv:  # a byte count: may exceed 9 digits (16 GiB has 11)
        peer = peer._replace(max_message_bytes=parse_decimal(kv["max_message_bytes"], "WELCOME max_message_bytes", 20))
    if version != PROTOCOL_VERSION:
        raise ArrowShmError(ERR_PROTOCOL_VERSION, f"peer chose protocol version {version}")
    return peer


def _peer(kv: Dict[str, str]) -> Agreement:
    if "pid" in kv:
        parse_decimal(kv["pid"], "pid")  # informative only (SO_PEERCRED is what counts), but well formed
    caps = kv.get("capabilities", "")
    return Agreement({c.strip() for c in caps.split(",") if c.strip()}, kv.get("implementation", ""))
