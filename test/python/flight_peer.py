"""pyarrow.flight on the other end of arrow-shm's Flight transport (test/flight.test.ts).

  server OUTDIR [TOKEN]        a Flight server on a free port ("arrow-shm: listening on grpc://..."
                               on stderr): each DoPut is written to OUTDIR/<path>.arrows and kept
                               for DoGet (ticket = the path); it also serves every file already in
                               OUTDIR under its name. Runs until killed.
  put ADDRESS FILE...          DoPut each IPC stream FILE (descriptor path = the file's name), with
                               the token of $ARROW_SHM_FLIGHT_TOKEN if set
  get ADDRESS NAME OUT         DoGet ticket NAME, write the stream to OUT
  discover ADDRESS PREFIX OUTDIR
                               list_flights(PREFIX) (token as for put); per FlightInfo: get_flight_info
                               of its descriptor must equal it, do_get of its endpoint's ticket must
                               have its schema and total_records; the table goes to
                               OUTDIR/<name, / as _>.arrows and one JSON line is printed
                               ({name, records, bytes, metadata, fields, location}); then
                               get_flight_info of an unknown name prints "unknown: <exception class>"
  exchange ADDRESS FILE        DoExchange FILE's table (command "count-by-kind"); print "match" if
                               the answer equals count_by_kind computed here, else the difference

The server answers DoExchange with count_by_kind of the request table (or an error without "kind"),
ListFlights (expression = a name prefix) and GetFlightInfo for what DoPut gave it, with the
app_metadata {"from": "pyarrow"}.
"""
import json
import os
import sys

import pyarrow as pa
import pyarrow.flight as flight


def count_by_kind(table):
    """Rows per value of the "kind" column: {kind, count} sorted by kind."""
    counts = table.group_by("kind").aggregate([("kind", "count")]).sort_by("kind")
    return pa.table({"kind": counts["kind"], "count": counts["kind_count"].cast(pa.int64())})


class Server(flight.FlightServerBase):
    def __init__(self, outdir, token=None):
        super().__init__("grpc://127.0.0.1:0")
        self.outdir = outdir
        self.token = token
        self.tables = {}

    def _check(self, context):
        if self.token is None:
            return
        for key, value in context.headers.items() if hasattr(context, "headers") else []:
            if key == "authorization" and (value[0] if isinstance(value, list) else value) == f"Bearer {self.token}":
                return
        raise flight.FlightUnauthenticatedError("missing or wrong token")

    def do_put(self, context, descriptor, reader, writer):
        table = reader.read_all()
        name = "/".join(p.decode() if isinstance(p, bytes) else p for p in descriptor.path)
        self.tables[name] = table
        with pa.OSFile(os.path.join(self.outdir, name.replace("/", "_") + ".arrows"), "wb") as f:
            with pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)

    def _info(self, name, table):
        endpoint = flight.FlightEndpoint(name.encode(), [])
        return flight.FlightInfo(table.schema, flight.FlightDescriptor.for_path(name), [endpoint], table.num_rows, table.nbytes, app_metadata=b'{"from": "pyarrow"}')

    def list_flights(self, context, criteria):
        for name, table in list(self.tables.items()):
            if name.encode().startswith(criteria or b""):
                yield self._info(name, table)

    def get_flight_info(self, context, descriptor):
        name = "/".join(p.decode() if isinstance(p, bytes) else p for p in descriptor.path)
        if name not in self.tables:
            raise KeyError(f"no table {name}")
        return self._info(name, self.tables[name])

    def do_exchange(self, context, descriptor, reader, writer):
        table = reader.read_all()
        if "kind" not in table.column_names:
            raise flight.FlightServerError("ERR_INVALID_ARGUMENT: the request has no kind column")
        answer = count_by_kind(table)
        writer.begin(answer.schema)
        writer.write_table(answer)

    def do_get(self, context, ticket):
        name = ticket.ticket.decode()
        table = self.tables.get(name)
        if table is None:
            path = os.path.join(self.outdir, name)
            if not os.path.exists(path):
                raise flight.FlightServerError(f"no table {name}")
            table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
        return flight.RecordBatchStream(table)


def call_options():
    token = os.environ.get("ARROW_SHM_FLIGHT_TOKEN")
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())] if token else [])


def discover(address, prefix, outdir):
    client = flight.connect(address)
    options = call_options()
    for info in client.list_flights(prefix.encode(), options):
        again = client.get_flight_info(info.descriptor, options)
        assert again == info, f"get_flight_info differs: {again} vs {info}"
        (endpoint,) = info.endpoints
        table = client.do_get(endpoint.ticket, options).read_all()
        assert table.schema.equals(info.schema), f"{table.schema} vs {info.schema}"
        assert table.num_rows == info.total_records, f"{table.num_rows} rows, FlightInfo says {info.total_records}"
        name = "/".join(p.decode() for p in info.descriptor.path)
        with pa.OSFile(os.path.join(outdir, name.replace("/", "_") + ".arrows"), "wb") as f:
            with pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)
        metadata = json.loads(info.app_metadata) if info.app_metadata else {}
        record = {"name": name, "records": info.total_records, "bytes": info.total_bytes, "metadata": metadata, "fields": info.schema.names, "location": [str(l) for l in endpoint.locations]}
        print(json.dumps(record), flush=True)
    try:
        client.get_flight_info(flight.FlightDescriptor.for_path("no such table"), options)
        print("unknown: found", flush=True)
    except Exception as e:  # noqa: BLE001 (the class is the answer)
        print(f"unknown: {type(e).__name__}: {e}", flush=True)
    client.close()


def main():
    mode = sys.argv[1]
    if mode == "server":
        server = Server(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
        print(f"arrow-shm: listening on grpc://127.0.0.1:{server.port}", file=sys.stderr, flush=True)
        server.serve()  # until killed
    elif mode == "put":
        client = flight.connect(sys.argv[2])
        options = call_options()
        for path in sys.argv[3:]:
            table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
            writer, _ = client.do_put(flight.FlightDescriptor.for_path(os.path.basename(path)), table.schema, options)
            writer.write_table(table)
            writer.close()
        client.close()
    elif mode == "get":
        client = flight.connect(sys.argv[2])
        table = client.do_get(flight.Ticket(sys.argv[3].encode())).read_all()
        with pa.OSFile(sys.argv[4], "wb") as f:
            with pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)
        client.close()
    elif mode == "discover":
        discover(*sys.argv[2:5])
    elif mode == "exchange":
        client = flight.connect(sys.argv[2])
        table = pa.ipc.open_stream(pa.memory_map(sys.argv[3])).read_all()
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"count-by-kind"))
        writer.begin(table.schema)
        writer.write_table(table)
        writer.done_writing()
        answer = reader.read_all()
        writer.close()
        expected = count_by_kind(table)
        print("match" if answer.to_pylist() == expected.to_pylist() else f"mismatch: {answer} vs {expected}", flush=True)
        client.close()
    else:
        sys.exit(f"unknown mode {mode}")


main()
