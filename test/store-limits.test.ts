// The table store's limits (docs/PROTOCOL.md §15.6) on an embedded store (serveStore), small
// enough to reach: entries, holds, connections, a client that does not read, idleness.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { tableFromArrays } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { openStore } from '../src/store/client.js';
import { serveStore } from '../src/store/server.js';
import { FrameFlags, FrameKind } from '../src/transport/frame.js';
import type { ReceivedTable } from '../src/transport/received.js';
import { RawPeer, resources, uniqueAddress, waitFor, waitForNoLeaks } from './helpers.js';

const small = () => tableFromArrays({ x: Float64Array.from([1, 2, 3]) });

async function rejects(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (e: unknown) => e instanceof ArrowShmError && e.code === code);
}

test('max_entries and max_holds refuse with ERR_RESOURCE_LIMIT; releasing makes room', async () => {
  const before = resources();
  const address = uniqueAddress('store-limits');
  const server = serveStore(address, { limits: { maxEntries: 2, maxHolds: 2 } });
  const store = await openStore(address);
  try {
    await store.put('a', small());
    await store.put('b', small());
    await rejects(store.put('c', small()), 'ERR_RESOURCE_LIMIT');
    await store.put('b', small(), { replace: true }); // a replace is no new name
    const held = [await store.get('a'), await store.get('b')];
    await rejects(store.get('a'), 'ERR_RESOURCE_LIMIT');
    held[0]!.close();
    await waitFor(() => server.stats().heldBytes < server.stats().bytes, 'the RELEASE reached the store');
    (await store.get('a')).close();
    held[1]!.close();
    await waitFor(() => server.stats().heldBytes === 0, 'every hold released');
  } finally {
    store.close();
    server.close();
  }
  await waitForNoLeaks(before, 'entries and holds');
});

test('max_connections: the next connection is refused while the others are busy', async () => {
  const address = uniqueAddress('store-conns');
  const server = serveStore(address, { maxConnections: 2 });
  const a = await openStore(address);
  const b = await openStore(address);
  try {
    await rejects(openStore(address), 'ERR_RESOURCE_LIMIT');
    await a.put('still', small());
    (await b.get('still')).close();
  } finally {
    a.close();
    b.close();
    server.close();
  }
});

test('a client that does not read its socket is closed past max_queued_frames; others go on', async () => {
  const before = resources();
  const address = uniqueAddress('store-queue');
  const server = serveStore(address, { limits: { maxQueuedFrames: 8, maxWatches: 16 } });
  const store = await openStore(address);
  const raw = await RawPeer.connect(address, false);
  try {
    raw.send({ kind: FrameKind.Hello, metadata: { min_version: '1', max_version: '1', capabilities: 'store', implementation: 'raw-test', pid: String(process.pid) } });
    assert.equal((await raw.receive()).frame.kind, FrameKind.Welcome);
    for (let i = 0; i < 16; i++) raw.send({ kind: FrameKind.Store, flags: FrameFlags.REQUEST, metadata: { op: 'watch' } });
    await waitFor(() => server.connections === 2, 'both connected');
    // Never read by the raw client: its socket buffer fills, then the store's queue for it.
    let closed = false;
    for (let i = 0; i < 2000 && !closed; i++) {
      await store.put(`n${i % 4}`, small(), { replace: true });
      closed = server.connections === 1;
    }
    assert.ok(closed, 'the non-reading client was closed');
    await store.put('after', small());
    assert.ok((await store.list()).some((e) => e.name === 'after'));
  } finally {
    raw.close();
    store.close();
    server.close();
  }
  await waitForNoLeaks(before, 'queue');
});

test('idle connections are closed after idleTimeoutMs; one that holds a table is not', async () => {
  const address = uniqueAddress('store-idle');
  const server = serveStore(address, { idleTimeoutMs: 200 });
  const idle = await openStore(address);
  const holding = await openStore(address);
  try {
    await holding.put('t', small());
    const held = await holding.get('t');
    await waitFor(() => idle.closed, 'the idle client was closed', 5000);
    assert.equal(holding.closed, false);
    held.close();
  } finally {
    idle.close();
    holding.close();
    server.close();
  }
});

test('random puts, replaces, gets, deletes and evictions keep exactly one fd per kept version', async () => {
  const before = resources();
  const address = uniqueAddress('store-random');
  const server = serveStore(address, { memory: 32 * 1024 });
  const a = await openStore(address);
  const b = await openStore(address);
  const memfds = () => readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:');
    } catch {
      return false;
    }
  }).length;
  let seed = 7;
  const random = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0), (seed >>> 16) % n); // the high bits: an LCG's low ones cycle
  const held: ReceivedTable[] = [];
  try {
    for (let i = 0; i < 400; i++) {
      const client = random(2) ? a : b;
      const name = `n${random(12)}`;
      const op = random(5);
      const outcome = op <= 1
        ? client.put(name, tableFromArrays({ x: Float64Array.from({ length: 64 + random(1024) }, (_, j) => j) }), { replace: op === 1 })
        : op === 2
          ? client.get(name).then((m) => (random(2) ? held.push(m) : m.close()))
          : op === 3
            ? client.delete(name)
            : Promise.resolve(held.splice(random(held.length + 1), 1)[0]?.close());
      await outcome.catch((e: unknown) => assert.ok(e instanceof ArrowShmError && ['ERR_EXISTS', 'ERR_NOT_FOUND', 'ERR_RESOURCE_LIMIT'].includes(e.code), String(e)));
    }
    for (const m of held.splice(0)) m.close();
    await waitFor(() => server.stats().heldBytes === 0, 'every hold released');
    assert.equal(memfds(), server.stats().entries, 'one fd per current version, none for dropped ones');
    assert.ok(server.stats().bytes <= 32 * 1024);
    assert.ok(server.stats().evictions > 0, 'the budget made the store evict');
  } finally {
    a.close();
    b.close();
    server.close();
  }
  await waitForNoLeaks(before, 'random operations');
});
