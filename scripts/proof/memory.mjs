// Sections 3 and 4 of docs/PROOF.md: one sender (this process, Node API) hands a table of
// BYTES bytes to a receiver process (Node or Python driver) and reads the receiver's memory
// counters from /proc/PID/status and /proc/PID/smaps_rollup before and after it received and
// read the whole table, and after it closed it. The sender keeps its own read-only mapping of
// the segment, every page touched, so both processes map the same pages.
// A random 32-byte marker is written into one batch; the receiver reports where it finds it.
//   node scripts/proof/memory.mjs node|python BYTES OUT.json
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, fstatSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RecordBatch, Schema, Field, Int32, Float64, Struct, Table, makeData } from 'apache-arrow';
import { listen, PreparedTable } from '../../dist/src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const [receiver, bytesArg, outFile] = process.argv.slice(2);
const totalBytes = Number(bytesArg);
if (!['node', 'python'].includes(receiver) || !Number.isSafeInteger(totalBytes) || !outFile) {
  console.error('usage: memory.mjs node|python BYTES OUT.json');
  process.exit(2);
}

// ---- /proc readers
const KB = 1024;
function readCounters(pid) {
  const out = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM):\s+(\d+) kB/.exec(line);
    if (m) out[`status.${m[1]}`] = Number(m[2]) * KB;
  }
  for (const line of readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').split('\n')) {
    const m = /^(Rss|Pss|Pss_Anon|Pss_File|Pss_Shmem|Shared_Clean|Shared_Dirty|Private_Clean|Private_Dirty|Anonymous):\s+(\d+) kB/.exec(line);
    if (m) out[`smaps.${m[1]}`] = Number(m[2]) * KB;
  }
  out.shared = out['smaps.Shared_Clean'] + out['smaps.Shared_Dirty'];
  out.private = out['smaps.Private_Clean'] + out['smaps.Private_Dirty'];
  return out;
}
function memfdMaps(pid) {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter((l) => l.includes('/memfd:'))
    .map((l) => {
      const [range, perms, offset, dev, inode, ...name] = l.trim().split(/\s+/);
      const [lo, hi] = range.split('-');
      return { start: `0x${lo}`, end: `0x${hi}`, size: Number(BigInt(`0x${hi}`) - BigInt(`0x${lo}`)), perms, offset: Number.parseInt(offset, 16), inode: Number(inode), name: name.join(' ') };
    });
}

// ---- the table: int32 seq, float64 value, int32 group (16 bytes a row), 256 Ki rows a batch
const schema = new Schema([new Field('seq', new Int32(), false), new Field('value', new Float64(), false), new Field('group', new Int32(), false)]);
const rowsTotal = Math.floor(totalBytes / 16);
const perBatch = Math.min(rowsTotal, 1 << 18);
const nBatches = Math.ceil(rowsTotal / perBatch);
const marker = randomBytes(32);
const markerBatch = Math.floor(nBatches * 0.53);
const markerRow = Math.min(12345, perBatch - 8);
const base = { seq: new Int32Array(perBatch), value: new Float64Array(perBatch), group: new Int32Array(perBatch) };
for (let i = 0; i < perBatch; i++) {
  base.seq[i] = i;
  base.value[i] = i * 0.5;
  base.group[i] = i % 97;
}
const batches = [];
for (let b = 0; b < nBatches; b++) {
  const len = Math.min(perBatch, rowsTotal - b * perBatch);
  let seq = base.seq;
  if (b === markerBatch) {
    seq = base.seq.slice();
    new Uint8Array(seq.buffer).set(marker, markerRow * 4);
  }
  const children = [
    makeData({ type: schema.fields[0].type, length: len, data: seq.subarray(0, len) }),
    makeData({ type: schema.fields[1].type, length: len, data: base.value.subarray(0, len) }),
    makeData({ type: schema.fields[2].type, length: len, data: base.group.subarray(0, len) }),
  ];
  batches.push(new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: len, children })));
}
const table = new Table(schema, batches);

