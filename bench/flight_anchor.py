"""pyarrow.flight's own client and server, as the anchor of the Flight rows (npm run bench).

  python flight_anchor.py FILE RUNS   starts a server process, DoPuts FILE's table RUNS (+2 warm-up)
                                      times, prints the times in ms as a JSON list. A put ends when
                                      the server has read the whole table and answered (writer.close).
"""
import json
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight


class Server(flight.FlightServerBase):
    def do_put(self, context, descriptor, reader, writer):
        reader.read_all()


if sys.argv[1] == "server":
    server = Server("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()
else:
    path, runs = sys.argv[1], int(sys.argv[2])
    child = subprocess.Popen([sys.executable, __file__, "server"], stdout=subprocess.PIPE)
    try:
        port = int(child.stdout.readline())
        table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
        client = flight.connect(f"grpc://127.0.0.1:{port}")
        samples = []
        for i in range(runs + 2):
            t0 = time.perf_counter()
            writer, _ = client.do_put(flight.FlightDescriptor.for_path("bench"), table.schema)
            writer.write_table(table)
            writer.close()
            if i >= 2:
                samples.append((time.perf_counter() - t0) * 1000)
        client.close()
        print(json.dumps(samples))
    finally:
        child.kill()
        child.wait()
