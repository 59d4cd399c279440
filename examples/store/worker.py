"""A worker of producer.mjs: gets one named table from the store and reads it in place.

    python worker.py ADDRESS NAME       (producer.mjs starts it)

The table arrives as an fd of the store's sealed segment: the worker maps it read-only and pyarrow
decodes it where it lies. Closing the message tells the store the worker no longer holds it.
"""

import sys

import pyarrow.compute as pc

from arrow_shm import open_store

address, name = sys.argv[1], sys.argv[2]
store = open_store(address)
try:
    message = store.get(name, timeout_ms=10_000)  # waits until the producer has put it
    try:
        trades = message.table
        total = pc.sum(pc.multiply(trades["price"], pc.cast(trades["qty"], "float64"))).as_py()
        print(f"python: {name} version {message.metadata['arrow-shm.version']}: {trades.num_rows} rows, notional {total:,.0f}")
    finally:
        message.close()
finally:
    store.close()
