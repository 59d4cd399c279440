"""Receives one table and prints, for each batch of its one binary column, the value's length and
its first and last byte, and whether the value lies inside the shared mapping (test/limits.test.ts)."""
import sys

import arrow_shm

with arrow_shm.listen(sys.argv[1]) as listener:
    print(f"arrow-shm: listening on {sys.argv[1]}", file=sys.stderr, flush=True)
    with listener.accept(timeout=60) as channel, channel.receive(timeout=120) as message:
        start, size = message.mapping_range()
        end = start + size
        for batch in message.table.to_batches():
            values = batch.column(0).buffers()[2]
            inside = start <= values.address and values.address + values.size <= end
            value = batch.column(0)[0].as_buffer()
            print(f"{value.size} {value[0]} {value[value.size - 1]} {'in-place' if inside else 'copied'}", flush=True)
