// The table store (docs/PROTOCOL.md §15) against a real `arrow-shm store` process: gold files
// round trip, one physical copy for many readers, eviction, crashes, hostile clients, no leaks.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fstatSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { tableFromArrays } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { Segment } from '../src/shm/segment.js';
import { openStore, type StoreClient } from '../src/store/client.js';
import { FrameFlags, FrameKind } from '../src/transport/frame.js';
import { PreparedTable } from '../src/ipc/prepared.js';
import { cliScript, goldDir, goldStreams, RawPeer, resources, runCli, startListening, uniqueAddress, waitForNoLeaks } from './helpers.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const MiB = 1024 * 1024;

/** An `arrow-shm store` process; `stop()` ends it with SIGTERM and checks it exited cleanly. */
async function startStore(args: string[] = []) {
  const address = uniqueAddress('store');
  const { child, done } = await startListening(process.execPath, [cliScript, 'store', '--socket', address, ...args]);
  return {
    address,
    child,
    done,
    async stop() {
      child.kill('SIGTERM');
      const { code, stderr } = await done;
      assert.equal(code, 0, stderr);
    },
  };
}

/** A table of one Float64 column: `rows` × 8 bytes of body. */
function floats(rows: number, seed = 1) {
  return tableFromArrays({ x: Float64Array.from({ length: rows }, (_, i) => i * seed) });
}

/** The inodes of the memfds the store process holds open. */
function storeMemfds(pid: number): Set<number> {
  const inodes = new Set<number>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('/memfd:')) inodes.add(statSync(`/proc/${pid}/fd/${fd}`).ino);
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

async function rejects(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (e: unknown) => e instanceof ArrowShmError && e.code === code);
}

/** A raw store client: the handshake with capability `store`, then frames by hand. */
async function rawStoreClient(address: string, capabilities = 'store'): Promise<RawPeer> {
  const peer = await RawPeer.connect(address, false);
  peer.send({ kind: FrameKind.Hello, metadata: { min_version: '1', max_version: '1', capabilities, implementation: 'raw-test', pid: String(process.pid) } });
  return peer;
}

async function rawAnswer(peer: RawPeer, request: bigint) {
  for (;;) {
    const got = await peer.receive();
    if (got.frame.correlationId === request) return got;
  }
}

test('every gold file put into a store process comes back byte for byte, and lists with its rows', async () => {
  const before = resources();
  const server = await startStore();
  const store = await openStore(server.address);
  try {
    const files = goldStreams();
    assert.ok(files.length > 20);
    for (const file of files) {
      const bytes = new Uint8Array(readFileSync(file));
      const name = path.relative(goldDir, file);
      const put = await store.put(name, bytes, { metadata: { file: path.basename(file) } });
      assert.ok(put.version > 0 && put.bytes >= bytes.length);
      const got = await store.get(name);
      try {
        assert.deepEqual(Buffer.from(got.bytes), Buffer.from(bytes), name);
        assert.equal(got.metadata.file, path.basename(file));
        assert.equal(got.metadata['arrow-shm.name'], name);
        assert.equal(got.metadata['arrow-shm.version'], String(put.version));
      } finally {
        got.close();
      }
    }
    const listed = await store.list();
    assert.deepEqual(listed.map((e) => e.name), files.map((f) => path.relative(goldDir, f)).sort());
    const table = floats(1000);
    await store.put('floats', table);
    const [entry] = await store.list('floats');
    assert.equal(entry!.rows, 1000);
    assert.equal(entry!.holds, 0);
    assert.deepEqual(entry!.metadata, {});
  } finally {
    store.close();
    await server.stop();
  }
  await waitForNoLeaks(before, 'gold round trip');
});

test('8 reader processes of one name map one physical copy (Pss)', async () => {
  const server = await startStore();
  const store = await openStore(server.address);
  const size = 32 * MiB;
  const put = await store.put('big', floats(size / 8));
  store.close();
  const readers = Array.from({ length: 8 }, () => spawn(process.execPath, [path.join(fixtures, 'store-reader.js'), server.address, 'big'], { stdio: ['pipe', 'pipe', 'inherit'] }));
  try {
    const lines = readers.map((r) => createInterface({ input: r.stdout! })[Symbol.asyncIterator]());
    for (const l of lines) assert.match((await l.next()).value as string, /^mapped /);
    for (const r of readers) r.stdin!.write('measure\n');
    const memory = await Promise.all(lines.map(async (l) => JSON.parse((await l.next()).value as string) as { rss_kib: number; pss_kib: number }));
    const copyKib = put.bytes / 1024;
    const totalPss = memory.reduce((n, m) => n + m.pss_kib, 0);
    for (const m of memory) {
      assert.ok(m.rss_kib >= copyKib * 0.95, `each reader maps the whole table: Rss ${m.rss_kib} KiB of ${copyKib}`);
      assert.ok(m.pss_kib <= (copyKib / 8) * 1.25, `a reader's proportional share is about 1/8: Pss ${m.pss_kib} KiB of ${copyKib}`);
    }
    assert.ok(totalPss <= copyKib * 1.1, `one physical copy for 8 readers: Pss summed ${totalPss} KiB, table ${copyKib} KiB`);
  } finally {
    for (const r of readers) r.stdin!.end();
    await Promise.all(readers.map((r) => new Promise((resolve) => (r.exitCode !== null ? resolve(null) : r.on('exit', resolve)))));
    await server.stop();
  }
  for (const r of readers) assert.equal(r.exitCode, 0);
});

