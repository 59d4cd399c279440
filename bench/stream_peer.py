"""The Python program of the stream bench contract (issue #16; bench/stream.ts pairs it with the
other peers' programs and iceoryx2's):

  python bench/stream_peer.py consume --address A --batches N [--spin-micros S]
  python bench/stream_peer.py produce --address A --bytes B --batches N [--interval-ms I] [--capacity-bytes C]
  python bench/stream_peer.py pong --address A [--spin-micros S]
  python bench/stream_peer.py ping --address A --bytes B --rounds N [--spin-micros S]

Batches: ``sent_ms: float64``, ``payload: binary``, one row. One batch (B bytes of 0x07) is built
once; its 8-byte timestamp buffer is rewritten just before each write (the writer copies the batch
into the ring before it returns). stdout: the contract's JSON lines only; errors go to stderr with
a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import sys
import time
from typing import Any, Callable, List, Optional

import pyarrow as pa

from arrow_shm import ArrowShmError, connect, listen
from arrow_shm.consumer import StreamReader

SCHEMA = pa.schema([pa.field("sent_ms", pa.float64(), nullable=False), pa.field("payload", pa.binary(), nullable=False)])
_F64 = struct.Struct("<d")
_OFFSETS = struct.Struct("<ii")
WARM_UP_ROUNDS = 100


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


def cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def emit(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


class Batches:
    """One one-row batch of ``size`` payload bytes, built once (as the Node program's): its
    timestamp lives in one 8-byte buffer, rewritten before each write."""

    def __init__(self, size: int) -> None:
        offsets = pa.py_buffer(_OFFSETS.pack(0, size))
        payload = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(b"\x07" * size)])
        self._stamp = bytearray(8)
        sent = pa.Array.from_buffers(pa.float64(), 1, [None, pa.py_buffer(self._stamp)])
        self._batch = pa.RecordBatch.from_arrays([sent, payload], schema=SCHEMA)

    def make(self, sent_ms: float) -> pa.RecordBatch:
        _F64.pack_into(self._stamp, 0, sent_ms)
        return self._batch


def sent_and_size(batch: pa.RecordBatch) -> tuple[float, int]:
    """Row 0's sent_ms and payload length, read from the buffers (not every payload byte). Every
    buffer of the batch comes in one call (batch.column(i) wraps each column in a Python object,
    ~0.8 µs each); the columns of a batch decoded from IPC start at their buffers' first element."""
    _, _, sent_values, _, offsets, _ = batch.to_struct_array().buffers()
    start, end = _OFFSETS.unpack_from(offsets)
    return _F64.unpack_from(sent_values)[0], end - start


def quantile_us(samples_ms: List[float], q: float) -> float:
    if not samples_ms:
        return 0.0
    ordered = sorted(samples_ms)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def connect_retrying(address: str) -> Any:
    """The listener may not be up yet: retry for up to 5 s."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return connect(address, timeout=5)
        except ArrowShmError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def accept_one(address: str) -> Any:
    with listen(address) as listener:
        emit({"ready": True})
        return listener.accept(timeout=30)


def pause_for(interval_ms: float) -> Callable[[], None]:
    """Busy-wait under 1 ms (sleeps are coarser), sleep otherwise, nothing at 0."""
    if interval_ms <= 0:
        return lambda: None
    if interval_ms >= 1:
        return lambda: time.sleep(interval_ms / 1000)

    def spin() -> None:
        until = time.monotonic() + interval_ms / 1000
        while time.monotonic() < until:
            pass

    return spin


def spinning(spin_micros: int) -> dict:
    """The spin_micros option, when asked for."""
    return {"spin_micros": spin_micros} if spin_micros else {}


def accept_stream(channel: Any, spin_micros: int) -> StreamReader:
    return StreamReader.accept(channel, timeout=30, **spinning(spin_micros))


def consume(args: argparse.Namespace) -> None:
    channel = accept_one(args.address)
    start_cpu = cpu_ms()
    latencies: List[float] = []
    first_sent: Optional[float] = None
    last_recv = 0.0
    with channel, accept_stream(channel, args.spin_micros) as reader:
        while True:
            item = reader.read()
            if item is None:
                break
            with item:
                sent, _size = sent_and_size(item.batch)
                last_recv = now_ms()
            if first_sent is None:
                first_sent = sent
            latencies.append(last_recv - sent)
    emit(
        {
            "batches": len(latencies),
            "first_sent_ms": first_sent or 0.0,
            "last_recv_ms": last_recv,
            "latency_median_us": quantile_us(latencies, 0.5),
            "latency_p99_us": quantile_us(latencies, 0.99),
            "cpu_ms": cpu_ms() - start_cpu,
        }
    )


def produce(args: argparse.Namespace) -> None:
    start_cpu = cpu_ms()
    batches = Batches(args.bytes)
    pause = pause_for(args.interval_ms)
    with connect_retrying(args.address) as channel:
        # prefault: the ring's pages are faulted in at open (counted in cpu_ms), not in the first lap.
        writer = channel.open_stream(SCHEMA, capacity_bytes=args.capacity_bytes, prefault=True)
        with writer:
            for _ in range(args.batches):
                writer.write(batches.make(now_ms()))
                pause()
    emit({"cpu_ms": cpu_ms() - start_cpu})


def pong(args: argparse.Namespace) -> None:
    channel = accept_one(args.address)
    start_cpu = cpu_ms()
    replies: dict[int, Batches] = {}
    with channel, accept_stream(channel, args.spin_micros) as reader:
        with channel.open_stream(SCHEMA, **spinning(args.spin_micros)) as writer:
            while True:
                item = reader.read()
                if item is None:
                    break
                with item:
                    sent, size = sent_and_size(item.batch)
                batches = replies.get(size) or replies.setdefault(size, Batches(size))
                writer.write(batches.make(sent))
    emit({"cpu_ms": cpu_ms() - start_cpu})


def ping(args: argparse.Namespace) -> None:
    start_cpu = cpu_ms()
    batches = Batches(args.bytes)
    rtts: List[float] = []
    with connect_retrying(args.address) as channel:
        writer = channel.open_stream(SCHEMA, **spinning(args.spin_micros))
        with accept_stream(channel, args.spin_micros) as reader:
            with writer:
                for i in range(WARM_UP_ROUNDS + args.rounds):
                    writer.write(batches.make(now_ms()))
                    item = reader.read()
                    if item is None:
                        raise ArrowShmError("ERR_PROTOCOL", "the pong side ended its stream early")
                    with item:
                        sent, _size = sent_and_size(item.batch)
                    if i >= WARM_UP_ROUNDS:
                        rtts.append(now_ms() - sent)
            if reader.read() is not None:  # the pong side's END record, so that its close returns
                raise ArrowShmError("ERR_PROTOCOL", "the pong side sent more replies than pings")
    emit({"rounds": len(rtts), "rtt_median_us": quantile_us(rtts, 0.5), "rtt_p99_us": quantile_us(rtts, 0.99), "cpu_ms": cpu_ms() - start_cpu})


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="stream_peer.py")
    roles = parser.add_subparsers(dest="role", required=True)
    for name in ("consume", "produce", "pong", "ping"):
        role = roles.add_parser(name)
        role.add_argument("--address", required=True)
        role.add_argument("--spin-micros", type=int, default=0)
        if name in ("consume", "produce"):
            role.add_argument("--batches", type=int, required=name == "produce", default=0)
        if name in ("produce", "ping"):
            role.add_argument("--bytes", type=int, required=True)
        if name == "produce":
            role.add_argument("--interval-ms", type=float, default=0.0)
            role.add_argument("--capacity-bytes", type=int, default=64 * 1024 * 1024)
        if name == "ping":
            role.add_argument("--rounds", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        {"consume": consume, "produce": produce, "pong": pong, "ping": ping}[args.role](args)
    except (ArrowShmError, OSError) as e:
        sys.stderr.write(f"stream_peer.py {args.role}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