// ---- write it into a sealed segment, map it here too and touch every page
const prepared = PreparedTable.from(table);
const segSize = prepared.segment.size;
const senderInode = fstatSync(prepared.segment.fd).ino;
const senderMapping = prepared.segment.takeReadOnlyMapping();
const all = Buffer.from(senderMapping.buffer);
let touch = 0;
for (let i = 0; i < all.length; i += 4096) touch += all[i];
const markerOffset = all.indexOf(marker);
const markerUnique = markerOffset >= 0 && all.lastIndexOf(marker) === markerOffset;

// ---- the receiver
const address = `@arrow-shm-proof-${process.pid}`;
const listener = listen(address);
const driver = receiver === 'node'
  ? [process.execPath, ['--expose-gc', path.join(here, 'recv-node.mjs'), address]]
  : [path.join(root, '.build', 'venv', 'bin', 'python'), [path.join(here, 'recv_python.py'), address]];
const child = spawn(driver[0], driver[1], { stdio: ['pipe', 'pipe', 'inherit'] });
const lines = createInterface({ input: child.stdout });
const queue = [];
let waiter = null;
lines.on('line', (l) => {
  const msg = JSON.parse(l);
  if (waiter) { const w = waiter; waiter = null; w(msg); } else queue.push(msg);
});
const next = (stage) => new Promise((resolve, reject) => {
  const check = (msg) => (msg.stage === stage ? resolve(msg) : reject(new Error(`receiver: expected ${stage}, got ${JSON.stringify(msg)}`)));
  if (queue.length) check(queue.shift()); else waiter = check;
});
const timer = setTimeout(() => { console.error('memory.mjs: timed out'); child.kill('SIGKILL'); process.exit(1); }, 300_000);
const settle = () => new Promise((r) => setTimeout(r, 300));

const channel = await listener.accept();
const ready = await next('ready');
await settle();
const before = readCounters(child.pid);
const t0 = performance.now();
await channel.send(prepared, { metadata: { marker: marker.toString('hex'), marker_batch: String(markerBatch), marker_row: String(markerRow) } });
const received = await next('received');
const receiveMs = performance.now() - t0;
await settle();
const after = readCounters(child.pid);
const receiverMaps = memfdMaps(child.pid);
const senderAfter = readCounters(process.pid);
const senderMaps = memfdMaps(process.pid).filter((m) => m.inode === senderInode);
child.stdin.write('close\n');
const closed = await next('closed');
await settle();
const afterClose = readCounters(child.pid);
const receiverMapsAfterClose = memfdMaps(child.pid).filter((m) => m.inode === senderInode);
child.stdin.write('exit\n');
await new Promise((r) => child.on('close', r));
clearTimeout(timer);
channel.close();
listener.close();
senderMapping.release();
prepared.close();

const result = {
  receiver,
  receiverPid: child.pid,
  tableBytes: segSize,
  rows: rowsTotal,
  batches: nBatches,
  receiveAndReadMs: Math.round(receiveMs),
  sender: { inode: senderInode, segmentSize: segSize, markerOffset, markerUnique, marker: marker.toString('hex'), markerBatch, markerRow, maps: senderMaps, counters: senderAfter, touched: touch >= 0 },
  counters: { before, after, afterClose },
  receiverReport: { ready, received, closed },
  receiverMaps,
  receiverMapsAfterClose,
};
writeFileSync(outFile, JSON.stringify(result, null, 2));
console.log(`memory.mjs: ${receiver} receiver, ${segSize} bytes: private +${((after.private - before.private) / 2 ** 20).toFixed(1)} MiB, RssAnon +${((after['status.RssAnon'] - before['status.RssAnon']) / 2 ** 20).toFixed(1)} MiB, shared +${((after.shared - before.shared) / 2 ** 20).toFixed(1)} MiB`);
