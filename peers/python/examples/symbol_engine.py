"""A Python symbol engine: listens, answers each REQUEST table with the per-file / per-kind summary.

    python peers/python/examples/symbol_engine.py --socket /tmp/engine.sock [--connections N]

Prints ``arrow-shm: listening on ADDR`` on stderr when ready (like the CLI).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from symbols import SYMBOL_SCHEMA, summarize  # noqa: E402

from arrow_shm import ArrowShmError, ReceivedTable, listen  # noqa: E402


def handle(request: ReceivedTable):
    table = request.table
    if not table.schema.equals(SYMBOL_SCHEMA):
        raise ArrowShmError("ERR_INVALID_ARGUMENT", f"unexpected request schema: {table.schema}")
    return summarize(table), {"name": "symbol-summary"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--connections", type=int, default=0, help="exit after N connections (0: forever)")
    args = parser.parse_args()
    try:
        with listen(args.socket) as lst:
            sys.stderr.write(f"arrow-shm: listening on {args.socket}\n")
            sys.stderr.flush()
            served = 0
            while args.connections == 0 or served < args.connections:
                try:
                    channel = lst.accept()
                except ArrowShmError as e:  # a peer that failed the handshake: keep listening
                    sys.stderr.write(f"arrow-shm: {e.code}: {e.message}\n")
                    continue
                with channel:
                    channel.serve(handle)
                served += 1
    except ArrowShmError as e:
        sys.stderr.write(f"arrow-shm: {e.code}: {e.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