test('eviction under a budget: unheld names least recently used first, never a held one', async () => {
  const before = resources();
  const server = await startStore(['--memory', String(Math.floor(4.5 * MiB))]);
  const store = await openStore(server.address);
  const watch = store.watch();
  await watch.ready;
  const events: string[] = [];
  const collecting = (async () => {
    for await (const e of watch) events.push(`${e.event} ${e.name}`);
  })();
  // Each put's memfd becomes the store's (§15.4): its inode names the version in /proc/<store>/fd.
  const inode = new Map<string, number>();
  const put = async (name: string) => {
    const prepared = PreparedTable.from(floats(MiB / 8));
    try {
      inode.set(name, fstatSync(prepared.segment.fd).ino);
      await store.put(name, prepared);
    } finally {
      prepared.close();
    }
  };
  try {
    for (const name of ['a', 'b', 'c', 'd']) await put(name);
    const heldA = await store.get('a'); // held: never evicted
    (await store.get('b')).close(); // used lately, released
    await put('e'); // LRU unheld: c
    assert.deepEqual((await store.list()).map((e) => e.name), ['a', 'b', 'd', 'e']);
    await put('f'); // then d
    assert.deepEqual((await store.list()).map((e) => e.name), ['a', 'b', 'e', 'f']);
    const held = [heldA, await store.get('b'), await store.get('e'), await store.get('f')];
    await rejects(store.put('g', floats(MiB / 8)), 'ERR_RESOURCE_LIMIT'); // everything is held
    const stats = await store.stats();
    assert.equal(stats.entries, 4);
    assert.equal(stats.heldBytes, stats.bytes);
    assert.equal(stats.evictions, 2);
    // A held version stays readable after a delete, and accounted until released.
    await store.delete('a');
    assert.equal(heldA.table.getChild('x')!.get(3), 3);
    assert.equal((await store.stats()).bytes, stats.bytes);
    for (const h of held) h.close();
    await put('g');
    assert.deepEqual((await store.list()).map((e) => e.name), ['b', 'e', 'f', 'g']);
    // What is open, not how many: an answer's memfd (the list above) may still be closing.
    const open = storeMemfds(server.child.pid!);
    for (const name of ['b', 'e', 'f', 'g']) assert.ok(open.has(inode.get(name)!), `the store keeps version ${name}'s memfd`);
    for (const name of ['a', 'c', 'd']) assert.ok(!open.has(inode.get(name)!), `the store closed dropped version ${name}'s memfd`);
    watch.close();
    await collecting;
    assert.deepEqual(events.slice(0, 8), ['put a', 'put b', 'put c', 'put d', 'evict c', 'put e', 'evict d', 'put f']);
    assert.deepEqual(events.slice(8), ['delete a', 'put g']);
  } finally {
    store.close();
    await server.stop();
  }
  await waitForNoLeaks(before, 'eviction');
});

test('--evict none refuses a put past the budget instead of evicting', async () => {
  const server = await startStore(['--memory', String(Math.floor(2.5 * MiB)), '--evict', 'none']);
  const store = await openStore(server.address);
  try {
    await store.put('a', floats(MiB / 8));
    await store.put('b', floats(MiB / 8));
    await rejects(store.put('c', floats(MiB / 8)), 'ERR_RESOURCE_LIMIT');
    await rejects(store.put('huge', floats(MiB)), 'ERR_RESOURCE_LIMIT'); // larger than the budget
    assert.deepEqual((await store.list()).map((e) => e.name), ['a', 'b']);
    await store.delete('a');
    await store.put('c', floats(MiB / 8));
    assert.equal((await store.stats()).evictions, 0);
  } finally {
    store.close();
    await server.stop();
  }
});

