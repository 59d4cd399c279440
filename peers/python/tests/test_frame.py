import struct

import pytest

from arrow_shm.errors import ArrowShmError
from arrow_shm.frame import (
    HEADER_LENGTH,
    MAX_FRAME_BYTES,
    Flags,
    Frame,
    Kind,
    decode_frame,
    decode_kv,
    encode_frame,
    encode_kv,
)


def test_round_trip_all_fields():
    f = Frame(
        kind=Kind.TABLE,
        flags=Flags.REQUEST | Flags.LEASED,
        message_id=2**64 - 1,
        correlation_id=7,
        ipc_offset=64,
        ipc_length=12345,
        fd_count=1,
        metadata={"name": "symbols", "ünï": "cødé", "": ""},
    )
    data = encode_frame(f)
    assert data[:4] == b"ASHM"
    assert len(data) == HEADER_LENGTH + struct.unpack_from("<I", data, 12)[0]
    assert data[52:64] == b"\0" * 12
    g = decode_frame(data)
    assert g == f


def test_layout_is_little_endian_and_at_spec_offsets():
    data = encode_frame(Frame(kind=Kind.ACK, message_id=0x0102, correlation_id=0x0304))
    assert struct.unpack_from("<H", data, 4)[0] == 1
    assert data[6] == 4 and data[7] == 0
    assert struct.unpack_from("<I", data, 8)[0] == 64
    assert struct.unpack_from("<I", data, 12)[0] == 0  # empty map sent as 0 bytes
    assert struct.unpack_from("<Q", data, 16)[0] == 0x0102
    assert struct.unpack_from("<Q", data, 24)[0] == 0x0304


def test_kv_empty_forms():
    assert encode_kv({}) == b""
    assert decode_kv(b"") == {}
    assert decode_kv(b"\0\0\0\0") == {}


def test_kv_round_trip():
    kv = {"a": "1", "code": "ERR_PROTOCOL", "message": "x" * 1000}
    assert decode_kv(encode_kv(kv)) == kv


def kv_raw(*entries: tuple, count=None) -> bytes:
    out = struct.pack("<I", len(entries) if count is None else count)
    for k, v in entries:
        out += struct.pack("<I", len(k)) + k + struct.pack("<I", len(v)) + v
    return out


@pytest.mark.parametrize(
    "block,why",
    [
        (b"\1\0", "shorter than count"),
        (kv_raw((b"a", b"b"), count=2), "count too large"),
        (kv_raw((b"a", b"b")) + b"\0", "trailing byte"),
        (kv_raw((b"\xff", b"b")), "invalid utf-8 key"),
        (kv_raw((b"a", b"\xc3")), "invalid utf-8 value"),
        (kv_raw((b"a", b"1"), (b"a", b"2")), "duplicate key"),
        (struct.pack("<II", 1, 100) + b"abc", "key overruns"),
        (struct.pack("<II", 1, 1) + b"a" + struct.pack("<I", 2**32 - 1), "value overruns"),
        (struct.pack("<II", 1, 1) + b"a" + b"\0\0", "ends inside value length"),
        (struct.pack("<I", 2**32 - 1) + b"\0" * 8, "absurd count"),
    ],
)
def test_kv_malformed(block, why):
    with pytest.raises(ArrowShmError) as e:
        decode_kv(block)
    assert e.value.code == "ERR_PROTOCOL", why


def good() -> bytearray:
    return bytearray(encode_frame(Frame(kind=Kind.HELLO, metadata={"k": "v"})))


def patch(offset: int, fmt: str, value: int) -> bytes:
    b = good()
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    "data,why",
    [
        (b"", "empty"),
        (bytes(good()[:63]), "shorter than header"),
        (b"XSHM" + bytes(good()[4:]), "bad magic"),
        (patch(6, "<B", 0), "kind 0"),
        (patch(6, "<B", 12), "kind 12"),
        (patch(7, "<B", 0x08), "unknown flag"),
        (patch(7, "<B", 0x80), "unknown flag high"),
        (patch(8, "<I", 60), "header length 60"),
        (patch(8, "<I", 72), "header length 72"),
        (patch(12, "<I", 3), "metadata length short"),
        (patch(12, "<I", 1000), "metadata length long"),
        (bytes(good()) + b"\0", "trailing byte after metadata"),
        (bytes(good()[:-1]), "truncated metadata"),
        (b"ASHM" + b"\0" * (MAX_FRAME_BYTES + 1 - 4), "over 65536"),
    ],
)
def test_frame_malformed(data, why):
    with pytest.raises(ArrowShmError) as e:
        decode_frame(data)
    assert e.value.code == "ERR_PROTOCOL", why


def test_reserved_bytes_ignored_on_receive():
    b = good()
    b[52:64] = b"\xff" * 12
    assert decode_frame(bytes(b)).metadata == {"k": "v"}


def test_encode_rejects_bad_arguments():
    with pytest.raises(ArrowShmError) as e:
        encode_frame(Frame(kind=Kind.TABLE, message_id=-1))
    assert e.value.code == "ERR_INVALID_ARGUMENT"
    with pytest.raises(ArrowShmError) as e:
        encode_kv({"k": "x" * 70000})
    assert e.value.code == "ERR_INVALID_ARGUMENT"
