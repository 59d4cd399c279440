"""pyarrow as referee: for each (original, candidate) pair of IPC stream files given as arguments,
check that pyarrow reads the candidate as a table equal to the original. Prints one line per pair
and exits non-zero if any differs."""
import sys

import pyarrow as pa
import pyarrow.ipc as ipc

failed = 0
args = sys.argv[1:]
for original, candidate in zip(args[::2], args[1::2]):
    want = ipc.open_stream(pa.memory_map(original)).read_all()
    got = ipc.open_stream(pa.memory_map(candidate)).read_all()
    ok = got.equals(want)
    failed += not ok
    print(("equal " if ok else "DIFFERENT ") + original, flush=True)
sys.exit(1 if failed else 0)
