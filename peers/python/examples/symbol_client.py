"""Send a 100,000-row symbol table to an engine as a REQUEST; check the RESPONSE table.

    python peers/python/examples/symbol_client.py --socket /tmp/engine.sock [--rows N] [--seed S]

The engine can be examples/symbol_engine.py or the Rust peer (`arrow-shm-rs engine --socket P`).
Exit status 0 when the response equals an independent numpy computation, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from symbols import RESPONSE_SCHEMA, expected_summary, make_symbols  # noqa: E402

from arrow_shm import ArrowShmError, connect  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout-ms", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=1, help="requests to send (timing)")
    args = parser.parse_args()
    timeout = args.timeout_ms / 1000
    symbols = make_symbols(args.rows, args.seed)
    expected = expected_summary(symbols)
    try:
        with connect(args.socket, timeout=timeout) as channel:
            for i in range(args.repeat):
                t0 = time.perf_counter()
                with channel.request(symbols, {"name": "symbols"}, timeout=timeout) as response:
                    table = response.table
                    elapsed = (time.perf_counter() - t0) * 1000
                    if not table.schema.equals(RESPONSE_SCHEMA):
                        print(f"FAIL: response schema {table.schema}", file=sys.stderr)
                        return 1
                    if not table.equals(expected):
                        print("FAIL: response differs from the expected summary", file=sys.stderr)
                        return 1
                print(
                    f"ok: request {i}: {symbols.num_rows} symbols -> {table.num_rows} summary rows "
                    f"in {elapsed:.2f} ms (engine {channel.peer_implementation})"
                )
    except ArrowShmError as e:
        print(f"arrow-shm: {e.code}: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
