"""Run by test_fuzz.py in a child process (so a crash could never take pytest down).

Sends every file given on the command line over one arrow-shm connection (sender thread → receiver)
and prints one JSON line per file: {"file", "outcome"} where outcome is "ok:<rows>" or an error code.
Also prints fd/mapping counts before and after.
"""

import gc
import json
import os
import sys
import threading


from arrow_shm import ArrowShmError, connect, listen


def counts():
    """Open fds and memfd mappings (not every mapping: thread stacks come and go with the spare
    segment pool's threads and pyarrow's)."""
    gc.collect()
    with open("/proc/self/maps") as f:
        return len(os.listdir("/proc/self/fd")), sum(1 for line in f if "/memfd:" in line)


def run_round(path, files, datas, emit):
    sender_results = {}
    with listen(path) as lst:

        def sender():
            with connect(path, timeout=10) as ch:
                for i, d in enumerate(datas):
                    try:
                        ch.send(d, timeout=10)
                        sender_results[i] = "acked"
                    except ArrowShmError as e:
                        sender_results[i] = e.code

        t = threading.Thread(target=sender)
        t.start()
        with lst.accept(timeout=10) as ch:
            for f in files:
                try:
                    with ch.receive(timeout=10) as m:
                        try:
                            outcome = f"ok:{m.table.num_rows}"
                        except ArrowShmError as e:
                            outcome = e.code
                except ArrowShmError as e:
                    outcome = e.code
                if emit:
                    print(json.dumps({"file": os.path.basename(f), "outcome": outcome}), flush=True)
        t.join(20)
    return sender_results


def main():
    path, files = sys.argv[1], sys.argv[2:]
    datas = [open(f, "rb").read() for f in files]
    run_round(path, files, datas, emit=False)  # warm-up: lazy pyarrow/thread allocations
    before = counts()
    sender_results = run_round(path, files, datas, emit=True)
    after = counts()
    print(json.dumps({"sender": sender_results, "before": before, "after": after}), flush=True)


if __name__ == "__main__":
    main()
