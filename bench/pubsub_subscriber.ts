// One subscriber of the publish/subscribe rows of `npm run bench:stream`, forked by bench/stream.ts.
// It reads `batches` batches in place, then reports to its parent and waits: the parent reads its
// /proc/<pid>/smaps_rollup while the ring is still mapped, then sends "finish" (read the end, exit).
import { subscribe } from '../src/stream/pubsub.js';
import { now } from './methods.js';

export interface SubscriberReport {
  /** When the last batch was read (ms, CLOCK_MONOTONIC). */
  last_ms: number;
  /** Send → read of every batch, ms. */
  latencies_ms: number[];
  checksum: number;
}

async function main(job: { address: string; batches: number }): Promise<void> {
  const reader = await subscribe(job.address, { timeoutMs: 10_000 });
  const latencies: number[] = [];
  let checksum = 0;
  let last = 0;
  while (latencies.length < job.batches) {
    const next = await reader.read();
    if (!next) throw new Error(`the publication ended after ${latencies.length} of ${job.batches} batches`);
    const t = now();
    latencies.push(t - (next.batch.getChildAt(0)!.get(0) as number));
    // One byte of every 4 KiB page: the payload is really mapped and faulted in, so Rss shows it.
    const payload = next.batch.getChildAt(1)!.get(0) as Uint8Array;
    for (let i = 0; i < payload.length; i += 4096) checksum += payload[i]!;
    next.release();
    last = t;
  }
  const finish = new Promise((r) => process.once('message', r));
  process.send!({ last_ms: last, latencies_ms: latencies, checksum } satisfies SubscriberReport);
  await finish;
  if ((await reader.read()) !== null) throw new Error('more batches than announced');
  reader.close();
  process.disconnect();
}

await main(JSON.parse(process.argv[2]!) as { address: string; batches: number });
