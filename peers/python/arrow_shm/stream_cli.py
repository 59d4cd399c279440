"""The stream commands of the CLI (docs/CLI.md, Streams): send --stream, recv --stream, pub, sub."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from typing import Dict, List, Optional

import pyarrow as pa

from ._cli_common import check_out, open_channel, replace_when_complete
from ._cli_common import listening as _listening
from ._cli_common import timeout_of as _timeout
from .errors import ERR_INVALID_ARGUMENT, ERR_SYSCALL, ArrowShmError
from .ipc import EOS, decode_table
from .stream import DEFAULT_CAPACITY, StreamReader, publish, subscribe

def _batches(payloads: List[bytes]) -> tuple[pa.Schema, List[pa.RecordBatch]]:
    """Every batch of every FILE, in order; the FILEs must share one schema."""
    schema: Optional[pa.Schema] = None
    batches: List[pa.RecordBatch] = []
    for i, data in enumerate(payloads):
        table = decode_table(pa.py_buffer(data))
        if schema is not None and not table.schema.equals(schema):
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"FILE {i + 1} has another schema than the files before it: one stream has one schema")
        schema = schema or table.schema
        batches.extend(table.to_batches())
    assert schema is not None
    return schema, batches


def send_stream(args: argparse.Namespace, meta: Dict[str, str], payloads: List[bytes]) -> int:
    schema, batches = _batches(payloads)
    timeout = _timeout(args)
    with open_channel(args.socket, listen_first=args.listen, timeout=timeout) as channel:
        writer = channel.open_stream(
            schema, capacity_bytes=args.ring_bytes or DEFAULT_CAPACITY, metadata=meta, write_timeout=timeout
        )
        try:
            for batch in batches:
                writer.write(batch)
            writer.close(timeout=timeout)
        except BaseException:
            writer.abort()
            raise
    return 0


def recv_stream(args: argparse.Namespace) -> int:
    timeout = _timeout(args)
    if args.out:
        check_out(args.out, False)
    with open_channel(args.socket, listen_first=not args.connect, timeout=timeout) as channel:
        _drain(channel.accept_stream(timeout=timeout), args)
    return 0


def pub(args: argparse.Namespace, meta: Dict[str, str], payloads: List[bytes]) -> int:
    schema, batches = _batches(payloads)
    timeout = _timeout(args)
    publication = publish(
        args.socket, schema, capacity_bytes=args.ring_bytes or DEFAULT_CAPACITY, metadata=meta, write_timeout=timeout
    )
    _listening(args.socket)
    try:
        publication.wait_for_subscribers(args.subscribers, timeout=timeout)
        for batch in batches:
            publication.write(batch)
        publication.close(timeout=timeout)
    finally:
        publication.abort()
    return 0


def sub(args: argparse.Namespace) -> int:
    timeout = _timeout(args)
    if args.out:
        check_out(args.out, False)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            reader = subscribe(args.socket, timeout=timeout)
            break
        except ArrowShmError as e:
            # The publication may not be up yet: ENOENT (no socket file) or ECONNREFUSED.
            not_yet = e.code == ERR_SYSCALL and e.errno in (2, 111)
            if not not_yet or (deadline is not None and time.monotonic() >= deadline):
                raise
            time.sleep(0.02)
    _drain(reader, args)
    return 0


def _drain(reader: StreamReader, args: argparse.Namespace) -> None:
    """Read a whole stream; ``--out`` gets the prologue, every record's messages, end-of-stream."""
    timeout = _timeout(args)
    rows = batches = 0
    with ExitStack() as stack:
        out = stack.enter_context(replace_when_complete(args.out)) if args.out else None
        with reader:
            if out is not None:
                out.write(reader.prologue)
            while True:
                item = reader.read(timeout=timeout)
                if item is None:
                    break
                with item:
                    if out is not None:
                        out.write(item.data)
                    rows += item.batch.num_rows
                    batches += 1
            if out is not None:
                out.write(EOS)
    if args.print:
        lines = [f"== stream: {batches} batches =="]
        if reader.metadata:
            lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in reader.metadata.items()))
        lines.append("schema: " + ", ".join(f"{f.name}: {f.type}" for f in reader.schema))
        lines.append(f"rows: {rows}, columns: {len(reader.schema)}, batches: {batches}")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
