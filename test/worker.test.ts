import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { listen } from '../src/transport/listener.js';
import { checksumSymbolTable, generateSymbolTable } from '../src/cli/symbols.js';
import { resources, uniqueAddress, waitForNoLeaks } from './helpers.js';
import { StreamWriter } from '../src/stream/producer.js';

const workerScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'worker-peer.js');

test('worker_threads: a worker receives a table and a stream from its parent thread, in place', async () => {
  const before = resources();
  const address = uniqueAddress('worker');
  const listener = listen(address);
  const worker = new Worker(workerScript, { workerData: { address } });
  const report = new Promise<{ rows: number; checksum: number; inPlace: boolean; streamRows: number; streamInPlace: boolean }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  const channel = await listener.accept();
  const table = generateSymbolTable(20_000);
  await channel.send(table);
  const stream = await StreamWriter.open(channel, table.schema);
  for (let i = 0; i < 10; i++) await stream.write(table.slice(i * 2000, (i + 1) * 2000));
  await stream.close();
  const seen = await report;
  assert.deepEqual(seen, { rows: 20_000, checksum: checksumSymbolTable(table), inPlace: true, streamRows: 20_000, streamInPlace: true });
  await new Promise((resolve) => worker.once('exit', resolve));
  channel.close();
  listener.close();
  await waitForNoLeaks(before, 'fds and mappings');
});
