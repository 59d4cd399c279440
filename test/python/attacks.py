#!/usr/bin/env python3
"""The scripted attacker every peer's tests use (interface: /work/notes/attacks-interface.md).

  attacks.py write KIND --out FILE            hostile IPC bytes to a file
  attacks.py attack KIND --socket PATH ...    attack a live receiver (raw frames by hand)
  attacks.py listen lease-hoard --socket PATH a hostile receiver for the sender side
  attacks.py seed-truncate --socket PATH      a seed-compat sender that truncates its memfd

Hostile flatbuffers are built by hand with the small back-to-front builder below (the real
flatbuffers layout: children before parents, so one string or table can be shared by any number
of offsets). Everything else the receiver sees is valid, so only the limit under test trips.
Prints JSON lines; exits 0 when the attack ran (whatever the receiver did), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

# ---------------------------------------------------------------------------------------------
# A tiny flatbuffer builder. Refs are distances from the END of the buffer (like the official
# builder), so an offset field at ref F pointing at an object at ref T stores F - T (> 0).

Field = Tuple[int, str, object]  # (slot, kind, value); kind: u8 bool i16 i32 i64 off
_FMT = {"u8": "<B", "bool": "<B", "i16": "<h", "i32": "<i", "i64": "<q", "off": "<I"}


class Builder:
    def __init__(self) -> None:
        self.parts: List[Union[bytes, int]] = []  # reversed; an int is a run of zero bytes (a hole)
        self.size = 0
        self._vtables: Dict[tuple, int] = {}

    def _push(self, part: Union[bytes, int]) -> None:
        n = part if isinstance(part, int) else len(part)
        if n:
            self.parts.append(part)
            self.size += n

    def _prep(self, align: int, extra: int) -> None:
        """Pad so that the next ``extra`` bytes end (i.e. their start lies) on ``align``."""
        pad = (-(self.size + extra)) % align
        if pad:
            self._push(b"\0" * pad)

    def string(self, data: bytes) -> int:
        self._prep(4, len(data) + 1)
        self._push(data + b"\0")
        self._push(struct.pack("<I", len(data)))
        return self.size

    def struct_vector(self, count: int, elem_size: int, data: Optional[bytes] = None, declared: Optional[int] = None) -> int:
        """A vector of ``count`` 8-aligned structs; ``data=None`` means all zero (written as a hole).
        ``declared``: the count written, if it should lie."""
        n = count * elem_size
        self._prep(8, n)
        self._push(n if data is None else data)
        self._push(struct.pack("<I", count if declared is None else declared))
        return self.size

    def offset_vector(self, targets: Sequence[int]) -> int:
        n = len(targets)
        self._prep(4, 4 * n)
        base = self.size
        self._push(array.array("I", (base + 4 * (n - i) - t for i, t in enumerate(targets))).tobytes())
        self._push(struct.pack("<I", n))
        return self.size

    def table(self, fields: Sequence[Field]) -> int:
        # Lay out: soffset, then fields largest first (each aligned within an 8-aligned table).
        layout: List[Tuple[int, str, object, int]] = []
        pos = 4
        for slot, kind, value in sorted(fields, key=lambda f: -struct.calcsize(_FMT[f[1]])):
            size = struct.calcsize(_FMT[kind])
            pos += (-pos) % size
            layout.append((slot, kind, value, pos))
            pos += size
        tsize = pos + (-pos) % 4
        nslots = max((f[0] for f in fields), default=-1) + 1
        offsets = [0] * nslots
        for slot, _, _, at in layout:
            offsets[slot] = at
        vtable = struct.pack(f"<HH{nslots}H", 4 + 2 * nslots, tsize, *offsets)
        self._prep(8, tsize)
        table_ref = self.size + tsize
        shared = self._vtables.get((vtable,))
        vt_ref = shared if shared is not None else table_ref + len(vtable)
        body = bytearray(tsize)
        struct.pack_into("<i", body, 0, vt_ref - table_ref)
        for slot, kind, value, at in layout:
            v = (table_ref - at) - value if kind == "off" else value  # type: ignore[operator]
            struct.pack_into(_FMT[kind], body, at, v)
        self._push(bytes(body))
        if shared is None:
            self._push(vtable)
            self._vtables[(vtable,)] = self.size
        return table_ref

    def finish(self, root: int) -> List[Union[bytes, int]]:
        """The finished buffer (a multiple of 8 bytes) as forward parts (ints are zero runs)."""
        self._prep(8, 4)
        self._push(struct.pack("<I", self.size + 4 - root))
        return list(reversed(self.parts))


Parts = List[Union[bytes, int]]


def _parts_bytes(parts: Parts) -> bytes:
    return b"".join(b"\0" * p if isinstance(p, int) else p for p in parts)


def _parts_len(parts: Parts) -> int:
    return sum(p if isinstance(p, int) else len(p) for p in parts)


# ---------------------------------------------------------------------------------------------
# Arrow IPC messages (Message.fbs / Schema.fbs), metadata version V5.

V5 = 4
HEADER_SCHEMA, HEADER_RECORD_BATCH = 1, 3
TYPE_INT = 2
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _int32_field(b: Builder, name: bytes) -> int:
    """A nullable int32 Field table named ``name``."""
    children = b.offset_vector([])
    int_type = b.table([(0, "i32", 32), (1, "bool", 1)])
    name_ref = b.string(name)
    return b.table([(0, "off", name_ref), (1, "bool", 1), (2, "u8", TYPE_INT), (3, "off", int_type), (5, "off", children)])


def _message(b: Builder, header_type: int, header: int, body_length: int, custom_metadata: Optional[int] = None) -> Parts:
    fields: List[Field] = [(0, "i16", V5), (1, "u8", header_type), (2, "off", header), (3, "i64", body_length)]
    if custom_metadata is not None:
        fields.append((4, "off", custom_metadata))
    return b.finish(b.table(fields))


def _encapsulate(meta: Parts, body: bytes = b"") -> Parts:
    """Continuation, metadata_size, the flatbuffer (already a multiple of 8), the body."""
    return [struct.pack("<Ii", 0xFFFFFFFF, _parts_len(meta)), *meta, body]


def _schema_message(field_refs_of, custom_metadata_of=None) -> Parts:
    """A Schema message; ``field_refs_of(b)`` builds the fields and returns their refs."""
    b = Builder()
    md = custom_metadata_of(b) if custom_metadata_of else None
    fields = b.offset_vector(field_refs_of(b))
    schema = b.table([(1, "off", fields)])
    return _encapsulate(_message(b, HEADER_SCHEMA, schema, 0, md))


def _one_int32_schema(custom_metadata_of=None) -> Parts:
    return _schema_message(lambda b: [_int32_field(b, b"x")], custom_metadata_of)


def _record_batch(length: int, nodes: int, buffers: int, body: bytes, node_data: Optional[bytes] = None,
                  buffer_data: Optional[bytes] = None) -> Parts:
    b = Builder()
    bufs = b.struct_vector(buffers, 16, buffer_data)
    nds = b.struct_vector(nodes, 16, node_data)
    rb = b.table([(0, "i64", length), (1, "off", nds), (2, "off", bufs)])
    return _encapsulate(_message(b, HEADER_RECORD_BATCH, rb, len(body)), body)


def _int32_batch() -> Parts:
    """One row, value 42: nodes [(1, 0)], buffers [validity (0, 0), data (0, 4)], an 8-byte body."""
    return _record_batch(1, 1, 2, struct.pack("<iI", 42, 0), struct.pack("<qq", 1, 0), struct.pack("<qqqq", 0, 0, 0, 4))


def metadata_bomb(entries: int = 100_000, value_bytes: int = 1 << 20) -> bytes:
    """Schema Message whose custom_metadata has ``entries`` KeyValues sharing ONE value string."""

    def metadata(b: Builder) -> int:
        value = b.string(b"v" * value_bytes)
        kvs = [b.table([(0, "off", b.string(b"k%06d" % i)), (1, "off", value)]) for i in range(entries)]
        return b.offset_vector(kvs)

    return _parts_bytes(_one_int32_schema(metadata) + _int32_batch() + [EOS])


def schema_bomb(fields: int = 100_000, name_bytes: int = 1 << 20) -> bytes:
    """Schema with ``fields`` entries all pointing at ONE int32 Field table with a huge name, then
    an empty RecordBatch whose node/buffer counts match (so only the limits are wrong)."""
    schema = _schema_message(lambda b: [_int32_field(b, b"n" * name_bytes)] * fields)
    return _parts_bytes(schema + _record_batch(0, fields, 2 * fields, b"") + [EOS])


NODE_COUNT_BOMB_NODES = 10_000_000


def _node_count_bomb_parts(nodes: int = NODE_COUNT_BOMB_NODES) -> Parts:
    # The node and buffer vectors are all zeros (length 0, offset 0): holes in a sparse file.
    return _one_int32_schema() + _record_batch(0, nodes, 2 * nodes, b"") + [EOS]


def write_node_count_bomb(target: Union[int, str], nodes: int = NODE_COUNT_BOMB_NODES) -> int:
    """Write the node-count bomb sparse (ftruncate + small writes) to an fd or path; returns its size."""
    parts = _node_count_bomb_parts(nodes)
    fd = target if isinstance(target, int) else os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = _parts_len(parts)
        os.ftruncate(fd, size)
        pos = 0
        for p in parts:
            if isinstance(p, int):
                pos += p
            else:
                os.pwrite(fd, p, pos)
                pos += len(p)
        return size
    finally:
        if not isinstance(target, int):
            os.close(fd)


def counts_mismatch() -> bytes:
    """One int32 column, then a (small) RecordBatch with 2 nodes and 5 buffers."""
    body = struct.pack("<iI", 42, 0)
    nodes = struct.pack("<qqqq", 1, 0, 1, 0)
    buffers = struct.pack("<10q", 0, 0, 0, 4, 0, 0, 0, 0, 0, 0)
    return _parts_bytes(_one_int32_schema() + _record_batch(1, 2, 5, body, nodes, buffers) + [EOS])


def fields_many(fields: int = 70_000) -> bytes:
    """An honest schema of ``fields`` distinct tiny int32 fields (over max_fields=65,536), then an
    empty RecordBatch with matching counts."""
    schema = _schema_message(lambda b: [_int32_field(b, b"f%d" % i) for i in range(fields)])
    return _parts_bytes(schema + _record_batch(0, fields, 2 * fields, b"") + [EOS])


TYPE_STRUCT = 13


def _field_dag_schema(depth: int, width: int, roots: int = 1, name_bytes: int = 1) -> Tuple[Parts, int, int]:
    """A Schema of ``roots`` references to a chain of ``depth`` distinct struct Field tables, each
    with ``width`` references to the next (an int32 at the bottom): ``roots * (width**depth - 1) /
    (width - 1)`` fields from ``depth`` tables. Returns it and the batch's (nodes, buffers)."""
    nodes = leaves = 1
    b = Builder()
    name, children = b.string(b"n" * name_bytes), b.offset_vector([])
    int_type = b.table([(0, "i32", 32), (1, "bool", 1)])
    node = b.table([(0, "off", name), (1, "bool", 1), (2, "u8", TYPE_INT), (3, "off", int_type), (5, "off", children)])
    struct_type = b.table([])
    for _ in range(depth - 1):
        kids = b.offset_vector([node] * width)
        node = b.table([(0, "off", name), (1, "bool", 1), (2, "u8", TYPE_STRUCT), (3, "off", struct_type), (5, "off", kids)])
        nodes, leaves = nodes * width + 1, leaves * width
    fields = b.offset_vector([node] * roots)
    schema = b.table([(1, "off", fields)])
    nodes, leaves = nodes * roots, leaves * roots
    return _encapsulate(_message(b, HEADER_SCHEMA, schema, 0)), nodes, nodes + leaves  # struct 1, int32 2


