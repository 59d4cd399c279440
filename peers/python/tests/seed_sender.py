"""A minimal equivalent of the seed's C++ sender: SOCK_STREAM listener, unsealed 40960-byte memfd
holding one IPC stream written by pyarrow, sends b'F' + fd to one connection."""

import array
import os
import socket
import sys

import pyarrow as pa

path = sys.argv[1]
table = pa.table({"x": pa.array(range(10), pa.int32())})
sink = pa.BufferOutputStream()
with pa.ipc.new_stream(sink, table.schema) as w:
    w.write_table(table)
data = sink.getvalue().to_pybytes()
fd = os.memfd_create("arrow_ipc")
os.ftruncate(fd, 4096 * 10)
os.pwrite(fd, data, 0)
if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
conn.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
conn.close()
srv.close()
os.unlink(path)
sys.stdout.buffer.write(data)
