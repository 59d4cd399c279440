"""The Python worker of service.mjs: takes the trades table in pandas, Polars and DuckDB.

    python worker.py ADDRESS       (service.mjs starts it)

How much each step copies (the first three are checked below, on the pinned versions):
- arrow_shm: nothing. `message.table` is a pyarrow Table whose buffers lie in the shared mapping.
- pandas, `to_pandas(types_mapper=pd.ArrowDtype)`: nothing, the columns stay Arrow arrays. A plain
  `to_pandas()` copies numbers into NumPy blocks (`split_blocks=True` avoids that) and, with
  pandas 3's `str` dtype, rebuilds string offsets as 64-bit (the characters stay in place).
- Polars, `pl.from_arrow`: numeric columns in place; strings are converted into Polars' own
  string views (a new 16-byte view per value, short strings stored inside it).
- DuckDB, `duckdb.sql(... FROM trades)`: scans the Arrow table where it is (DuckDB's Arrow scan,
  not measured here); its result is a new table.
"""

import sys

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa

from arrow_shm import ReceivedTable, connect


def in_place(message: ReceivedTable, arrays: list) -> bool:
    """Whether every buffer of these Arrow arrays lies inside the message's shared mapping."""
    start = message.ipc_bytes.address
    end = start + message.ipc_bytes.size
    buffers = [b for a in arrays for chunk in getattr(a, "chunks", [a]) for b in chunk.buffers() if b is not None]
    return all(start <= b.address < end for b in buffers)


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def handle(message: ReceivedTable):
    trades = message.table  # pyarrow, decoded over the mapping
    print(f"python: {trades.num_rows} rows from {message.metadata['name']}, in place: {yes(in_place(message, trades.columns))}")

    df = trades.to_pandas(types_mapper=pd.ArrowDtype)
    mean = df.groupby("sym")["price"].mean()
    cols = [pa.array(df[c].array) for c in df.columns]  # the Arrow data behind each pandas column
    print(f"pandas: mean AAPL price {mean['AAPL']:.1f}, in place: {yes(in_place(message, cols))}")

    frame = pl.from_arrow(trades)
    big = frame.filter(pl.col("qty") >= 5).height
    numbers = [pa.array(frame[c].to_numpy()) for c in ("price", "qty")]  # views of Polars' memory
    print(f"polars: {big} trades of 5 or more, numbers in place: {yes(in_place(message, numbers))}")

    result = duckdb.sql("SELECT sym, sum(price * qty) AS notional FROM trades GROUP BY sym ORDER BY sym").to_arrow_table()
    print(f"duckdb: {result.num_rows} symbols")
    return result, {"name": "notional"}


with connect(sys.argv[1], timeout=10) as channel:
    channel.serve(handle)  # until the service closes its channel
