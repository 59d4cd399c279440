"""The seed proof of concept's Python receiver, reproduced (socket path taken as an argument).

Connects to a SOCK_STREAM socket, receives one byte and one fd, maps 4096 * 10 bytes read-only and
reads one record batch with pyarrow. Prints the batch as JSON.
"""

import json
import mmap
import socket
import struct
import sys

import pyarrow

path = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
msg, ancdata, flags, addr = sock.recvmsg(1, socket.CMSG_LEN(4))
fd = struct.unpack("i", ancdata[0][2][:4])[0]
mem = mmap.mmap(fd, 4096 * 10, access=mmap.ACCESS_READ)
reader = pyarrow.ipc.open_stream(memoryview(mem))
batch = reader.read_next_batch()
print(json.dumps({"byte": msg.decode(), "rows": batch.num_rows, "data": batch.to_pydict()}, default=str))
