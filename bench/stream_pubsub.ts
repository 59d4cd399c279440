// The publish/subscribe rows of `npm run bench:stream`: one Node publication (this process) read
// by k forked subscriber processes (bench/pubsub_subscriber.ts): throughput, and what each process
// holds in memory according to /proc while every subscriber still maps the ring.
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Binary, Field, Float64, RecordBatch, Schema, Struct, makeData } from 'apache-arrow';
import { publish } from '../src/stream/pubsub.js';
import { now } from './methods.js';
import type { SubscriberReport } from './pubsub_subscriber.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const schema = new Schema([new Field('sent_ms', new Float64(), false), new Field('payload', new Binary(), false)]);

/** One row: the send time, and `bytes` of payload in one binary value. */
function batchOf(payload: Uint8Array): RecordBatch {
  const sent = makeData({ type: new Float64(), length: 1, nullCount: 0, data: Float64Array.of(now()) });
  const bin = makeData({ type: new Binary(), length: 1, nullCount: 0, valueOffsets: Int32Array.of(0, payload.byteLength), data: payload });
  return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: 1, nullCount: 0, children: [sent, bin] }));
}

/** One process's memory (KiB): /proc/<pid>/smaps_rollup, and its mappings of the ring from /proc/<pid>/smaps. */
export interface Memory {
  rss_kib: number;
  pss_kib: number;
  private_kib: number;
  shared_clean_kib: number;
  shared_dirty_kib: number;
  ring_rss_kib: number;
  ring_pss_kib: number;
}

export interface PubSubResult {
  subscribers: number;
  bytes: number;
  batches: number;
  ring_bytes: number;
  /** Publisher's first write to the last subscriber's read of the last batch. */
  batches_per_s: number;
  /** Publisher's first write to its last write returning (it waits for room when subscribers lag). */
  publisher_write_ms: number;
  /** Send → read of every batch by every subscriber, back to back (queueing included). */
  latency_median_us: number;
  latency_p99_us: number;
  publisher: Memory;
  /** Each subscriber just after it subscribed, before the first batch. */
  subscribers_before: Memory[];
  /** Each subscriber after it read every batch, ring still mapped, before it exits. */
  subscribers_after: Memory[];
}

const RING_BYTES = 64 * 1024 * 1024;
export const mib = (kib: number) => (kib / 1024).toFixed(1);

function memoryOf(pid: number): Memory {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? NaN);
  const ring = ringMemory(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
  return {
    rss_kib: field('Rss'),
    pss_kib: field('Pss'),
    private_kib: field('Private_Clean') + field('Private_Dirty'),
    shared_clean_kib: field('Shared_Clean'),
    shared_dirty_kib: field('Shared_Dirty'),
    ring_rss_kib: ring.rss,
    ring_pss_kib: ring.pss,
  };
}

/** Rss and Pss of the mappings of the ring's memfd (header and data), summed. */
function ringMemory(smaps: string): { rss: number; pss: number } {
  let inRing = false;
  const sum = { rss: 0, pss: 0 };
  for (const line of smaps.split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inRing = line.includes('memfd:arrow-shm-ring');
    else if (inRing && line.startsWith('Rss:')) sum.rss += Number(line.split(/\s+/)[1]);
    else if (inRing && line.startsWith('Pss:')) sum.pss += Number(line.split(/\s+/)[1]);
  }
  return sum;
}

export function meanMemory(all: Memory[]): Memory {
  const mean = (f: keyof Memory) => all.reduce((n, m) => n + m[f], 0) / all.length;
  return {
    rss_kib: mean('rss_kib'),
    pss_kib: mean('pss_kib'),
    private_kib: mean('private_kib'),
    shared_clean_kib: mean('shared_clean_kib'),
    shared_dirty_kib: mean('shared_dirty_kib'),
    ring_rss_kib: mean('ring_rss_kib'),
    ring_pss_kib: mean('ring_pss_kib'),
  };
}

/** The report a subscriber sends once it read every batch; rejects if it exits first. */
function reportOf(child: ChildProcess): Promise<SubscriberReport> {
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m as SubscriberReport));
    child.once('exit', (code, signal) => reject(new Error(`a subscriber exited with ${signal ?? code} before reading everything`)));
  });
}

