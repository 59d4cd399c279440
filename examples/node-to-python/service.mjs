// A Node service hands a table of trades to a Python worker and prints the worker's answer.
// The table goes through shared memory: the worker maps it and reads it in place
// (worker.py says what pandas, Polars and DuckDB then copy and what they do not).
//
//   PYTHON=python3 node service.mjs      (a Python with `pip install ./peers/python pandas polars duckdb`)
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeVector, Table, Utf8, vectorFromArray } from 'apache-arrow';
import { listen } from 'arrow-shm';

// 30,000 trades over three symbols.
const rows = 30_000;
const symbols = ['AAPL', 'GOOG', 'MSFT'];
const trades = new Table({
  sym: vectorFromArray(Array.from({ length: rows }, (_, i) => symbols[i % 3]), new Utf8()),
  price: makeVector(Float64Array.from({ length: rows }, (_, i) => 100 + (i % 97))),
  qty: makeVector(BigInt64Array.from({ length: rows }, (_, i) => BigInt(1 + (i % 10)))),
});

// An abstract socket (@name): no file to clean up; the worker connects to it.
const address = `@arrow-shm-example-${process.pid}`;
const listener = listen(address);
const worker = spawn(process.env.PYTHON ?? 'python3', [fileURLToPath(new URL('worker.py', import.meta.url)), address], { stdio: 'inherit' });
worker.once('exit', (code) => {
  if (code === 0) return;
  console.error(`the Python worker exited with status ${code}`);
  listener.close(); // ends accept() below if the worker never connected
});

const channel = await listener.accept();
try {
  // A request: the worker answers with a table (its DuckDB aggregate), through shared memory too.
  const answer = await channel.request(trades, { metadata: { name: 'trades' } });
  try {
    for (const row of answer.table) console.log(`node: ${row.sym} notional ${row.notional}`);
  } finally {
    answer.close();
  }
} finally {
  channel.close(); // the worker's serve() loop ends: it exits
  listener.close();
}
