// Receiver driver for scripts/proof/memory.mjs (Node API). Prints one JSON line per stage on
// stdout: ready -> received (after reading every value of every column) -> closed.
//   node --expose-gc recv-node.mjs ADDRESS
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { connect } from '../../dist/src/index.js';

const address = process.argv[2];
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const input = createInterface({ input: process.stdin });
const commands = input[Symbol.asyncIterator]();
const command = async () => (await commands.next()).value;

const channel = await connect(address, { timeoutMs: 10_000 });
globalThis.gc?.();
say({ stage: 'ready', pid: process.pid });

const message = await channel.receive();
const t0 = performance.now();
const table = message.table;
const shared = message.sharedBuffer;
let values = 0;
let sum = 0;
let viewsOutside = 0;
let views = 0;
for (const batch of table.batches) {
  for (const child of batch.data.children) {
    const v = child.values;
    views++;
    if (v.buffer !== shared) viewsOutside++;
    for (let i = 0; i < v.length; i++) sum += v[i];
    values += v.length;
  }
}
const readMs = performance.now() - t0;
// the marker: row marker_row of column seq in batch marker_batch
const markerBatch = Number(message.metadata.marker_batch);
const markerRow = Number(message.metadata.marker_row);
const seq = table.batches[markerBatch].getChildAt(0).data[0].values;
const markerOffset = seq.byteOffset + markerRow * 4;
const found = Buffer.from(shared, markerOffset, 32).toString('hex');
const maps = readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:'));
say({
  stage: 'received',
  rows: table.numRows,
  batches: table.batches.length,
  values,
  sum,
  readMs: Math.round(readMs),
  views,
  viewsOutsideSharedBuffer: viewsOutside,
  sharedBufferBytes: shared.byteLength,
  markerSeqViewIsSharedBuffer: seq.buffer === shared,
  markerOffsetInMapping: markerOffset,
  markerFound: found,
  markerMatches: found === message.metadata.marker,
  memfdMaps: maps,
});

if ((await command()) !== 'close') process.exit(1);
message.close();
globalThis.gc?.();
say({ stage: 'closed', viewDetached: seq.length === 0 });
await command();
channel.close();
process.exit(0);
