#!/usr/bin/env python3
"""A raw gRPC attacker of arrow-shm's Flight transport (test/flight-attacks.test.ts).

FlightData is encoded by hand (protobuf, field numbers of proto/flight.proto) and sent with plain
grpcio, so nothing checks or decodes it on the way out. Hostile IPC bytes come from attacks.py.

  flight_attacker.py client KIND --address HOST:PORT [--token T] [--count N] [--seconds S] [--connections C]
    KIND: metadata-bomb | schema-bomb | node-count-bomb | declared-count | counts-mismatch
          (one DoPut of those bytes; "exchange-" + KIND does the same with DoExchange)
          oversize       one FlightData of --count bytes (default 8 MiB) in its data_body
          many-messages  one DoPut of the schema then --count tiny FlightData
          flood          --count concurrent DoPuts of a small valid table over --connections
                         connections, all open at once (each waits until all started)
          slow           --count DoPuts that send the schema, then one byte-sized FlightData every
                         second, never half-closing, for up to --seconds
          silent         --count DoPuts that open and send nothing, for up to --seconds
          bad-token      --count DoPuts with a wrong token, one after another (no FlightData)
    Prints {"event":"status","code":NAME,"details":...} per call (first few) and a final
    {"event":"done","codes":{NAME: count},"seconds":S}. NAME is a gRPC status, or
    ENDED_WHILE_WRITING when the server ended the call while this client was still writing
    (grpcio then reports its own INTERNAL and loses the server's status), or UNFINISHED.

  flight_attacker.py server KIND
    A hostile Flight server on a free port (prints "arrow-shm: listening on grpc://127.0.0.1:P" on
    stderr). KIND: metadata-bomb | schema-bomb | counts-mismatch: DoGet and DoExchange answer those
    bytes, Handshake answers normally; put-results: DoPut answers an endless stream of 1 MiB
    PutResults; silent: DoGet sends one schema then nothing. Whatever KIND, ListFlights answers an
    endless stream of FlightInfos and GetFlightInfo one, whose schema is KIND's first message (a
    small table's for put-results and silent). Runs until killed.

Exits 0 when the attack ran (whatever the server did), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from collections import Counter
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attacks  # noqa: E402

SERVICE = "/arrow.flight.protocol.FlightService/"

# ------------------------------------------------------------------------------------ protobuf


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def flight_data(header: bytes = b"", body: bytes = b"", app_metadata: bytes = b"", path: str | None = None) -> bytes:
    """FlightData: 1 flight_descriptor (type PATH = 1, 3 path), 2 data_header, 3 app_metadata, 1000 data_body."""
    out = b""
    if path is not None:
        out += _field(1, _varint(1 << 3 | 0) + _varint(1) + _field(3, path.encode()))
    if header:
        out += _field(2, header)
    if app_metadata:
        out += _field(3, app_metadata)
    if body:
        out += _field(1000, body)
    return out


def _body_length(meta: bytes) -> int:
    """Message.bodyLength (field 3) read from the flatbuffer by hand: no Arrow library sees it."""
    table = struct.unpack_from("<I", meta, 0)[0]
    vtable = table - struct.unpack_from("<i", meta, table)[0]
    vsize = struct.unpack_from("<H", meta, vtable)[0]
    if vsize < 4 + 2 * 4:
        return 0
    off = struct.unpack_from("<H", meta, vtable + 4 + 2 * 3)[0]
    return struct.unpack_from("<q", meta, table + off)[0] if off else 0


def split_stream(data: bytes, path: str = "attack") -> list[bytes]:
    """An IPC stream's encapsulated messages as encoded FlightData (descriptor on the first)."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        cont, size = struct.unpack_from("<Ii", data, pos)
        if cont != 0xFFFFFFFF or size == 0:
            break
        meta = data[pos + 8 : pos + 8 + size]
        body_len = _body_length(meta)
        body = data[pos + 8 + size : pos + 8 + size + body_len]
        out.append(flight_data(meta, body, path=path if not out else None))
        pos += 8 + size + body_len
    return out