def field_dag(depth: int = 40, width: int = 2) -> bytes:
    """A ~2 KB schema of 2**40 fields by reference (a DAG of shared Field tables), then an empty
    RecordBatch; with a small depth its counts match (so only the limits can be wrong)."""
    schema, nodes, buffers = _field_dag_schema(depth, width)
    batch = _record_batch(0, nodes, buffers, b"") if nodes <= 1 << 20 else _record_batch(0, 0, 0, b"")
    return _parts_bytes(schema + batch + [EOS])


def unknown_type(type_id: int = 27) -> bytes:
    """One field of a Schema.fbs type id no peer knows yet (an empty type table), one empty batch."""

    def fields(b: Builder) -> List[int]:
        children, type_table, name = b.offset_vector([]), b.table([]), b.string(b"u")
        return [b.table([(0, "off", name), (1, "bool", 1), (2, "u8", type_id), (3, "off", type_table), (5, "off", children)])]

    return _parts_bytes(_schema_message(fields) + _record_batch(0, 1, 2, b"") + [EOS])


def small_table() -> bytes:
    """A valid one-int32-column stream (the honest payload of the floods)."""
    return _parts_bytes(_one_int32_schema() + _int32_batch() + [EOS])


WRITERS = {
    "metadata-bomb": metadata_bomb,
    "schema-bomb": schema_bomb,
    "counts-mismatch": counts_mismatch,
    "fields-many": fields_many,
    "unknown-type": unknown_type,
    "field-dag": field_dag,
}

