"""Writes IPC streams of types that arrow-js 21 cannot decode (list_view, run_end_encoded) into
the directory given as argument, one file per type."""
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc

out = sys.argv[1]
tables = {
    "list_view": pa.table({"x": pa.array([[1], [2, 3], None], pa.list_view(pa.int32()))}),
    "run_end_encoded": pa.table({"x": pc.run_end_encode(pa.array([1, 1, 2, 2, 2, 3]))}),
}
for name, table in tables.items():
    with pa.ipc.new_stream(os.path.join(out, name + ".arrows"), table.schema) as writer:
        writer.write_table(table)
    print(name)