export async function runPubSub(k: number, batches: number, bytes: number): Promise<PubSubResult> {
  const address = `@arrow-shm-bench-pubsub-${process.pid}-${k}`;
  const publication = publish(address, schema, { capacityBytes: RING_BYTES });
  const script = path.join(here, 'pubsub_subscriber.js');
  const children = Array.from({ length: k }, () => fork(script, [JSON.stringify({ address, batches })]));
  const reports = children.map(reportOf);
  try {
    await publication.waitForSubscribers(k, { timeoutMs: 20_000 });
    const before = children.map((c) => memoryOf(c.pid!));
    const payload = new Uint8Array(bytes).fill(7);
    const first = now();
    for (let i = 0; i < batches; i++) await publication.write(batchOf(payload));
    const written = now();
    const done = await Promise.all(reports);
    // Everyone read everything and still maps the ring: this is the memory the point is about.
    const after = children.map((c) => memoryOf(c.pid!));
    const publisher = memoryOf(process.pid);
    const exits = children.map((c) => new Promise((r) => c.once('exit', r)));
    for (const c of children) c.send('finish');
    await publication.close({ timeoutMs: 20_000 });
    await Promise.all(exits);
    const latencies = done.flatMap((d) => d.latencies_ms.map((ms) => ms * 1000)).sort((a, b) => a - b);
    const last = Math.max(...done.map((d) => d.last_ms));
    return {
      subscribers: k,
      bytes,
      batches,
      ring_bytes: RING_BYTES,
      batches_per_s: batches / ((last - first) / 1000),
      publisher_write_ms: written - first,
      latency_median_us: latencies[Math.floor(latencies.length / 2)]!,
      latency_p99_us: latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))]!,
      publisher,
      subscribers_before: before,
      subscribers_after: after,
    };
  } catch (e) {
    publication.abort();
    for (const c of children) c.kill();
    throw e;
  }
}

/** The publish/subscribe table: throughput and, per process, what /proc says it holds in memory. */
export function pubSubLines(pubsub: PubSubResult[]): string[] {
  if (!pubsub.length) return [];
  const first = pubsub[0]!;
  const lines = [
    '',
    `### Publish/subscribe: one publication, k subscriber processes, ${first.batches} batches of ${first.bytes / (1 << 20)} MiB through a ${first.ring_bytes / (1 << 20)} MiB ring`,
    '',
    'The publisher is the benchmark process (Node, `publish()`); each subscriber is a forked Node process (`subscribe()`, `bench/pubsub_subscriber.ts`)',
    'that reads every batch in place (its timestamp, and one byte of every 4 KiB page of the payload, so the pages are really mapped).',
    "Memory is each process's `/proc/<pid>/smaps_rollup` after every subscriber read every batch, ring still mapped; 'ring' is the part of it",
    "in the ring's memfd mappings (`/proc/<pid>/smaps`). Subscriber figures are means over the k subscribers, MiB.",
    '',
    '| k | batches/s (first write → last subscriber done) | subscriber Rss | of which ring | Pss | of which ring | private (clean + dirty) | private just after subscribing | shared (clean + dirty) | publisher Rss / Pss / ring Pss | ring Pss, all processes |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of pubsub) {
    const s = meanMemory(r.subscribers_after);
    const b = meanMemory(r.subscribers_before);
    const p = r.publisher;
    const ringTotal = p.ring_pss_kib + r.subscribers_after.reduce((n, m) => n + m.ring_pss_kib, 0);
    lines.push(
      `| ${r.subscribers} | ${r.batches_per_s.toFixed(0)} (${((r.batches_per_s * r.bytes) / 1e9).toFixed(2)} GB/s each) | ${mib(s.rss_kib)} | ${mib(s.ring_rss_kib)} | ${mib(s.pss_kib)} | ${mib(s.ring_pss_kib)} | ${mib(s.private_kib)} | ${mib(b.private_kib)} | ${mib(s.shared_clean_kib + s.shared_dirty_kib)} | ${mib(p.rss_kib)} / ${mib(p.pss_kib)} / ${mib(p.ring_pss_kib)} | ${mib(ringTotal)} |`,
    );
  }
  // Private growth, read off this run: what a subscriber kept of the bytes it read.
  const growth = Math.max(...pubsub.map((r) => meanMemory(r.subscribers_after).private_kib - meanMemory(r.subscribers_before).private_kib));
  lines.push(
    '',
    "Each batch is in memory once whatever k: Rss counts the whole ring in every subscriber, Pss shares it out between the k + 1 processes that",
    `map it, the ring's Pss summed over all of them stays the ring, and a subscriber's private memory (its Node heap and code) grew by at most`,
    `${mib(growth)} MiB (mean per k) while it read ${(first.batches * first.bytes) / (1 << 20)} MiB.`,
  );
  return lines;
}