# ---------------------------------------------------------------------------------------------
# Frames (PROTOCOL.md §3), by hand so that malformed ones can be sent too.

_HEADER = struct.Struct("<4sHBBIIQQQQI12s")
KINDS = {1: "HELLO", 2: "WELCOME", 3: "TABLE", 4: "ACK", 5: "RELEASE", 6: "ERROR", 7: "GOODBYE",
         8: "STREAM_OPEN", 9: "STREAM_SEGMENT", 10: "SUBSCRIBE"}
K = {v: k for k, v in KINDS.items()}
LEASED, REQUEST, RESPONSE = 0x01, 0x02, 0x04
SEALS = 0x1 | 0x2 | 0x4 | 0x8  # SEAL | SHRINK | GROW | WRITE
F_ADD_SEALS = 1033


def encode_kv(kv: Optional[Dict[str, str]]) -> bytes:
    if not kv:
        return b""
    out = [struct.pack("<I", len(kv))]
    for k, v in kv.items():
        for s in (k.encode(), v.encode()):
            out += [struct.pack("<I", len(s)), s]
    return b"".join(out)


def decode_kv(data: bytes) -> Dict[str, str]:
    """Lenient: whatever parses."""
    out: Dict[str, str] = {}
    try:
        (count,) = struct.unpack_from("<I", data, 0)
        pos = 4
        for _ in range(count):
            strings = []
            for _ in range(2):
                (n,) = struct.unpack_from("<I", data, pos)
                strings.append(data[pos + 4 : pos + 4 + n].decode("utf-8", "replace"))
                pos += 4 + n
            out[strings[0]] = strings[1]
    except struct.error:
        pass
    return out