def _truncated(parts, limit: int) -> bytes:
    """The first ``limit`` bytes of builder parts, without materializing holes past it."""
    out = bytearray()
    for p in parts:
        if len(out) >= limit:
            break
        out += (b"\0" * min(p, limit - len(out))) if isinstance(p, int) else p
    return bytes(out[:limit])


def declared_count() -> list[bytes]:
    """A RecordBatch whose nodes vector declares 10,000,000 entries in a 4 KiB flatbuffer."""
    schema = split_stream(attacks.small_table())[0]
    batch = attacks._record_batch(0, 10_000_000, 2, b"")  # [prefix, *flatbuffer, body]
    return [schema, flight_data(_truncated(batch[1:-1], 4096))]


def payload(kind: str) -> list[bytes]:
    if kind == "metadata-bomb":
        return split_stream(attacks.metadata_bomb())
    if kind == "schema-bomb":
        return split_stream(attacks.schema_bomb())
    if kind == "node-count-bomb":
        # 1,000,000 real nodes (a 48 MiB header) against a one-column schema.
        return split_stream(attacks._parts_bytes(attacks._node_count_bomb_parts(1_000_000)))
    if kind == "declared-count":
        return declared_count()
    if kind == "counts-mismatch":
        return split_stream(attacks.counts_mismatch())
    if kind == "small":
        return split_stream(attacks.small_table())
    raise SystemExit(2)


# -------------------------------------------------------------------------------------- client


def _metadata(token: str | None):
    return (("authorization", f"Bearer {token}"),) if token else None


async def _call(channel, method: str, messages, token, pace: float = 0.0, hold: float = 0.0, started=None):
    """One streaming call; returns (status code name, details): OK when the server ended it well."""
    call = channel.stream_stream(SERVICE + method)(metadata=_metadata(token))
    try:
        if started is not None:
            await started.wait()
        for m in messages:
            await call.write(m)
            if pace:
                await asyncio.sleep(pace)
        if hold:
            await asyncio.sleep(hold)
        await call.done_writing()
    except Exception:  # noqa: BLE001
        # The server ended the call while we wrote: grpcio's aio client then reports its own
        # INTERNAL ("Failed execute_batch") and the server's status is lost.
        if (await call.code()) == grpc.StatusCode.INTERNAL:
            return "ENDED_WHILE_WRITING", (await call.details()) or ""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details() or ""
    except Exception:  # noqa: BLE001
        pass
    return (await call.code()).name, (await call.details()) or ""


def _call_sync(address: str, method: str, messages, token):
    """One call through grpcio's synchronous API, whose request iterator stops cleanly when the
    server ends the call early, so the server's status is what we see."""
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        responses = channel.stream_stream(SERVICE + method)(iter(messages), metadata=_metadata(token))
        try:
            for _ in responses:
                pass
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""


OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


async def run_client(args) -> dict:
    options = OPTIONS
    # Distinct channel args: grpcio would otherwise share one connection between the channels.
    channels = [grpc.aio.insecure_channel(args.address, options=options + [("arrow-shm.attacker", i)]) for i in range(args.connections)]
    kind = args.kind
    method = "DoPut"
    if kind.startswith("exchange-"):
        method, kind = "DoExchange", kind[len("exchange-"):]
    t0 = time.monotonic()
    codes: Counter = Counter()
    shown = 0

    def record(result):
        nonlocal shown
        code, details = result
        codes[code] += 1
        if shown < 5:
            shown += 1
            print(json.dumps({"event": "status", "code": code, "details": details[:300]}), flush=True)

    try:
        if kind == "oversize":
            record(_call_sync(args.address, method, [payload("small")[0], flight_data(body=b"\0" * args.count)], args.token))
        elif kind == "many-messages":
            first = payload("small")
            record(_call_sync(args.address, method, [first[0]] + [flight_data(app_metadata=b"x")] * args.count, args.token))
        elif kind in ("flood", "slow", "silent"):
            messages = payload("small")
            started = asyncio.Event()
            if kind == "flood":
                calls = [_call(channels[i % len(channels)], method, messages, args.token, started=started) for i in range(args.count)]
            elif kind == "slow":
                drip = [messages[0]] + [flight_data(app_metadata=b"x")] * int(args.seconds)
                calls = [_call(channels[i % len(channels)], method, drip, args.token, pace=1.0, started=started) for i in range(args.count)]
            else:
                calls = [_call(channels[i % len(channels)], method, [], args.token, hold=args.seconds, started=started) for i in range(args.count)]
            tasks = [asyncio.ensure_future(c) for c in calls]
            started.set()
            try:
                for r in await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.seconds + 30):
                    record(r)
            except asyncio.TimeoutError:
                codes["UNFINISHED"] += sum(1 for t in tasks if not t.done())
                for t in tasks:
                    if t.done() and not t.cancelled():
                        record(t.result())
        elif kind == "bad-token":
            for _ in range(args.count):
                # No FlightData: the token alone must end the call (a write racing the refusal would
                # only show grpcio's ENDED_WHILE_WRITING, not the server's status).
                record(await _call(channels[0], method, [], "wrong-" + (args.token or "token")))
        else:
            record(_call_sync(args.address, method, payload(kind), args.token))
    finally:
        for c in channels:
            await c.close()
    return {"event": "done", "codes": dict(codes), "seconds": round(time.monotonic() - t0, 3)}


