"""pyarrow.flight on the other end of a stream over Flight (test/flight-stream.test.ts, PROTOCOL §13.5).

Lines on stdout are the test's evidence; they are flushed as they happen, so the test sees batch k
arrive before it publishes batch k+1. Token: $ARROW_SHM_FLIGHT_TOKEN; TLS: $ARROW_SHM_FLIGHT_CA (a
PEM file) for a grpc+tls:// address.

  get ADDRESS TICKET       do_get; prints "schema <fields> <app_metadata of the schema message>",
                           then per chunk as it arrives "batch <k> <rows> <first value of k>",
                           then "end <batches>" (or "error <class>: <message>", exit 1)
  stall ADDRESS TICKET     do_get; reads the schema and one batch, prints "stalled", then reads
                           nothing more until killed (a subscriber that makes no room)
  put ADDRESS NAME COUNT ROWS
                           incremental do_put of COUNT batches of ROWS rows (k: int64 = the batch
                           number, v: float64); after each prints "sent <k>" and waits for a line
                           on stdin before the next; then "done" once the server confirmed the end
"""
import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight


def say(line):
    print(line, flush=True)


def connect(address):
    ca = os.environ.get("ARROW_SHM_FLIGHT_CA")
    kwargs = {"tls_root_certs": open(ca, "rb").read()} if ca else {}
    client = flight.FlightClient(address, **kwargs)
    token = os.environ.get("ARROW_SHM_FLIGHT_TOKEN")
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return client, flight.FlightCallOptions(headers=headers)


def get(address, ticket):
    client, options = connect(address)
    reader = client.do_get(flight.Ticket(ticket.encode()), options)
    say(f"schema {json.dumps([f.name for f in reader.schema])}")
    n = 0
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            break
        batch = chunk.data
        say(f"batch {n} {batch.num_rows} {batch.column(0)[0].as_py() if batch.num_rows else None}")
        n += 1
    say(f"end {n}")


def stall(address, ticket):
    client, options = connect(address)
    reader = client.do_get(flight.Ticket(ticket.encode()), options)
    reader.read_chunk()
    say("stalled")
    time.sleep(3600)


def put(address, name, count, rows):
    client, options = connect(address)
    schema = pa.schema([("k", pa.int64()), ("v", pa.float64())])
    writer, _ = client.do_put(flight.FlightDescriptor.for_path(*name.split("/")), schema, options)
    for k in range(count):
        writer.write_batch(pa.record_batch([pa.array([k] * rows, pa.int64()), pa.array([k / 2] * rows, pa.float64())], schema=schema))
        say(f"sent {k}")
        if not sys.stdin.readline():
            break
    writer.done_writing()
    writer.close()
    say("done")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        if mode == "get":
            get(*args)
        elif mode == "stall":
            stall(*args)
        elif mode == "put":
            put(args[0], args[1], int(args[2]), int(args[3]))
        else:
            raise SystemExit(f"unknown mode {mode}")
    except flight.FlightError as e:
        say(f"error {type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