def encode_frame(kind: int, *, version: int = 1, flags: int = 0, message_id: int = 0, correlation_id: int = 0,
                 ipc_length: int = 0, fd_count: int = 0, kv: Optional[Dict[str, str]] = None,
                 magic: bytes = b"ASHM") -> bytes:
    meta = encode_kv(kv)
    return _HEADER.pack(magic, version, kind, flags, 64, len(meta), message_id, correlation_id, 0, ipc_length,
                        fd_count, b"\0" * 12) + meta


def sealed_memfd(data: bytes = b"", size: Optional[int] = None) -> int:
    fd = os.memfd_create("attacks", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, max(len(data), size or 0))
    if data:
        os.pwrite(fd, data, 0)
    fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
    return fd


def _emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def _connect(path: str, timeout: float) -> socket.socket:
    """Connect, retrying while the listener's backlog is full (EAGAIN) until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect(path)
            sock.setblocking(True)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise TimeoutError("listener backlog full") from None
            time.sleep(0.01)
        except OSError:
            sock.close()
            raise


class RawPeer:
    """A connector speaking raw frames. ``hello`` overrides HELLO keys; ``handshake=False`` skips it."""

    def __init__(self, path: str, *, hello: Optional[Dict[str, str]] = None, handshake: bool = True,
                 timeout: float = 5.0) -> None:
        self.sock = _connect(path, timeout)
        self.next_id = 1
        self.welcome: Optional[dict] = None
        if handshake:
            self.send_hello(hello)
            reply = self.read_frame(timeout)
            if reply is None or reply["kind"] != "WELCOME":
                self.close()
                raise ConnectionError(f"handshake refused: {reply}")
            self.welcome = reply

    def send_hello(self, overrides: Optional[Dict[str, str]] = None) -> None:
        kv = {"min_version": "1", "max_version": "1", "capabilities": "", "implementation": "attacks.py",
              "pid": str(os.getpid())}
        kv.update(overrides or {})
        self.send_raw(encode_frame(K["HELLO"], kv=kv, message_id=self._id()))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def send_raw(self, data: bytes, fds: Sequence[int] = (), flags: int = 0) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc, flags | socket.MSG_NOSIGNAL)

    def send_frame(self, kind: int, **fields: object) -> int:
        mid = self._id()
        self.send_raw(encode_frame(kind, message_id=mid, **fields))  # type: ignore[arg-type]
        return mid

    def send_table(self, fd: int, ipc_length: int, flags: int = 0, send_flags: int = 0) -> int:
        """Send a TABLE carrying ``fd`` (kept open: the caller's). Returns its message_id."""
        mid = self.next_id
        self.send_raw(encode_frame(K["TABLE"], flags=flags, message_id=mid, ipc_length=ipc_length, fd_count=1),
                      [fd], send_flags)
        self.next_id += 1
        return mid

    def read_frame(self, timeout: Optional[float] = None) -> Optional[dict]:
        """The next frame as a dict (kind name, header fields, metadata), None on timeout; raises
        EOFError when the peer closed. Fds that come along are closed."""
        if not select.select([self.sock], [], [], timeout)[0]:
            return None
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
        except ConnectionResetError:
            data, anc = b"", []
        for level, ctype, cdata in anc:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                for fd in array.array("i", cdata[: len(cdata) - len(cdata) % 4]):
                    os.close(fd)
        if not data:
            raise EOFError("closed by peer")
        if len(data) < 64:
            return {"kind": "SHORT", "bytes": len(data)}
        magic, version, kind, flags, _, _, mid, corr, _, ipc_length, fd_count, _ = _HEADER.unpack_from(data)
        return {"kind": KINDS.get(kind, str(kind)), "version": version, "flags": flags, "message_id": mid,
                "correlation_id": corr, "ipc_length": ipc_length, "fd_count": fd_count,
                "metadata": decode_kv(data[64:])}

    def close(self) -> None:
        self.sock.close()


def _reply_event(frame: dict) -> dict:
    ev = {"event": "reply", "kind": frame["kind"], "correlation_id": frame.get("correlation_id")}
    if frame["kind"] == "ERROR":
        ev["code"] = frame["metadata"].get("code")
        ev["message"] = frame["metadata"].get("message", "")[:300]
    return ev


def _await_replies(peer: RawPeer, seconds: float, until_id: Optional[int] = None) -> dict:
    """Print every frame until the answer to ``until_id`` (or any ERROR if None), a close or the deadline."""
    deadline = time.monotonic() + seconds
    last: dict = {"event": "timeout"}
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _emit(event="timeout")
            return last
        try:
            frame = peer.read_frame(remaining)
        except (EOFError, OSError):
            _emit(event="closed-by-peer")
            return {"event": "closed-by-peer", **({} if last.get("event") == "timeout" else {"last": last})}
        if frame is None:
            continue
        last = _reply_event(frame)
        _emit(**last)
        if frame["kind"] in ("ACK", "ERROR") and (until_id is None or frame["correlation_id"] in (until_id, 0)):
            return last


# ---------------------------------------------------------------------------------------------
# Attacks on a live receiver.


def _table_fd(kind: str) -> Tuple[int, int]:
    if kind == "node-count-bomb":
        fd = os.memfd_create("attacks", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        size = write_node_count_bomb(fd)
        fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
        return fd, size
    data = WRITERS[kind]()
    return sealed_memfd(data), len(data)


def attack_table(path: str, kind: str, seconds: float) -> dict:
    fd, size = _table_fd(kind)
    try:
        peer = RawPeer(path)
    except Exception:
        os.close(fd)
        raise
    try:
        _emit(event="connected", count=1)
        mid = peer.send_table(fd, size)
        os.close(fd)
        fd = -1
        _emit(event="sent", count=1, bytes=size)
        result = _await_replies(peer, seconds, mid)
        return {"result": result}
    finally:
        if fd >= 0:
            os.close(fd)
        peer.close()


def attack_flood(path: str, count: int, seconds: float, flags: int) -> dict:
    data = small_table()
    fd = sealed_memfd(data, 4096)
    deadline = time.monotonic() + seconds
    sent = 0
    closed = False
    peer = RawPeer(path)
    try:
        peer.sock.setblocking(False)
        _emit(event="connected", count=1)
        next_report = time.monotonic() + 1
        while sent < count and time.monotonic() < deadline:
            try:
                peer.send_table(fd, len(data), flags, socket.MSG_DONTWAIT)
                sent += 1
            except BlockingIOError:
                select.select([], [peer.sock], [], max(0.0, min(0.2, deadline - time.monotonic())))
            except OSError:  # EPIPE / ECONNRESET: the receiver hung up
                closed = True
                _emit(event="closed-by-peer")
                break
            if time.monotonic() >= next_report:
                _emit(event="sent", count=sent)
                next_report += 1
        _emit(event="sent", count=sent)
        return {"sent": sent, "closed_by_peer": closed}
    finally:
        os.close(fd)
        peer.close()


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))


