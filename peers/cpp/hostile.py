"""Hostile TABLE frames against a listening receiver: prints the ERROR code each one gets back.

Usage: python hostile.py ADDR CASE [STREAM]   (CASE: ok, unsealed, notmemfd, misaligned, outside, zero,
leased, nofd; INLINE tables of §5.3: inline-ok, inline-offset, inline-short, inline-fd, inline-leased,
inline-kind, inline-garbage). For an inline case the answer is CODE@CORRELATION_ID: @0 is a
connection-level (fatal) ERROR, @2 one about the TABLE.
"""
import os, socket, struct, sys

addr, case = sys.argv[1], sys.argv[2]
HDR = struct.Struct("<4sHBBIIQQQQI12s")


def kv(d):
    if not d:
        return b""
    out = struct.pack("<I", len(d))
    for k, v in d.items():
        out += struct.pack("<I", len(k)) + k.encode() + struct.pack("<I", len(v)) + v.encode()
    return out


def frame(kind, mid, meta=None, flags=0, off=0, length=0, fds=0):
    m = kv(meta)
    return HDR.pack(b"ASHM", 1, kind, flags, 64, len(m), mid, 0, off, length, fds, b"\0" * 12) + m


def parse(b):
    f = HDR.unpack_from(b)
    meta, pos = {}, 64
    if f[5]:
        (n,), pos = struct.unpack_from("<I", b, pos), pos + 4
        for _ in range(n):
            parts = []
            for _ in range(2):
                (l,) = struct.unpack_from("<I", b, pos)
                parts.append(b[pos + 4 : pos + 4 + l].decode())
                pos += 4 + l
            meta[parts[0]] = parts[1]
    return f[2], f[7], meta


s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
s.send(frame(1, 1, {"min_version": "1", "max_version": "1", "capabilities": "", "implementation": "hostile", "pid": str(os.getpid())}))
kind, _, _ = parse(s.recv(65536))
assert kind == 2, kind

import fcntl
F_ADD_SEALS, SEALS = 1033, 1 | 2 | 4 | 8
data = open(sys.argv[3], "rb").read() if len(sys.argv) > 3 else b"\xff" * 64

if case.startswith("inline"):
    # §5.3: header, metadata, zeros to 8, the stream to the end of the frame; then one thing wrong.
    meta = kv({"name": "hostile"})
    start = (64 + len(meta) + 7) & ~7
    ipc = b"\xff" * 64 if case == "inline-garbage" else data
    kind, flags, off, length, fds, fd_count = 3, 8, start, len(ipc), [], 0
    if case == "inline-offset":
        off = start + 8
    elif case == "inline-short":
        length -= 8
    elif case == "inline-fd":
        fd = os.memfd_create("h", os.MFD_ALLOW_SEALING)
        os.write(fd, ipc)
        fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
        fds, fd_count = [fd], 1
    elif case == "inline-leased":
        flags |= 1
    elif case == "inline-kind":
        kind = 4
    head = HDR.pack(b"ASHM", 1, kind, flags, 64, len(meta), 2, 0, off, length, fd_count, b"\0" * 12)
    msg = (head + meta).ljust(start, b"\0") + ipc
    s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i" * len(fds), *fds))] if fds else [])
    kind, correlation, meta = parse(s.recv(65536))
    print({4: "ACK"}.get(kind) or f"{meta.get('code')}@{correlation}")
    sys.exit(0)
fd = os.memfd_create("h", os.MFD_ALLOW_SEALING)
os.write(fd, data)
off, length, flags, fds = 0, len(data), 0, [fd]
if case != "unsealed":
    fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
if case == "notmemfd":
    fds = [os.open("/dev/null", os.O_RDONLY)]
elif case == "misaligned":
    off, length = 4, 8
elif case == "outside":
    off, length = 8, (1 << 64) - 4
elif case == "zero":
    length = 0
elif case == "leased":
    flags = 1
elif case == "nofd":
    fds = []
msg = frame(3, 2, flags=flags, off=off, length=length, fds=1)
s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i" * len(fds), *fds))] if fds else [])
kind, _, meta = parse(s.recv(65536))
print({4: "ACK", 6: meta.get("code")}.get(kind, kind))