test('versions: a name is immutable, replace makes a new version, old readers keep theirs; gets wait for a put', async () => {
  const server = await startStore();
  const store = await openStore(server.address);
  const other = await openStore(server.address);
  try {
    const waiting = other.get('v', { timeoutMs: 5000 });
    const v1 = await store.put('v', floats(10, 1));
    const first = await waiting;
    assert.equal(first.metadata['arrow-shm.version'], String(v1.version));
    await rejects(store.put('v', floats(10, 2)), 'ERR_EXISTS');
    const v2 = await store.put('v', floats(10, 2), { replace: true, metadata: { k: 'two' } });
    assert.ok(v2.version > v1.version);
    const second = await store.get('v');
    assert.equal(second.metadata.k, 'two');
    assert.equal(first.table.getChild('x')!.get(5), 5);
    assert.equal(second.table.getChild('x')!.get(5), 10);
    first.close();
    second.close();
    await rejects(store.get('missing'), 'ERR_NOT_FOUND');
    await rejects(store.get('missing', { timeoutMs: 100 }), 'ERR_TIMEOUT');
    await rejects(store.delete('missing'), 'ERR_NOT_FOUND');
  } finally {
    store.close();
    other.close();
    await server.stop();
  }
});

test('a reader keeps reading after the store is SIGKILLed; pending requests fail with ERR_PEER_CLOSED', async () => {
  const before = resources();
  const server = await startStore();
  const store = await openStore(server.address);
  await store.put('t', floats(100_000, 3));
  const message = await store.get('t');
  const waiting = rejects(store.get('never', { timeoutMs: 10_000 }), 'ERR_PEER_CLOSED');
  server.child.kill('SIGKILL');
  await server.done;
  await waiting;
  const x = message.table.getChild('x')!;
  assert.equal(x.length, 100_000);
  assert.equal(x.get(99_999), 99_999 * 3);
  message.close();
  store.close();
  await waitForNoLeaks(before, 'store killed');
});

