"""Writes one IPC stream per layout kind pyarrow supports (views, list views, run-end encoded,
sparse and dense unions, nulls, nested dictionaries, ...) into the folder given, for the
schema-fixed count checks of docs/PROTOCOL.md §14.1 (test/ipc-limits.test.ts)."""
import sys, pyarrow as pa, pyarrow.ipc as ipc
out = sys.argv[1]
n = 5
cols = {
  'sv': pa.array(['a', None, 'a much longer string than twelve bytes', 'd', 'e'], pa.string_view()),
  'bv': pa.array([b'x', b'y' * 40, None, b'', b'z'], pa.binary_view()),
  'lv': pa.array([[1, 2], None, [], [3], [4, 5, 6]], pa.list_view(pa.int32())),
  'llv': pa.array([[1], None, [], [3], [4]], pa.large_list_view(pa.int64())),
  'ree': pa.RunEndEncodedArray.from_arrays(pa.array([2, 5], pa.int32()), pa.array(['p', 'q'])),
  'su': pa.UnionArray.from_sparse(pa.array([0, 1, 0, 1, 0], pa.int8()), [pa.array([1, 2, 3, 4, 5]), pa.array(['a', 'b', 'c', 'd', 'e'])]),
  'du': pa.UnionArray.from_dense(pa.array([0, 1, 0, 1, 0], pa.int8()), pa.array([0, 0, 1, 1, 2], pa.int32()), [pa.array([1, 2, 3]), pa.array(['a', 'b'])]),
  'nul': pa.nulls(n),
  'dict_list': pa.array([['x'], ['y', 'x'], None, [], ['y']], pa.list_(pa.dictionary(pa.int32(), pa.string()))),
  'struct_views': pa.array([{'s': 'a', 'l': [1]}] * n, pa.struct([('s', pa.string_view()), ('l', pa.list_view(pa.int8()))])),
  'fsl': pa.array([[1, 2]] * n, pa.list_(pa.int16(), 2)),
  'map': pa.array([[('k', 1)]] * n, pa.map_(pa.string(), pa.int32())),
}
for name, col in cols.items():
    t = pa.table({name: col})
    with ipc.new_stream(f'{out}/{name}.stream', t.schema) as w:
        w.write_table(t)
        w.write_table(t)
t = pa.table(cols)
with ipc.new_stream(f'{out}/all.stream', t.schema) as w:
    w.write_table(t)
