"""pyarrow.flight on the other end of arrow-shm's Flight transport (test/flight.test.ts).

  server OUTDIR [TOKEN]        a Flight server on a free port ("arrow-shm: listening on grpc://..."
                               on stderr): each DoPut is written to OUTDIR/<path>.arrows and kept
                               for DoGet (ticket = the path); it also serves every file already in
                               OUTDIR under its name. Runs until killed.
  put ADDRESS FILE...          DoPut each IPC stream FILE (descriptor path = the file's name)
  get ADDRESS NAME OUT         DoGet ticket NAME, write the stream to OUT
"""
import os
import sys

import pyarrow as pa
import pyarrow.flight as flight


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

    def do_get(self, context, ticket):
        name = ticket.ticket.decode()
        table = self.tables.get(name)
        if table is None:
            path = os.path.join(self.outdir, name)
            if not os.path.exists(path):
                raise flight.FlightServerError(f"no table {name}")
            table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
        return flight.RecordBatchStream(table)


def main():
    mode = sys.argv[1]
    if mode == "server":
        server = Server(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
        print(f"arrow-shm: listening on grpc://127.0.0.1:{server.port}", file=sys.stderr, flush=True)
        server.serve()  # until killed
    elif mode == "put":
        client = flight.connect(sys.argv[2])
        for path in sys.argv[3:]:
            table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
            writer, _ = client.do_put(flight.FlightDescriptor.for_path(os.path.basename(path)), table.schema)
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
    else:
        sys.exit(f"unknown mode {mode}")


main()
