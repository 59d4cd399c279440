"""pyarrow.flight's half of bench/flight-stream.ts: streams of 64 KiB batches, incremental do_get/do_put.

  server COUNT ROWS     a Flight server: do_get (any ticket) yields COUNT batches of ROWS int64 rows
                        as a generator (one FlightData each); do_put reads chunk by chunk. Prints
                        "ready PORT"; runs until killed
  get PORT TICKET       do_get, reads chunk by chunk; prints {"batches": n, "ms": call to end}
  put PORT COUNT ROWS   incremental do_put of COUNT batches; prints {"batches": n, "ms": call to confirmed end}
"""
import json
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight


def batch(rows):
    return pa.record_batch([pa.array(range(rows), pa.int64())], names=["k"])


class Server(flight.FlightServerBase):
    def __init__(self, count, rows):
        super().__init__("grpc://127.0.0.1:0")
        self.count, self.batch = count, batch(rows)

    def do_get(self, context, ticket):
        b = self.batch
        return flight.GeneratorStream(b.schema, (b for _ in range(self.count)))

    def do_put(self, context, descriptor, reader, writer):
        while True:
            try:
                reader.read_chunk()
            except StopIteration:
                return


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "server":
        server = Server(int(args[0]), int(args[1]))
        print(f"ready {server.port}", flush=True)
        server.serve()
    elif mode == "get":
        client = flight.FlightClient(f"grpc://127.0.0.1:{args[0]}")
        t0 = time.perf_counter()
        reader = client.do_get(flight.Ticket(args[1].encode()))
        n = 0
        while True:
            try:
                reader.read_chunk()
            except StopIteration:
                break
            n += 1
        print(json.dumps({"batches": n, "ms": (time.perf_counter() - t0) * 1000}), flush=True)
    elif mode == "put":
        client = flight.FlightClient(f"grpc://127.0.0.1:{args[0]}")
        b = batch(int(args[2]))
        t0 = time.perf_counter()
        writer, _ = client.do_put(flight.FlightDescriptor.for_path("stream"), b.schema)
        for _ in range(int(args[1])):
            writer.write_batch(b)
        writer.done_writing()
        writer.close()
        print(json.dumps({"batches": int(args[1]), "ms": (time.perf_counter() - t0) * 1000}), flush=True)


if __name__ == "__main__":
    main()
