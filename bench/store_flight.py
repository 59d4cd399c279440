"""pyarrow.flight as a table store, the alternative bench/store.ts compares the arrow-shm store with.

  python store_flight.py TABLE PUTS GETS   TABLE is an Arrow IPC stream file, or floats:N (a float64
                                           column of N values, made here). Starts a server process
                                           that keeps what is put under its path; times PUTS DoPuts
                                           (each ends when the server has the whole table) and GETS
                                           DoGets (each ends with the table read whole, read_all), each
                                           after one warm-up; prints {"put": [ms...], "get": [ms...]}.
"""
import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight


class Server(flight.FlightServerBase):
    def __init__(self, location):
        super().__init__(location)
        self.tables = {}

    def do_put(self, context, descriptor, reader, writer):
        self.tables[descriptor.path[0].decode()] = reader.read_all()

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()])


def load(spec):
    if spec.startswith("floats:"):
        return pa.table({"x": np.arange(int(spec[7:]), dtype=np.float64)})
    return pa.ipc.open_stream(pa.memory_map(spec)).read_all()


if sys.argv[1] == "server":
    server = Server("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()
else:
    table, puts, gets = load(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    child = subprocess.Popen([sys.executable, __file__, "server"], stdout=subprocess.PIPE)
    try:
        client = flight.connect(f"grpc://127.0.0.1:{int(child.stdout.readline())}")
        put, get = [], []
        for i in range(puts + 1):
            t0 = time.perf_counter()
            writer, _ = client.do_put(flight.FlightDescriptor.for_path("bench"), table.schema)
            writer.write_table(table)
            writer.close()
            if i > 0:
                put.append((time.perf_counter() - t0) * 1000)
        for i in range(gets + 1):
            t0 = time.perf_counter()
            got = client.do_get(flight.Ticket(b"bench")).read_all()
            if i > 0:
                get.append((time.perf_counter() - t0) * 1000)
            assert got.num_rows == table.num_rows
            del got
        client.close()
        print(json.dumps({"put": put, "get": get}))
    finally:
        child.kill()
        child.wait()
