"""pyarrow.flight's half of the Flight benchmark (bench/flight.ts, whose --peer is Node's half).

  server                    a Flight server on a free port (prints "ready PORT"): DoPut reads the
                            whole table (read_all) and keeps it for DoGet under its descriptor path
  client PORT NAME=FILE...  loads each IPC stream FILE as a table, prints "ready", then per stdin line
                            "put NAME COUNT PAUSE_MS" or "get NAME COUNT PAUSE_MS" does COUNT calls
                            (PAUSE_MS apart) and prints their times in ms as a JSON list. A put ends
                            when the server answered (writer.close), a get with the table read.
"""
import json
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight


class Server(flight.FlightServerBase):
    def __init__(self):
        super().__init__("grpc://127.0.0.1:0")
        self.tables = {}

    def do_put(self, context, descriptor, reader, writer):
        self.tables["/".join(p.decode() for p in descriptor.path)] = reader.read_all()

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()])


def client(port, files):
    tables = {name: pa.ipc.open_stream(pa.memory_map(path)).read_all() for name, path in files}
    conn = flight.connect(f"grpc://127.0.0.1:{port}")
    print("ready", flush=True)
    for line in sys.stdin:
        op, name, count, pause = line.split()
        table, samples = tables.get(name), []
        for _ in range(int(count)):
            time.sleep(float(pause) / 1000)
            t0 = time.perf_counter()
            if op == "put":
                writer, _ = conn.do_put(flight.FlightDescriptor.for_path(name), table.schema)
                writer.write_table(table)
                writer.close()
            else:
                conn.do_get(flight.Ticket(name.encode())).read_all()
            samples.append((time.perf_counter() - t0) * 1000)
        print(json.dumps(samples), flush=True)
    conn.close()


if sys.argv[1] == "server":
    server = Server()
    print("ready", server.port, flush=True)
    server.serve()
else:
    client(int(sys.argv[2]), [arg.split("=", 1) for arg in sys.argv[3:]])
