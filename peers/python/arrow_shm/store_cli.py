"""The table store commands of the CLI (docs/CLI.md, Table store): put, get, ls, rm, with the
TypeScript CLI's flags and output (src/cli/store.ts). This peer has no store server: run
``arrow-shm store --socket PATH`` (Node) for that."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from ._cli_common import timeout_of
from .message import ReceivedTable
from .store import StoreClient, open_store

COMMANDS = ("put", "get", "ls", "rm")
_STORE = "the store's socket path or @name"


class Parts(NamedTuple):
    """What the store commands share with the rest of the CLI (cli.py)."""

    print_summary: Callable[[ReceivedTable, int], Any]
    output: Callable[[Optional[str], int], Any]  # --out: .write(message, index)
    load: Callable[[str], bytes]
    check_files: Callable[[List[str]], None]  # a missing FILE is a usage error
    meta: Callable[[argparse.Namespace], Dict[str, str]]


def add_parsers(sub: Any, positive_int: Callable[[str], int]) -> None:
    p = sub.add_parser("put", help="put FILE (Arrow IPC stream or file, - for stdin) into a store under NAME")
    p.add_argument("--store", required=True, help=_STORE)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--replace", action="store_true", help="make a new version if NAME exists")
    p.add_argument("--timeout-ms", type=positive_int, help="give up connecting after N ms")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    g = sub.add_parser("get", help="get NAME from a store; write it as an IPC stream file and/or print a summary")
    g.add_argument("--store", required=True, help=_STORE)
    g.add_argument("--out")
    g.add_argument("--print", action="store_true")
    g.add_argument("--timeout-ms", type=positive_int, help="wait up to N ms for NAME to be put")
    g.add_argument("name", metavar="NAME")
    ls = sub.add_parser("ls", help="list a store: one line per name (name, bytes, rows, age)")
    ls.add_argument("--store", required=True, help=_STORE)
    ls.add_argument("--prefix", default="")
    ls.add_argument("--timeout-ms", type=positive_int, help="give up connecting after N ms")
    rm = sub.add_parser("rm", help="delete NAME from a store (readers keep what they have)")
    rm.add_argument("--store", required=True, help=_STORE)
    rm.add_argument("--timeout-ms", type=positive_int, help="give up connecting after N ms")
    rm.add_argument("name", metavar="NAME")


def age(created_ms: int, now_ms: Optional[float] = None) -> str:
    """12s, 5m, 3h, 2d: as the TypeScript CLI rounds them."""
    now = time.time() * 1000 if now_ms is None else now_ms
    s = max(0, _round((now - created_ms) / 1000))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{_round(s / 60)}m"
    return f"{_round(s / 3600)}h" if s < 172800 else f"{_round(s / 86400)}d"


def _round(x: float) -> int:
    """JavaScript's Math.round (halves up; Python's round() goes to even)."""
    return math.floor(x + 0.5)


def run(args: argparse.Namespace, parts: Parts) -> int:
    # Checked before connecting: a bad FILE or --out fails without touching the store.
    data = None
    if args.command == "put":
        parts.check_files([args.file])
        data = parts.load(args.file)
    output = parts.output(args.out, 1) if args.command == "get" and args.out else None
    with open_store(args.store, timeout=timeout_of(args)) as store:
        if args.command == "put":
            put = store.put(args.name, data, metadata=parts.meta(args), replace=args.replace)
            sys.stdout.write(f"{args.name}\tversion {put.version}\t{put.bytes} bytes\t{put.rows} rows\n")
        elif args.command == "get":
            _get(store, args, parts, output)
        elif args.command == "ls":
            lines = [f"{e.name}\t{e.bytes}\t{e.rows}\t{age(e.created_ms)}\n" for e in store.list(args.prefix)]
            sys.stdout.write("".join(lines))
        else:
            store.delete(args.name)
    sys.stdout.flush()
    return 0


def _get(store: StoreClient, args: argparse.Namespace, parts: Parts, output: Any) -> None:
    with store.get(args.name, timeout_ms=args.timeout_ms) as message:
        if output is not None:
            output.write(message, 0)
        if args.print or output is None:
            error = parts.print_summary(message, 0)
            if error is not None:
                sys.stderr.write(f"arrow-shm: {error.code}: {error.message}\n")
