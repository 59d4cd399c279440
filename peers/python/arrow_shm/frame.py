"""Frame header (64 bytes) and key/value block encoding, PROTOCOL.md §3.

Every malformation found while decoding is a fatal ``ERR_PROTOCOL``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Dict, Mapping, Optional

from .errors import ERR_INVALID_ARGUMENT, ERR_PROTOCOL, ArrowShmError

MAGIC = b"ASHM"
PROTOCOL_VERSION = 1
HEADER_LENGTH = 64
MAX_FRAME_BYTES = 65536
#: The largest key/value block that fits in one frame.
MAX_METADATA_BYTES = MAX_FRAME_BYTES - HEADER_LENGTH

# magic, version, kind, flags, header_length, metadata_length, message_id, correlation_id,
# ipc_offset, ipc_length, fd_count, reserved
_HEADER = struct.Struct("<4sHBBIIQQQQI12s")
assert _HEADER.size == HEADER_LENGTH
_U32 = struct.Struct("<I")
_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


class Kind(IntEnum):
    HELLO = 1
    WELCOME = 2
    TABLE = 3
    ACK = 4
    RELEASE = 5
    ERROR = 6
    GOODBYE = 7
    STREAM_OPEN = 8
    STREAM_SEGMENT = 9
    SUBSCRIBE = 10
    #: Table store requests, answers and watch events (§15), between sides that listed `store`.
    STORE = 11


class Flags(IntFlag):
    NONE = 0
    LEASED = 0x01
    REQUEST = 0x02
    RESPONSE = 0x04
    #: TABLE only: the IPC stream is inside the frame, with no segment (§5.3).
    INLINE = 0x08


KNOWN_FLAGS = int(Flags.LEASED | Flags.REQUEST | Flags.RESPONSE | Flags.INLINE)


def inline_offset(metadata_length: int) -> int:
    """Where an INLINE TABLE's IPC stream starts: after the header and metadata, 8-aligned (§5.3)."""
    return (HEADER_LENGTH + metadata_length + 7) & ~7


def inline_room(metadata: Optional[Mapping[str, str]]) -> int:
    """The largest IPC stream an INLINE TABLE frame with ``metadata`` can carry."""
    return MAX_FRAME_BYTES - inline_offset(len(encode_kv(metadata)))


@dataclass
class Frame:
    """One decoded (or to-be-encoded) frame. ``metadata`` is the decoded key/value block."""

    kind: Kind
    version: int = PROTOCOL_VERSION
    flags: int = 0
    message_id: int = 0
    correlation_id: int = 0
    ipc_offset: int = 0
    ipc_length: int = 0
    fd_count: int = 0
    metadata: Dict[str, str] = field(default_factory=dict)
    #: An INLINE TABLE's IPC stream (§5.3); encode_frame sets ipc_offset/ipc_length from it.
    inline: Optional[bytes | memoryview] = None


def error_frame(code: str, message: str, correlation_id: int, flags: int = 0) -> Frame:
    """An ERROR frame (§7); the message is cut to 4096 characters."""
    return Frame(kind=Kind.ERROR, flags=flags, correlation_id=correlation_id, metadata={"code": code, "message": message[:4096]})


def _protocol(msg: str) -> ArrowShmError:
    return ArrowShmError(ERR_PROTOCOL, msg)


def parse_decimal(text: Optional[str], what: str, max_digits: int = 9) -> int:
    """A handshake number (§4): ``0`` or ``[1-9][0-9]*``, at most ``max_digits`` digits; no sign,
    ``0x``, exponent, space or empty string (``int()`` accepts several of those). Else fatal
    ``ERR_PROTOCOL``."""
    ok = (
        text is not None
        and 0 < len(text) <= max_digits
        and all("0" <= c <= "9" for c in text)
        and (text == "0" or text[0] != "0")
    )
    if not ok:
        raise _protocol(f"{what} {text!r} is not a decimal number")
    return int(text)  # type: ignore[arg-type]


def encode_kv(kv: Optional[Mapping[str, str]]) -> bytes:
    """Encode a key/value block; an empty map encodes as zero bytes (§3.1 SHOULD)."""
    if not kv:
        return b""
    parts = [_U32.pack(len(kv))]
    for key, value in kv.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "metadata keys and values must be str")
        kb = key.encode("utf-8")
        vb = value.encode("utf-8")
        parts += [_U32.pack(len(kb)), kb, _U32.pack(len(vb)), vb]
    out = b"".join(parts)
    if len(out) > MAX_METADATA_BYTES:
        raise ArrowShmError(
            ERR_INVALID_ARGUMENT,
            f"metadata block of {len(out)} bytes exceeds the {MAX_METADATA_BYTES}-byte frame limit",
        )
    return out