def attack_idle(path: str, count: int, seconds: float) -> dict:
    """Open ``count`` connections (each sends HELLO; WELCOMEs are collected as they come, the
    handshakes get at most max(5, seconds) in all), then idle ``seconds`` watching for closes."""
    _raise_nofile(count + 64)
    pending: List[RawPeer] = []
    peers: List[RawPeer] = []
    refused: Dict[str, int] = {}
    codes: Dict[str, int] = {}
    closed = 0

    def count_in(d: Dict[str, int], key: str) -> None:
        d[key] = d.get(key, 0) + 1

    def collect(wait: float) -> None:
        ready = select.select([p.sock for p in pending], [], [], wait)[0] if pending else []
        for p in [p for p in pending if p.sock in ready]:
            pending.remove(p)
            try:
                frame = p.read_frame(0)
            except (EOFError, OSError):
                frame = None
            if frame is not None and frame["kind"] == "WELCOME":
                peers.append(p)
                if len(peers) % 100 == 0:
                    _emit(event="connected", count=len(peers))
                continue
            count_in(refused, frame["metadata"].get("code", "?") if frame else "closed")
            p.close()

    handshake_deadline = time.monotonic() + max(5.0, seconds)
    try:
        for _ in range(count):
            remaining = handshake_deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                p = RawPeer(path, handshake=False, timeout=remaining)
                p.send_hello()
                pending.append(p)
            except OSError as e:
                if not (peers or pending or refused):
                    raise  # not even one connection: the attack cannot run
                count_in(refused, type(e).__name__)
            collect(0)
        while pending and time.monotonic() < handshake_deadline:
            collect(handshake_deadline - time.monotonic())
        for p in pending:
            count_in(refused, "no-answer")
            p.close()
        pending.clear()
        _emit(event="connected", count=len(peers), refused=refused)
        deadline = time.monotonic() + seconds
        live = list(peers)
        while live and time.monotonic() < deadline:
            ready = select.select([p.sock for p in live], [], [], max(0.0, deadline - time.monotonic()))[0]
            for p in [p for p in live if p.sock in ready]:
                try:
                    frame = p.read_frame(0)
                    if frame and frame["kind"] == "ERROR":
                        count_in(codes, frame["metadata"].get("code", "?"))
                except (EOFError, OSError):
                    closed += 1
                    live.remove(p)
                    _emit(event="closed-by-peer", count=closed)
        return {"connected": len(peers), "refused": refused, "closed_by_peer": closed, "errors": codes,
                "still_open": len(live)}
    finally:
        for p in peers + pending:
            p.close()


