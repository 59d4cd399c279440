"""Writes IPC streams of types that arrow-js 21 cannot decode (list_view, large_list_view,
run_end_encoded) into the directory given as argument, one file per type, then (with --more) types
the other peers' libraries are checked on (views, float16, decimal32, dense union)."""
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc

out = sys.argv[1]
tables = {
    "list_view": pa.table({"x": pa.array([[1], [2, 3], None], pa.list_view(pa.int32()))}),
    "run_end_encoded": pa.table({"x": pc.run_end_encode(pa.array([1, 1, 2, 2, 2, 3]))}),
}
if "--more" in sys.argv:
    tables.update({
        "large_list_view": pa.table({"x": pa.array([[1], [2, 3], None], pa.large_list_view(pa.int32()))}),
        "string_view": pa.table({"x": pa.array(["a", "b" * 40, None], pa.string_view())}),
        "binary_view": pa.table({"x": pa.array([b"a", b"b" * 40, None], pa.binary_view())}),
        "float16": pa.table({"x": pa.array([1.5, None], pa.float16())}),
        "decimal32": pa.table({"x": pa.array([1, 2], pa.decimal32(5, 2))}),
        "dense_union": pa.table({"x": pa.UnionArray.from_dense(pa.array([0, 1], pa.int8()), pa.array([0, 0], pa.int32()), [pa.array([1]), pa.array(["x"])])}),
    })
for name, table in tables.items():
    with pa.ipc.new_stream(os.path.join(out, name + ".arrows"), table.schema) as writer:
        writer.write_table(table)
    print(name)
