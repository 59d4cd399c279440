// A Node service runs a table store and publishes named tables; Python workers get them by name.
// Every worker maps the same pages: one physical copy however many workers read a table.
//
//   PYTHON=python3 node producer.mjs      (a Python with `pip install ./peers/python`)
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeVector, Table, Utf8, vectorFromArray } from 'apache-arrow';
import { openStore, serveStore } from 'arrow-shm';

// The store, embedded in this process (`arrow-shm store --socket PATH` runs the same as a command).
const address = `@arrow-shm-store-example-${process.pid}`;
const server = serveStore(address, { memory: 256 * 1024 * 1024 });
const store = await openStore(address);

/** A day's trades: `rows` rows over three symbols. @param {number} day @param {number} rows */
function trades(day, rows) {
  const symbols = ['AAPL', 'GOOG', 'MSFT'];
  return new Table({
    sym: vectorFromArray(Array.from({ length: rows }, (_, i) => symbols[i % 3]), new Utf8()),
    price: makeVector(Float64Array.from({ length: rows }, (_, i) => 100 + day + (i % 97))),
    qty: makeVector(BigInt64Array.from({ length: rows }, (_, i) => BigInt(1 + (i % 10)))),
  });
}

// Workers start first and wait for their table (get with a timeout waits for the put).
const names = ['trades/2026-12-03', 'trades/2026-12-04'];
const workers = names.map((name) =>
  spawn(process.env.PYTHON ?? 'python3', [fileURLToPath(new URL('worker.py', import.meta.url)), address, name], { stdio: 'inherit' }),
);
const exited = workers.map((w) => new Promise((resolve) => w.once('exit', resolve)));

for (const [day, name] of names.entries()) {
  const put = await store.put(name, trades(day, 50_000), { metadata: { source: 'producer.mjs' } });
  console.log(`node: put ${name} version ${put.version}, ${put.rows} rows, ${put.bytes} bytes`);
}

const codes = await Promise.all(exited);
const stats = await store.stats();
console.log(`node: the store holds ${stats.entries} tables, ${stats.bytes} bytes (budget ${stats.memory}); none held now that the workers are done: ${stats.heldBytes === 0}`);
store.close();
server.close();
if (codes.some((c) => c !== 0)) {
  console.error(`a worker failed: exit codes ${codes.join(', ')}`);
  process.exitCode = 1;
}
