"""The iceoryx2 anchor of `npm run bench:stream`: the stream bench contract's roles
(/work/notes/s8/stream-contract.md, summarised in bench/stream.ts) over iceoryx2's Python bindings.

  stream_iceoryx2.py consume --address A --batches N [--bytes B] [--spin-micros S] [--wake event|poll]
  stream_iceoryx2.py produce --address A --bytes B --batches N [--interval-ms I] [--wake event|poll]
  stream_iceoryx2.py pong    --address A [--bytes B] [--spin-micros S] [--wake event|poll]
  stream_iceoryx2.py ping    --address A --bytes B --rounds N [--spin-micros S] [--wake event|poll]

The same bytes as an arrow-shm batch, without Arrow: a user header holding sent_ms and a slice of
B payload bytes, loaned from the publisher's shared memory and filled in place (one copy of the
payload). Nothing is lost: no safe overflow, and a publisher that finds its subscriber's buffer
full sends again until the sample is delivered (back-pressure; see Writer.write).

Waking (iceoryx2's publish/subscribe is polled; waking a reader is a separate event service):
  --wake event (default): the publisher notifies an event service after every sample and the
    reader, after busy-polling up to S µs, sleeps on that event's listener: a sleeping reader.
  --wake poll: no events, the reader busy-polls for ever (iceoryx2's fastest mode; the throughput
    and ping-pong anchors).
--bytes on the listening side sizes its subscriber's buffer like arrow-shm's 64 MiB ring
(64 MiB / B samples, 2..1024), since the side that creates the service fixes it.
stdout: exactly the contract's JSON lines; errors go to stderr with a non-zero exit.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys
import time
from typing import Any

import iceoryx2 as iox  # type: ignore[import-untyped]

RING_BYTES = 64 * 1024 * 1024
END_MS = -1.0  # sent_ms of the sample that ends a ping stream (iceoryx2 has no end of stream)
WAIT_LIMIT_S = 60.0  # a peer silent this long is gone: fail instead of hanging the bench


class Header(ctypes.Structure):
    """The user header of every sample: the send time, ms on CLOCK_MONOTONIC."""

    _fields_ = [("sent_ms", ctypes.c_double)]

    @staticmethod
    def type_name() -> str:
        return "ArrowShmBenchHeader"


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


def cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def buffer_samples(payload_bytes: int) -> int:
    return max(2, min(1024, RING_BYTES // max(1, payload_bytes)))


class Link:
    """One direction: a publish/subscribe service `<name>/data` and its wake-up event `<name>/wake`."""

    def __init__(self, node: Any, name: str, samples: int, wake: str) -> None:
        base = f"arrow-shm-bench/{name}"
        self.service = (
            node.service_builder(iox.ServiceName.new(f"{base}/data"))
            .publish_subscribe(iox.Slice[ctypes.c_uint8])
            .user_header(Header)
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(samples)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()
        )
        self.event = node.service_builder(iox.ServiceName.new(f"{base}/wake")).event().open_or_create() if wake == "event" else None


class Reader:
    """The subscribing end: receive() busy-polls up to spin µs, then sleeps on the event (or polls on)."""

    def __init__(self, link: Link, spin_micros: float) -> None:
        self.link = link
        self.subscriber = link.service.subscriber_builder().create()
        self.listener = link.event.listener_builder().create() if link.event else None
        self.spin_ms = spin_micros / 1000

    def receive(self) -> Any:
        subscriber = self.subscriber
        sample = subscriber.receive()
        if sample is not None:
            return sample
        idle_since = time.monotonic()
        spin_until = now_ms() + self.spin_ms
        while True:
            sample = subscriber.receive()
            if sample is not None:
                return sample
            if self.listener is not None and now_ms() >= spin_until:
                # A notification sent after the receive() above stays pending: no lost wake-up.
                self.listener.timed_wait(iox.Duration.from_millis(500))
            if time.monotonic() - idle_since > WAIT_LIMIT_S:
                raise TimeoutError(f"no sample for {WAIT_LIMIT_S:.0f} s: the publisher is gone")

    def close(self) -> None:
        if self.listener is not None:
            self.listener.delete()
        self.subscriber.delete()


class Writer:
    """The publishing end: loans a slice of `size` bytes, fills it in place, sends, notifies if asked."""

    def __init__(self, link: Link, size: int) -> None:
        self.link = link
        self.size = size
        self.publisher = (
            link.service.publisher_builder()
            .initial_max_slice_len(max(1, size))
            .allocation_strategy(iox.AllocationStrategy.Static)
            .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.notifier = link.event.notifier_builder().create() if link.event else None
        self.source = (ctypes.c_ubyte * size).from_buffer(bytearray(b"\x07" * size))  # built once, reused

    def write(self, sent_ms: float | None = None, size: int | None = None) -> None:
        """Sends one sample (sent_ms None: now). send() counts 0 recipients, the sample dropped, both
        before the publisher connected to its subscriber and while the subscriber's buffer is full
        (RetryUntilDelivered does not block here): sent again, so nothing is lost."""
        size = self.size if size is None else size
        deadline = None
        while True:
            sample = self.publisher.loan_slice_uninit(size)
            Header.from_address(sample.user_header_ptr).sent_ms = now_ms() if sent_ms is None else sent_ms
            ctypes.memmove(sample.payload_ptr, self.source, size)
            if sample.assume_init().send() > 0:
                break
            deadline = deadline or time.monotonic() + 5
            if time.monotonic() > deadline:
                raise TimeoutError("no subscriber took the sample for 5 s")
            os.sched_yield()
        if self.notifier is not None:
            self.notifier.notify()

    def wait_until_unsubscribed(self) -> None:
        """The contract's close: return once the reader took everything (it drops its subscriber then)."""
        deadline = time.monotonic() + WAIT_LIMIT_S
        while self.link.service.dynamic_config.number_of_subscribers > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the subscriber did not finish reading")
            time.sleep(0.0005)

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.delete()
        self.publisher.delete()


