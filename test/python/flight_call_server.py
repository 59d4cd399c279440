"""A pyarrow.flight server that checks the gRPC semantics of arrow-shm's client calls (test/flight.test.ts).

  flight_call_server.py [--tls CERT KEY] [--token TOKEN] [--slow]

Prints "arrow-shm: listening on grpc[+tls]://127.0.0.1:PORT" on stderr. With --token, a call without
"authorization: Bearer TOKEN" is refused (UNAUTHENTICATED) from its headers. Each DoPut prints one line:
"put NAME ROWS channel=ID" (ID: the arrow-shm-channel header, or -). With --slow a DoPut reads nothing
for 10 s, watching for the client's cancellation, and prints "cancelled" once it reaches the server.
"""
import sys
import time

import pyarrow.flight as flight


class Headers(flight.ServerMiddlewareFactory):
    def __init__(self, token):
        self.token = token

    def start_call(self, info, headers):
        if self.token is not None and headers.get("authorization") != [f"Bearer {self.token}"]:
            raise flight.FlightUnauthenticatedError("ERR_PEER_CREDENTIALS: missing or wrong token")
        return Seen(headers)


class Seen(flight.ServerMiddleware):
    def __init__(self, headers):
        self.headers = headers


class Server(flight.FlightServerBase):
    def __init__(self, location, token, slow, tls):
        super().__init__(location, middleware={"headers": Headers(token)}, tls_certificates=tls)
        self.slow = slow

    def do_put(self, context, descriptor, reader, writer):
        if self.slow:
            for _ in range(100):
                if context.is_cancelled():
                    print("cancelled", flush=True)
                    return
                time.sleep(0.1)
        table = reader.read_all()
        channel = context.get_middleware("headers").headers.get("arrow-shm-channel", ["-"])[0]
        name = "/".join(p.decode() for p in descriptor.path)
        print(f"put {name} {table.num_rows} channel={channel}", flush=True)


def main():
    args = sys.argv[1:]
    tls, token, slow = [], None, "--slow" in args
    if "--tls" in args:
        i = args.index("--tls")
        with open(args[i + 1], "rb") as cert, open(args[i + 2], "rb") as key:
            tls = [flight.CertKeyPair(cert=cert.read(), key=key.read())]
    if "--token" in args:
        token = args[args.index("--token") + 1]
    scheme = "grpc+tls" if tls else "grpc"
    server = Server(f"{scheme}://127.0.0.1:0", token, slow, tls)
    print(f"arrow-shm: listening on {scheme}://127.0.0.1:{server.port}", file=sys.stderr, flush=True)
    server.serve()


main()