def decode_kv(block: bytes | memoryview) -> Dict[str, str]:
    """Decode a key/value block that must fill ``block`` exactly."""
    data = bytes(block)
    n = len(data)
    if n == 0:
        return {}
    if n < 4:
        raise _protocol(f"key/value block of {n} bytes is shorter than its 4-byte count")
    (count,) = _U32.unpack_from(data, 0)
    # Each entry needs at least 8 bytes of lengths: reject absurd counts before looping.
    if count > (n - 4) // 8:
        raise _protocol(f"key/value count {count} does not fit in {n} bytes")
    pos = 4
    out: Dict[str, str] = {}
    for _ in range(count):
        strings = []
        for what in ("key", "value"):
            if pos + 4 > n:
                raise _protocol(f"key/value block ends inside a {what} length")
            (length,) = _U32.unpack_from(data, pos)
            pos += 4
            if length > n - pos:
                raise _protocol(f"{what} of {length} bytes overruns the key/value block")
            try:
                strings.append(data[pos : pos + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise _protocol(f"{what} is not valid UTF-8") from None
            pos += length
        key, value = strings
        if key in out:
            raise _protocol(f"duplicate key {key!r} in key/value block")
        out[key] = value
    if pos != n:
        raise _protocol(f"key/value block has {n - pos} trailing bytes")
    return out


def encode_frame(frame: Frame) -> bytes:
    """Encode a frame (header + key/value block)."""
    meta = encode_kv(frame.metadata)
    for name in ("message_id", "correlation_id", "ipc_offset", "ipc_length"):
        v = getattr(frame, name)
        if not 0 <= v <= _U64_MAX:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{name} {v} out of range")
    if frame.flags & ~KNOWN_FLAGS:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"unknown flags 0x{frame.flags:x}")
    padding = b""
    if frame.inline is not None:
        start = inline_offset(len(meta))
        if not 0 < len(frame.inline) <= MAX_FRAME_BYTES - start:
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"inline stream of {len(frame.inline)} bytes does not fit in the frame")
        frame.ipc_offset, frame.ipc_length = start, len(frame.inline)
        padding = b"\0" * (start - HEADER_LENGTH - len(meta))
    header = _HEADER.pack(
        MAGIC,
        frame.version,
        int(frame.kind),
        int(frame.flags),
        HEADER_LENGTH,
        len(meta),
        frame.message_id,
        frame.correlation_id,
        frame.ipc_offset,
        frame.ipc_length,
        frame.fd_count,
        b"\0" * 12,
    )
    if frame.inline is not None:
        return b"".join((header, meta, padding, frame.inline))
    return header + meta


def decode_frame(data: bytes | memoryview) -> Frame:
    """Decode one received datagram; any malformation raises fatal ``ERR_PROTOCOL``.

    The version is *not* checked here (the channel checks it against the handshake).
    """
    n = len(data)
    if n < HEADER_LENGTH:
        raise _protocol(f"frame of {n} bytes is shorter than the {HEADER_LENGTH}-byte header")
    if n > MAX_FRAME_BYTES:
        raise _protocol(f"frame of {n} bytes exceeds {MAX_FRAME_BYTES} bytes")
    (
        magic,
        version,
        kind,
        flags,
        header_length,
        metadata_length,
        message_id,
        correlation_id,
        ipc_offset,
        ipc_length,
        fd_count,
        _reserved,
    ) = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise _protocol(f"bad frame magic {bytes(magic)!r}, expected b'ASHM'")
    if not Kind.HELLO <= kind <= Kind.STORE:
        raise _protocol(f"unknown frame kind {kind}")
    if flags & ~KNOWN_FLAGS:
        raise _protocol(f"unknown frame flags 0x{flags:x}")
    if header_length != HEADER_LENGTH:
        raise _protocol(f"header length {header_length}, expected {HEADER_LENGTH}")
    metadata_end = n
    inline: Optional[memoryview] = None
    if flags & Flags.INLINE:
        # §5.3: header, metadata, padding to 8, then exactly the IPC stream, to the end of the frame.
        if kind != Kind.TABLE:
            raise _protocol(f"INLINE flag on a {Kind(kind).name} frame")
        start = inline_offset(metadata_length)
        if metadata_length > n - HEADER_LENGTH or ipc_offset != start or ipc_length == 0 or ipc_offset + ipc_length != n:
            raise _protocol(
                f"INLINE TABLE frame of {n} bytes with metadata {metadata_length}, IPC range [{ipc_offset}, +{ipc_length}):"
                f" the stream must start at {start} and end the frame"
            )
        metadata_end = HEADER_LENGTH + metadata_length
        inline = memoryview(data)[start:]
    elif metadata_length != n - HEADER_LENGTH:
        raise _protocol(
            f"metadata length {metadata_length} does not match the {n - HEADER_LENGTH} bytes after the header"
        )
    kv = decode_kv(memoryview(data)[HEADER_LENGTH:metadata_end])
    return Frame(
        kind=Kind(kind),
        version=version,
        flags=flags,
        message_id=message_id,
        correlation_id=correlation_id,
        ipc_offset=ipc_offset,
        ipc_length=ipc_length,
        fd_count=fd_count,
        metadata=kv,
        inline=inline,
    )
