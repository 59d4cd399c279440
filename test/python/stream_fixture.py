"""Writes one IPC stream that exercises what a stream record carries (docs/PROTOCOL.md §12.2): 40
batches of varying size whose dictionary grows (written as deltas), is then replaced by a new one
and grows again; nested lists and structs; and a few batches big enough (~400 KB) to travel in
their own segment through a 64 KiB ring. Usage: stream_fixture.py OUT"""
import sys

import pyarrow as pa
import pyarrow.ipc as ipc

schema = pa.schema([
    ("seq", pa.int64()),
    ("label", pa.dictionary(pa.int32(), pa.utf8())),
    ("values", pa.list_(pa.float64())),
    ("point", pa.struct([("x", pa.int32()), ("tag", pa.utf8())])),
])


def batch(index: int) -> pa.RecordBatch:
    rows = 50_000 if index % 13 == 5 else 1 + (index * 37) % 200
    words = [f"w{index}-{k}" for k in range(index % 20 + 1)] if index < 20 else [f"v{k}" for k in range(index - 19)]
    seq = list(range(index * 100_000, index * 100_000 + rows))
    labels = pa.DictionaryArray.from_arrays(pa.array([i % len(words) for i in range(rows)], pa.int32()), pa.array(words))
    values = pa.array([[float(s), s / 3.0][: s % 3] if s % 7 else None for s in seq], pa.list_(pa.float64()))
    point = pa.array([{"x": s % 1000, "tag": None if s % 5 == 0 else f"t{s % 11}"} for s in seq], schema.field("point").type)
    return pa.record_batch([pa.array(seq, pa.int64()), labels, values, point], schema=schema)


# Each batch's dictionary extends the previous one (deltas) until batch 20 starts a new one.
grown: list[str] = []
options = ipc.IpcWriteOptions(emit_dictionary_deltas=True)
with ipc.new_stream(sys.argv[1], schema, options=options) as writer:
    for i in range(40):
        b = batch(i)
        new_words = b.column(1).dictionary.to_pylist()
        if i == 20:
            grown = []
        grown += [w for w in new_words if w not in grown]
        dictionary = pa.array(grown)
        indices = pa.array([grown.index(new_words[k]) for k in b.column(1).indices.to_pylist()], pa.int32())
        label = pa.DictionaryArray.from_arrays(indices, dictionary)
        writer.write_batch(pa.record_batch([b.column(0), label, b.column(2), b.column(3)], schema=schema))