def attack_bad(path: str, what: str, seconds: float, value: Optional[str]) -> dict:
    if what == "hello-version":
        peer = RawPeer(path, handshake=False)
        peer.send_hello({"min_version": value if value is not None else "0x1"})
    else:
        peer = RawPeer(path)
        if what == "bad-frame":
            peer.send_raw(encode_frame(K["ACK"], message_id=peer._id(), magic=b"XSHM"))
        else:  # bad-ack-version
            peer.send_frame(K["ACK"], version=2, correlation_id=1)
    try:
        return {"result": _await_replies(peer, seconds)}
    finally:
        peer.close()


# ---------------------------------------------------------------------------------------------
# Hostile peers for the sender side.


def _listening_socket(path: str, kind: int, backlog: int) -> socket.socket:
    """Listens at ``path`` (replacing whatever file is there) and says so on stdout."""
    lsock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    if os.path.exists(path):
        os.unlink(path)
    lsock.bind(path)
    lsock.listen(backlog)
    _emit(event="listening", socket=path)
    return lsock


def listen_lease_hoard(path: str, seconds: float) -> dict:
    """Accept connections, WELCOME with `lease`, ACK every TABLE, never RELEASE."""
    lsock = _listening_socket(path, socket.SOCK_SEQPACKET, 16)
    conns: List[RawPeer] = []
    tables = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            socks = [lsock] + [c.sock for c in conns]
            ready = select.select(socks, [], [], max(0.0, deadline - time.monotonic()))[0]
            if lsock in ready:
                s, _ = lsock.accept()
                c = RawPeer.__new__(RawPeer)
                c.sock, c.next_id, c.welcome = s, 1, None
                conns.append(c)
            for c in [c for c in conns if c.sock in ready]:
                try:
                    frame = c.read_frame(0)
                except (EOFError, OSError):
                    conns.remove(c)
                    c.close()
                    continue
                if frame is None:
                    continue
                if frame["kind"] == "HELLO":
                    c.send_raw(encode_frame(K["WELCOME"], message_id=c._id(), kv={
                        "version": "1", "capabilities": "lease", "implementation": "attacks.py lease-hoard",
                        "pid": str(os.getpid()), "max_message_bytes": str(16 * 1024**3)}))
                elif frame["kind"] == "TABLE":
                    tables += 1
                    c.send_frame(K["ACK"], correlation_id=frame["message_id"])
                    _emit(event="table", count=tables, leased=bool(frame["flags"] & LEASED))
                elif frame["kind"] == "GOODBYE":
                    conns.remove(c)
                    c.close()
        return {"tables": tables}
    finally:
        for c in conns:
            c.close()
        lsock.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def seed_truncate(path: str, seconds: float) -> dict:
    """Seed-compat sender (§10) whose unsealed memfd is truncated right after the fd is sent."""
    data = small_table()
    fd = os.memfd_create("seed", os.MFD_CLOEXEC)
    os.ftruncate(fd, 40960)
    os.pwrite(fd, data, 0)
    lsock = _listening_socket(path, socket.SOCK_STREAM, 1)
    try:
        if not select.select([lsock], [], [], seconds)[0]:
            return {"result": "no receiver"}
        conn, _ = lsock.accept()
        with conn:
            conn.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            os.ftruncate(fd, 0)
            _emit(event="truncated", bytes=len(data))
        return {"result": "sent"}
    finally:
        os.close(fd)
        lsock.close()
        try:
            os.unlink(path)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------

