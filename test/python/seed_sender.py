"""Equivalent of the seed proof of concept's sender.cpp: an unsealed memfd (MFD_CLOEXEC only) of
4096 * 10 bytes holding one IPC stream of 100 random int32 values named "rand", written in place;
listen on SOCK_STREAM, accept one connection, send b"F" with the fd."""
import mmap
import os
import random
import socket
import sys

import pyarrow as pa

SOCKET_PATH = sys.argv[1]
MEM_SIZE = 4096 * 10

fd = os.memfd_create("arrow_zero_copy", os.MFD_CLOEXEC)
os.ftruncate(fd, MEM_SIZE)
mem = mmap.mmap(fd, MEM_SIZE)
rng = random.Random(0)
batch = pa.record_batch([pa.array([rng.randint(0, 100) for _ in range(100)], pa.int32())], names=["rand"])
sink = pa.FixedSizeBufferWriter(pa.py_buffer(mem))
with pa.ipc.new_stream(sink, batch.schema) as writer:
    writer.write_batch(batch)
sink.close()
del sink, writer
print(",".join(str(v) for v in batch.column(0).to_pylist()), flush=True)

if os.path.exists(SOCKET_PATH):
    os.unlink(SOCKET_PATH)
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
    server.bind(SOCKET_PATH)
    server.listen(1)
    print("arrow-shm: listening on " + SOCKET_PATH, file=sys.stderr, flush=True)
    conn, _ = server.accept()
    with conn:
        conn.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, "little"))])
os.close(fd)
os.unlink(SOCKET_PATH)