def open_link(node: Any, name: str, samples: int, wake: str) -> Link:
    """The connecting side: the listening side creates the services; retry for up to 5 s like connect()."""
    deadline = time.monotonic() + 5
    while True:
        try:
            link = Link(node, name, samples, wake)
            if link.service.dynamic_config.number_of_subscribers > 0:
                return link
        except Exception:  # not created yet (or being created): retry until the deadline
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"no subscriber on {name} after 5 s")
        time.sleep(0.01)


def pause(interval_ms: float) -> None:
    """Under 1 ms the producer busy-waits (sleeps are coarser), as every contract producer does."""
    if interval_ms >= 1:
        time.sleep(interval_ms / 1000)
        return
    until = now_ms() + interval_ms
    while now_ms() < until:
        pass


def consume(node: Any, args: argparse.Namespace) -> None:
    reader = Reader(Link(node, args.address, buffer_samples(args.bytes), args.wake), args.spin_micros)
    emit({"ready": True})
    start_cpu = cpu_ms()
    latencies = []
    first_sent = last_recv = 0.0
    for i in range(args.batches):
        sample = reader.receive()
        sent = Header.from_address(sample.user_header_ptr).sent_ms
        length = sample.header.number_of_elements
        last_recv = now_ms()
        sample.delete()  # released: its memory goes back to the publisher
        if args.expected_bytes is not None and length != args.expected_bytes:
            raise ValueError(f"sample {i} has {length} bytes, not {args.bytes}")
        if i == 0:
            first_sent = sent
        latencies.append((last_recv - sent) * 1000)
    reader.close()
    latencies.sort()
    emit(
        {
            "batches": args.batches,
            "first_sent_ms": first_sent,
            "last_recv_ms": last_recv,
            "latency_median_us": percentile(latencies, 0.5),
            "latency_p99_us": percentile(latencies, 0.99),
            "cpu_ms": cpu_ms() - start_cpu,
        }
    )


def produce(node: Any, args: argparse.Namespace) -> None:
    start_cpu = cpu_ms()
    writer = Writer(open_link(node, args.address, buffer_samples(args.bytes), args.wake), args.bytes)
    for _ in range(args.batches):
        writer.write()
        if args.interval_ms:
            pause(args.interval_ms)
    writer.wait_until_unsubscribed()
    writer.close()
    emit({"cpu_ms": cpu_ms() - start_cpu})


def pong(node: Any, args: argparse.Namespace) -> None:
    samples = buffer_samples(args.bytes)
    reader = Reader(Link(node, f"{args.address}/ping", samples, args.wake), args.spin_micros)
    emit({"ready": True})
    start_cpu = cpu_ms()
    writer: Writer | None = None
    while True:
        sample = reader.receive()
        sent = Header.from_address(sample.user_header_ptr).sent_ms
        length = sample.header.number_of_elements
        sample.delete()
        if sent == END_MS:
            break
        if writer is None:  # the reply service exists once ping subscribed to it, before its first write
            writer = Writer(open_link(node, f"{args.address}/pong", samples, args.wake), max(args.bytes, length))
        writer.write(sent, length)
    reader.close()
    if writer is not None:
        writer.close()
    emit({"cpu_ms": cpu_ms() - start_cpu})


def ping(node: Any, args: argparse.Namespace) -> None:
    start_cpu = cpu_ms()
    samples = buffer_samples(args.bytes)
    reader = Reader(Link(node, f"{args.address}/pong", samples, args.wake), args.spin_micros)
    writer = Writer(open_link(node, f"{args.address}/ping", samples, args.wake), args.bytes)
    rtts = []
    for i in range(100 + args.rounds):  # 100 unrecorded warm-up rounds
        writer.write()
        sample = reader.receive()
        received = now_ms()
        sent = Header.from_address(sample.user_header_ptr).sent_ms
        sample.delete()
        if i >= 100:
            rtts.append((received - sent) * 1000)
    writer.write(END_MS)
    writer.wait_until_unsubscribed()
    writer.close()
    reader.close()
    rtts.sort()
    emit({"rounds": args.rounds, "rtt_median_us": percentile(rtts, 0.5), "rtt_p99_us": percentile(rtts, 0.99), "cpu_ms": cpu_ms() - start_cpu})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["consume", "produce", "pong", "ping"])
    parser.add_argument("--address", required=True, help="a name (a leading @ is dropped)")
    parser.add_argument("--batches", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--bytes", type=int, default=None)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--capacity-bytes", type=int, default=RING_BYTES, help="accepted for the contract; the buffer follows --bytes")
    parser.add_argument("--spin-micros", type=float, default=0.0)
    parser.add_argument("--wake", choices=["event", "poll"], default="event")
    args = parser.parse_args()
    args.expected_bytes = args.bytes  # the consumer checks sizes only when told them
    if args.bytes is None:
        args.bytes = 8
    if args.role in ("consume", "produce") and args.batches < 1 or args.role == "ping" and args.rounds < 1:
        parser.error("--batches (consume, produce) or --rounds (ping) must be at least 1")
    args.address = args.address.lstrip("@")
    iox.set_log_level_from_env_or(iox.LogLevel.Error)
    node = iox.NodeBuilder.new().signal_handling_mode(iox.SignalHandlingMode.Disabled).create(iox.ServiceType.Ipc)
    {"consume": consume, "produce": produce, "pong": pong, "ping": ping}[args.role](node, args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the contract: a message on stderr, a non-zero exit
        print(f"stream_iceoryx2.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