TABLE_ATTACKS = ("metadata-bomb", "schema-bomb", "node-count-bomb", "counts-mismatch")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="attacks.py")
    ap.add_argument("mode", choices=("write", "attack", "listen", "seed-truncate"))
    ap.add_argument("kind", nargs="?")
    ap.add_argument("--out")
    ap.add_argument("--socket")
    ap.add_argument("--count", type=int)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--value")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0

    def bad(msg: str) -> int:
        print(f"attacks.py: {msg}", file=sys.stderr)
        return 2

    if args.mode == "write":
        if not args.out or args.kind not in (*WRITERS, "node-count-bomb"):
            return bad(f"write KIND --out FILE; KIND one of {', '.join((*WRITERS, 'node-count-bomb'))}")
        if args.kind == "node-count-bomb":
            size = write_node_count_bomb(args.out)
        else:
            data = WRITERS[args.kind]()
            with open(args.out, "wb") as f:
                f.write(data)
            size = len(data)
        _emit(kind=args.kind, bytes=size)
        return 0
    if not args.socket:
        return bad("--socket PATH is required")
    try:
        if args.mode == "seed-truncate":
            result = seed_truncate(args.socket, args.seconds)
        elif args.mode == "listen":
            if args.kind != "lease-hoard":
                return bad("listen lease-hoard --socket PATH")
            result = listen_lease_hoard(args.socket, args.seconds)
        elif args.kind in TABLE_ATTACKS:
            result = attack_table(args.socket, args.kind, args.seconds)
        elif args.kind in ("inbox-flood", "request-flood"):
            flags = REQUEST if args.kind == "request-flood" else 0
            result = attack_flood(args.socket, args.count or 100_000, args.seconds, flags)
        elif args.kind == "idle-connections":
            result = attack_idle(args.socket, args.count or 1003, args.seconds)
        elif args.kind in ("bad-frame", "bad-ack-version", "hello-version"):
            result = attack_bad(args.socket, args.kind, args.seconds, args.value)
        else:
            return bad(f"unknown attack {args.kind!r}")
    except OSError as e:  # could not connect / listen: the attack did not run
        _emit(event="done", error=f"{type(e).__name__}: {e}")
        return 1
    _emit(event="done", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