# -------------------------------------------------------------------------------------- server


def flight_info(kind: str) -> bytes:
    """FlightInfo: 1 schema (the stream's first encapsulated message), 2 descriptor, 3 endpoint, 4 total_records."""
    stream = {"metadata-bomb": attacks.metadata_bomb, "schema-bomb": attacks.schema_bomb, "counts-mismatch": attacks.counts_mismatch}.get(kind, attacks.small_table)()
    schema = stream[: 8 + struct.unpack_from("<i", stream, 4)[0]]
    descriptor = _varint(1 << 3 | 0) + _varint(1) + _field(3, b"attack")
    endpoint = _field(1, _field(1, b"attack"))  # FlightEndpoint.ticket = Ticket{ticket}
    return _field(1, schema) + _field(2, descriptor) + _field(3, endpoint) + _varint(4 << 3 | 0) + _varint(1)


def run_server(kind: str) -> None:
    messages = payload(kind) if kind not in ("put-results", "silent") else payload("small")
    info = flight_info(kind)

    def list_flights(request, context):
        while context.is_active():  # endless: a client reads at most its maxListedFlights
            yield info

    def get_flight_info(request, context):
        return info

    def do_get(request, context):
        if kind == "silent":
            yield messages[0]
            time.sleep(3600)
        yield from messages

    def do_exchange(request_iterator, context):
        for _ in request_iterator:
            pass
        yield from messages

    def do_put(request_iterator, context):
        for _ in request_iterator:
            pass
        result = _field(1, b"r" * (1 << 20))  # PutResult.app_metadata
        while context.is_active() and kind == "put-results":
            yield result

    def handshake(request_iterator, context):
        for _ in request_iterator:
            pass
        yield b""

    handlers = {
        "DoGet": grpc.unary_stream_rpc_method_handler(do_get),
        "DoExchange": grpc.stream_stream_rpc_method_handler(do_exchange),
        "DoPut": grpc.stream_stream_rpc_method_handler(do_put),
        "Handshake": grpc.stream_stream_rpc_method_handler(handshake),
        "ListFlights": grpc.unary_stream_rpc_method_handler(list_flights),
        "GetFlightInfo": grpc.unary_unary_rpc_method_handler(get_flight_info),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("arrow.flight.protocol.FlightService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"arrow-shm: listening on grpc://127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("client")
    c.add_argument("kind")
    c.add_argument("--address", required=True)
    c.add_argument("--token")
    c.add_argument("--count", type=int, default=8 << 20)
    c.add_argument("--seconds", type=float, default=10.0)
    c.add_argument("--connections", type=int, default=1)
    s = sub.add_parser("server")
    s.add_argument("kind")
    args = parser.parse_args()
    if args.mode == "client":
        print(json.dumps(asyncio.run(run_client(args))), flush=True)
    else:
        run_server(args.kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