test('a put that dies half-way leaves nothing visible', async () => {
  const server = await startStore();
  const store = await openStore(server.address);
  try {
    const child = spawn(process.execPath, [path.join(fixtures, 'store-dying-put.js'), server.address], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    const signal = await new Promise((resolve) => child.on('exit', (_code, s) => resolve(s)));
    assert.equal(signal, 'SIGKILL');
    assert.match(out, /^writing open/);
    // A segment sent before it was sealed (a writer still at work) is refused, and so nothing shows.
    const raw = await rawStoreClient(server.address);
    await raw.receive();
    const segment = Segment.create(4096);
    const id = raw.send({ kind: FrameKind.Table, flags: FrameFlags.REQUEST, ipcLength: 8n, fdCount: 1, metadata: { 'arrow-shm.name': 'half' } }, [segment.fd]);
    const answer = await rawAnswer(raw, id);
    assert.equal(answer.frame.kind, FrameKind.Error);
    assert.equal(answer.frame.metadata.code, 'ERR_SEGMENT_UNSEALED');
    segment.close();
    raw.close();
    assert.deepEqual(await store.list(), []);
    assert.equal((await store.stats()).bytes, 0);
  } finally {
    store.close();
    await server.stop();
  }
});

test('hostile clients are refused without harming another client', async () => {
  const before = resources();
  const server = await startStore();
  const good = await openStore(server.address);
  const hostile: StoreClient = await openStore(server.address);
  try {
    await good.put('good', floats(1000, 2));
    const held = await good.get('good');

    // A HELLO without the capability `store`: refused, closed.
    const plain = await rawStoreClient(server.address, '');
    const refusal = await plain.receive();
    assert.equal(refusal.frame.kind, FrameKind.Error);
    assert.equal(refusal.frame.metadata.code, 'ERR_PROTOCOL');
    assert.ok(await plain.closedByPeer());
    plain.close();

    // Bad names, huge metadata, reserved keys, unknown ops: message-level refusals.
    const raw = await rawStoreClient(server.address);
    assert.equal((await raw.receive()).frame.kind, FrameKind.Welcome);
    for (const [metadata, code] of [
      [{ op: 'get', name: '' }, 'ERR_INVALID_ARGUMENT'],
      [{ op: 'get', name: 'a b' }, 'ERR_INVALID_ARGUMENT'],
      [{ op: 'get', name: 'x'.repeat(257) }, 'ERR_INVALID_ARGUMENT'],
      [{ op: 'get', name: '../etc' }, 'ERR_NOT_FOUND'], // a legal name that does not exist
      [{ op: 'get', name: 'good', timeout_ms: '1e3' }, 'ERR_INVALID_ARGUMENT'],
      [{ op: 'unwatch', watch: '99' }, 'ERR_NOT_FOUND'],
      [{ op: 'drop-everything' }, 'ERR_INVALID_ARGUMENT'],
    ] as const) {
      const id = raw.send({ kind: FrameKind.Store, flags: FrameFlags.REQUEST, metadata });
      const answer = await rawAnswer(raw, id);
      assert.equal(answer.frame.kind, FrameKind.Error, JSON.stringify(metadata));
      assert.equal(answer.frame.metadata.code, code, JSON.stringify(metadata));
    }
    await rejects(hostile.put('meta', floats(10), { metadata: { big: 'x'.repeat(20_000) } }), 'ERR_RESOURCE_LIMIT');
    const manyKeys = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, 'v']));
    await rejects(hostile.put('meta', floats(10), { metadata: manyKeys }), 'ERR_RESOURCE_LIMIT');
    const prepared = PreparedTable.from(floats(10));
    const id = raw.send({ kind: FrameKind.Table, flags: FrameFlags.REQUEST, ipcLength: BigInt(prepared.ipcLength), fdCount: 1, metadata: { 'arrow-shm.name': 'x', 'arrow-shm.evil': '1' } }, [prepared.segment.fd]);
    assert.equal((await rawAnswer(raw, id)).frame.metadata.code, 'ERR_INVALID_ARGUMENT');
    const bounds = raw.send({ kind: FrameKind.Table, flags: FrameFlags.REQUEST, ipcLength: BigInt(prepared.ipcLength + 4096), fdCount: 1, metadata: { 'arrow-shm.name': 'x' } }, [prepared.segment.fd]);
    assert.equal((await rawAnswer(raw, bounds)).frame.metadata.code, 'ERR_SEGMENT_BOUNDS');
    prepared.close();

    // Floods: waits past max_waits, watches past max_watches.
    const waits = Array.from({ length: 64 }, (_, i) => hostile.get(`later-${i}`, { timeoutMs: 60_000 }));
    for (const w of waits) w.catch(() => {});
    await rejects(hostile.get('one-too-many', { timeoutMs: 60_000 }), 'ERR_RESOURCE_LIMIT');
    const watches = Array.from({ length: 16 }, () => hostile.watch('x'));
    await Promise.all(watches.map((w) => w.ready));
    await assert.rejects(hostile.watch('x').ready, (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_RESOURCE_LIMIT');

    // Garbage on the wire: that connection is closed, nobody else's.
    raw.sendBytes(new Uint8Array(64).fill(0xab));
    assert.ok(await raw.closedByPeer());
    raw.close();
    hostile.close();
    for (const w of waits) await rejects(w, 'ERR_PEER_CLOSED');

    // The good client never noticed.
    assert.equal(held.table.getChild('x')!.get(999), 1998);
    const again = await good.get('good');
    assert.deepEqual(Buffer.from(again.bytes), Buffer.from(held.bytes));
    again.close();
    held.close();
    assert.deepEqual((await good.list()).map((e) => [e.name, e.holds]), [['good', 0]]);
  } finally {
    good.close();
    hostile.close();
    await server.stop();
  }
  await waitForNoLeaks(before, 'hostile clients');
});

test('CLI: put, ls, get --out/--print, rm against `arrow-shm store`', async () => {
  const server = await startStore();
  const out = path.join(process.env.TMPDIR ?? '/tmp', `store-cli-${process.pid}.arrows`);
  try {
    const [file] = goldStreams();
    const put = await runCli(['put', '--store', server.address, 'gold/one', file!, '--meta', 'who=cli']);
    assert.equal(put.code, 0, put.stderr);
    assert.match(put.stdout, /^gold\/one\tversion 1\t\d+ bytes\t\d+ rows\n$/);
    const ls = await runCli(['ls', '--store', server.address]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /^gold\/one\t\d+\t\d+\t\d+s\n$/);
    const get = await runCli(['get', '--store', server.address, 'gold/one', '--out', out, '--print']);
    assert.equal(get.code, 0, get.stderr);
    assert.match(get.stdout, /who=cli/);
    assert.deepEqual(readFileSync(out), readFileSync(file!));
    const again = await runCli(['put', '--store', server.address, 'gold/one', file!]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /ERR_EXISTS/);
    assert.equal((await runCli(['rm', '--store', server.address, 'gold/one'])).code, 0);
    const missing = await runCli(['get', '--store', server.address, 'gold/one']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /ERR_NOT_FOUND/);
  } finally {
    await server.stop();
    rmSync(out, { force: true });
  }
});
