"""The symbol-table workload shared by symbol_client.py and symbol_engine.py.

Request schema (one row per symbol of a code-analysis tool):
    id utf8, fqn utf8, kind uint8, file_id uint16, start_line uint32, start_col uint16,
    end_line uint32, end_col uint16
Response schema (agreed with the Rust engine):
    group utf8 ("file_id" or "kind"), key uint32, count uint64, min_start_line uint32,
    max_end_line uint32
    -- one row per distinct file_id ascending, then one per distinct kind ascending.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SYMBOL_SCHEMA = pa.schema(
    [
        ("id", pa.utf8()),
        ("fqn", pa.utf8()),
        ("kind", pa.uint8()),
        ("file_id", pa.uint16()),
        ("start_line", pa.uint32()),
        ("start_col", pa.uint16()),
        ("end_line", pa.uint32()),
        ("end_col", pa.uint16()),
    ]
)

RESPONSE_SCHEMA = pa.schema(
    [
        ("group", pa.utf8()),
        ("key", pa.uint32()),
        ("count", pa.uint64()),
        ("min_start_line", pa.uint32()),
        ("max_end_line", pa.uint32()),
    ]
)


def make_symbols(rows: int = 100_000, seed: int = 42, files: int = 1000, kinds: int = 12) -> pa.Table:
    """A deterministic symbol table (same ``rows``/``seed`` → same table)."""
    rng = np.random.default_rng(seed)
    file_id = np.sort(rng.integers(0, files, rows)).astype(np.uint16)
    # n = position of the symbol inside its file
    starts = np.searchsorted(file_id, file_id, side="left")
    n = np.arange(rows) - starts
    kind = rng.integers(0, kinds, rows).astype(np.uint8)
    start_line = rng.integers(1, 5000, rows).astype(np.uint32)
    end_line = (start_line + rng.integers(0, 200, rows)).astype(np.uint32)
    start_col = rng.integers(0, 120, rows).astype(np.uint16)
    end_col = rng.integers(0, 120, rows).astype(np.uint16)
    module = rng.integers(0, 500, rows)
    klass = rng.integers(0, 50, rows)
    ids = [f"node_{f}_{i}" for f, i in zip(file_id.tolist(), n.tolist())]
    fqns = [f"pkg.module_{k}.Class_{m}.func_{i}" for k, m, i in zip(module.tolist(), klass.tolist(), n.tolist())]
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.utf8()),
            pa.array(fqns, pa.utf8()),
            pa.array(kind),
            pa.array(file_id),
            pa.array(start_line),
            pa.array(start_col),
            pa.array(end_line),
            pa.array(end_col),
        ],
        schema=SYMBOL_SCHEMA,
    )


def summarize(table: pa.Table) -> pa.Table:
    """The engine's computation, with pyarrow's group_by."""
    parts = []
    for group in ("file_id", "kind"):
        agg = (
            table.group_by(group)
            .aggregate([(group, "count"), ("start_line", "min"), ("end_line", "max")])
            .sort_by(group)
        )
        parts.append(
            pa.table(
                {
                    "group": pa.array([group] * agg.num_rows, pa.utf8()),
                    "key": pc.cast(agg[group], pa.uint32()),
                    "count": pc.cast(agg[f"{group}_count"], pa.uint64()),
                    "min_start_line": pc.cast(agg["start_line_min"], pa.uint32()),
                    "max_end_line": pc.cast(agg["end_line_max"], pa.uint32()),
                },
                schema=RESPONSE_SCHEMA,
            )
        )
    return pa.concat_tables(parts).combine_chunks()


def expected_summary(table: pa.Table) -> pa.Table:
    """The same result computed independently (numpy reductions), to check an engine against."""
    start = table["start_line"].to_numpy()
    end = table["end_line"].to_numpy()
    cols = {name: [] for name in RESPONSE_SCHEMA.names}
    for group in ("file_id", "kind"):
        keys = table[group].to_numpy()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        uniq, first = np.unique(sorted_keys, return_index=True)
        counts = np.diff(np.append(first, len(sorted_keys)))
        cols["group"] += [group] * len(uniq)
        cols["key"] += uniq.tolist()
        cols["count"] += counts.tolist()
        cols["min_start_line"] += np.minimum.reduceat(start[order], first).tolist() if len(first) else []
        cols["max_end_line"] += np.maximum.reduceat(end[order], first).tolist() if len(first) else []
    return pa.table(cols, schema=RESPONSE_SCHEMA)
