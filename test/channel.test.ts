import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { tableFromIPC } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { native } from '../src/native.js';
import { connect, type Channel } from '../src/transport/channel.js';
import { listen, type Listener } from '../src/transport/listener.js';
import { PreparedTable } from '../src/ipc/prepared.js';
import { FrameFlags, FrameKind, encodeFrame } from '../src/transport/frame.js';
import { Segment } from '../src/shm/segment.js';
import { generateSymbolTable, checksumSymbolTable } from '../src/cli/symbols.js';
import { fuzzFiles, goldStreams, leaksSince, memfdMappings, openFds, RawPeer, resources, sleep, uniqueAddress, waitFor } from './helpers.js';

async function pair(options: Parameters<typeof listen>[1] = {}): Promise<{ listener: Listener; server: Channel; client: Channel; address: string }> {
  const address = uniqueAddress('pair');
  const listener = listen(address, options);
  const [server, client] = await Promise.all([listener.accept(), connect(address, options)]);
  return { listener, server, client, address };
}

function sealedSegmentWith(bytes: Uint8Array): Segment {
  const s = Segment.create(bytes.length);
  s.write(bytes, 0);
  s.seal('sealed');
  return s;
}

const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

test('a table arrives zero-copy: its column buffers are views of the shared mapping', async () => {
  const { listener, server, client } = await pair();
  const table = generateSymbolTable(10_000);
  const [message] = await Promise.all([server.receive(), client.send(table, { metadata: { name: 'symbols' } })]);
  assert.equal(message.metadata.name, 'symbols');
  const received = message.table;
  assert.equal(received.numRows, 10_000);
  assert.equal(checksumSymbolTable(received), checksumSymbolTable(table));
  for (const batch of received.batches) {
    for (const child of batch.data.children) {
      assert.equal(child.values.buffer, message.sharedBuffer, `${child.type} values are inside the segment`);
      if (child.valueOffsets) assert.equal(child.valueOffsets.buffer, message.sharedBuffer);
    }
  }
  // After close every view is detached: reads give nothing, never freed memory.
  const kinds = received.batches[0]!.getChild('kind')!.data[0]!.values as Uint8Array;
  assert.ok(kinds.length > 0);
  message.close();
  assert.equal(kinds.length, 0);
  assert.equal(received.getChild('kind')!.get(5), undefined);
  assert.throws(() => message.table, code('ERR_CLOSED'));
  client.close();
  server.close();
  listener.close();
});

test('every gold stream passes through byte for byte, and decodes equal where arrow-js can', async () => {
  const { listener, server, client } = await pair();
  let decoded = 0;
  let unsupported = 0;
  for (const file of goldStreams()) {
    const bytes = new Uint8Array(readFileSync(file));
    const [message] = await Promise.all([server.receive(), client.send(bytes)]);
    assert.deepEqual(Buffer.from(message.bytes), Buffer.from(bytes), path.basename(file));
    let original;
    try {
      original = tableFromIPC(bytes);
    } catch {
      assert.throws(() => message.table, (e: unknown) => e instanceof ArrowShmError && /^ERR_IPC_/.test(e.code));
      unsupported++;
      message.close();
      continue;
    }
    const json = (t: typeof original) => JSON.stringify(t.toArray(), (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
    assert.equal(json(message.table), json(original), path.basename(file));
    decoded++;
    message.close();
  }
  assert.ok(decoded >= 15, `decoded ${decoded}`);
  console.log(`gold streams: ${decoded} decoded by arrow-js and equal, ${unsupported} passed through undecoded`);
  client.close();
  server.close();
  listener.close();
});

test('no fd or mapping leaks across 200 hand-offs', async () => {
  const { listener, server, client } = await pair();
  const table = generateSymbolTable(1000);
  await Promise.all([server.receive().then((m) => m.close()), client.send(table)]);
  await client.settled(); // its spare segment allocated: the pool holds one whenever it is idle
  const before = resources();
  for (let i = 0; i < 200; i++) {
    const [m] = await Promise.all([server.receive(), client.send(table)]);
    assert.equal(m.table.numRows, 1000);
    m.close();
  }
  await client.settled();
  assert.deepEqual(leaksSince(before), []);
  client.close();
  server.close();
  listener.close();
  await sleep(10);
});

test('a prepared table is sent to many peers with no further copy', async () => {
  const { listener, server, client } = await pair();
  const prepared = PreparedTable.from(generateSymbolTable(500));
  for (let i = 0; i < 3; i++) {
    const [m] = await Promise.all([server.receive(), client.send(prepared)]);
    assert.equal(m.table.numRows, 500);
    m.close();
  }
  prepared.close();
  client.close();
  server.close();
  listener.close();
});

test('request/response with correlation ids, concurrency, typed remote errors and timeouts', async () => {
  const { listener, server, client } = await pair();
  const served = (async () => {
    for await (const request of server) {
      if (request.metadata.op === 'fail') await request.respondError('ERR_INVALID_ARGUMENT', 'bad request table');
      else if (request.metadata.op === 'ignore') void 0;
      else await request.respond(request.table.slice(0, Number(request.metadata.n)), { metadata: { n: request.metadata.n! } });
      request.close();
    }
  })();
  const table = generateSymbolTable(100);
  const answers = await Promise.all([3, 1, 2].map((n) => client.request(table, { metadata: { op: 'head', n: String(n) } })));
  assert.deepEqual(answers.map((a) => a.table.numRows), [3, 1, 2]);
  assert.deepEqual(answers.map((a) => a.metadata.n), ['3', '1', '2']);
  answers.forEach((a) => a.close());
  await assert.rejects(client.request(table, { metadata: { op: 'fail' } }), (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_INVALID_ARGUMENT' && e.remote);
  await assert.rejects(client.request(table, { metadata: { op: 'ignore' }, timeoutMs: 50 }), code('ERR_TIMEOUT'));
  client.close();
  await served;
  server.close();
  listener.close();
});

test('hostile frames: each gets a typed ERROR, nothing leaks, the channel survives message-level errors', async () => {
  const address = uniqueAddress('hostile');
  const listener = listen(address, { maxMessageBytes: 1 << 20 });
  const accepted = listener.accept();
  const raw = await RawPeer.connect(address);
  const server = await accepted;
  const before = resources();
  const good = new Uint8Array(readFileSync(goldStreams()[0]!));

  const expectError = async (send: () => bigint, expected: string) => {
    const id = send();
    const { frame } = await raw.receive();
    assert.equal(frame.kind, FrameKind.Error, expected);
    assert.equal(frame.correlationId, id);
    assert.equal(frame.metadata.code, expected);
  };
  const table = (fd: number | null, ipcLength: bigint, extra: Partial<Parameters<typeof encodeFrame>[0]> = {}) => () =>
    raw.send({ kind: FrameKind.Table, ipcOffset: 0n, ipcLength, fdCount: fd === null ? 0 : 1, ...extra }, fd === null ? [] : [fd]);

  // unsealed memfd
  const unsealed = Segment.create(good.length);
  unsealed.write(good, 0);
  await expectError(table(unsealed.fd, BigInt(good.length)), 'ERR_SEGMENT_UNSEALED');
  // shrinkable: sealed against writes but not against shrinking
  const shrinkable = Segment.create(good.length);
  shrinkable.write(good, 0);
  native.addSeals(shrinkable.fd, native.constants.F_SEAL_WRITE);
  await expectError(table(shrinkable.fd, BigInt(good.length)), 'ERR_SEGMENT_UNSEALED');
  // not a memfd: an eventfd, /dev/zero, a directory
  const notAFile = native.eventfd();
  await expectError(table(notAFile, 8n), 'ERR_SEGMENT_INVALID');
  native.close(notAFile);
  const { openSync, closeSync } = await import('node:fs');
  for (const p of ['/dev/zero', '/tmp']) {
    const fd = openSync(p, 'r');
    await expectError(table(fd, 8n), 'ERR_SEGMENT_INVALID');
    closeSync(fd);
  }
  // a regular file on disk is not a memfd either
  const fileFd = openSync(goldStreams()[0]!, 'r');
  await expectError(table(fileFd, 8n), 'ERR_SEGMENT_INVALID');
  closeSync(fileFd);
  // header pointing outside the segment, overflowing, misaligned, empty
  const sealed = sealedSegmentWith(good);
  await expectError(table(sealed.fd, BigInt(good.length + 1)), 'ERR_SEGMENT_BOUNDS');
  await expectError(table(sealed.fd, 16n, { ipcOffset: 2n ** 64n - 8n }), 'ERR_SEGMENT_BOUNDS');
  await expectError(table(sealed.fd, 16n, { ipcOffset: 4n }), 'ERR_SEGMENT_BOUNDS');
  await expectError(table(sealed.fd, 0n), 'ERR_SEGMENT_BOUNDS');
  // missing fd
  await expectError(table(null, 8n), 'ERR_PROTOCOL');
  // larger than the receiver's limit
  const big = Segment.create(2 << 20);
  big.seal('sealed');
  await expectError(table(big.fd, BigInt(2 << 20)), 'ERR_TOO_LARGE');
  big.close();
  // garbage IPC in a properly sealed segment: every fuzz file
  for (const file of fuzzFiles()) {
    const bytes = new Uint8Array(readFileSync(file));
    if (bytes.length === 0) continue;
    const s = sealedSegmentWith(bytes);
    const id = raw.send({ kind: FrameKind.Table, ipcOffset: 0n, ipcLength: BigInt(bytes.length), fdCount: 1 }, [s.fd]);
    s.close();
    const { frame } = await raw.receive();
    if (frame.kind === FrameKind.Ack) {
      const m = await server.receive(); // structurally valid: decoding gives a table or a typed error
      try {
        m.table.toArray();
      } catch (e) {
        assert.ok(e instanceof ArrowShmError, `${path.basename(file)}: ${e}`);
      }
      m.close();
    } else {
      assert.equal(frame.kind, FrameKind.Error);
      assert.equal(frame.correlationId, id);
      assert.match(frame.metadata.code!, /^ERR_IPC_/);
    }
  }
  // after all that, a good message still goes through
  const id = raw.send({ kind: FrameKind.Table, ipcOffset: 0n, ipcLength: BigInt(good.length), fdCount: 1 }, [sealed.fd]);
  const ack = await raw.receive();
  assert.equal(ack.frame.kind, FrameKind.Ack);
  assert.equal(ack.frame.correlationId, id);
  const m = await server.receive();
  assert.deepEqual(Buffer.from(m.bytes), Buffer.from(good));
  m.close();
  for (const s of [unsealed, shrinkable, sealed]) s.close();
  assert.deepEqual(leaksSince(before), []);

  // a frame-level violation (fds on an ACK frame) is fatal: ERROR, then the connection closes
  const stray = Segment.create(8);
  raw.send({ kind: FrameKind.Ack, fdCount: 1 }, [stray.fd]);
  stray.close();
  const fatal = await raw.receive();
  assert.equal(fatal.frame.kind, FrameKind.Error);
  assert.equal(fatal.frame.metadata.code, 'ERR_PROTOCOL');
  assert.ok(await raw.closedByPeer());
  await assert.rejects(server.receive(), (e: unknown) => e instanceof ArrowShmError);
  raw.close();
  listener.close();
});

test('handshake: wrong version, garbage and silence are refused; the listener keeps serving', async () => {
  const address = uniqueAddress('handshake');
  const errors: string[] = [];
  const listener = listen(address, { handshakeTimeoutMs: 200, onConnectionError: (e) => errors.push(e.code) });
  // unknown protocol version
  const v9 = await RawPeer.connect(address, false);
  v9.send({ kind: FrameKind.Hello, version: 9, metadata: { min_version: '9', max_version: '9', capabilities: '', implementation: 'x', pid: '1' } });
  const refused = await v9.receive();
  assert.equal(refused.frame.kind, FrameKind.Error);
  assert.equal(refused.frame.metadata.code, 'ERR_PROTOCOL_VERSION');
  assert.ok(await v9.closedByPeer());
  v9.close();
  // garbage instead of HELLO
  const garbage = await RawPeer.connect(address, false);
  garbage.sendBytes(new TextEncoder().encode('GET / HTTP/1.1\r\n\r\n'));
  assert.equal((await garbage.receive()).frame.metadata.code, 'ERR_PROTOCOL');
  garbage.close();
  // silence: dropped after the handshake timeout
  const silent = await RawPeer.connect(address, false);
  assert.ok(await silent.closedByPeer(2000));
  silent.close();
  // a real peer still gets through
  const [server, client] = await Promise.all([listener.accept(), connect(address)]);
  assert.equal(client.peer.pid, process.pid);
  assert.match(client.peer.implementation, /arrow-shm-node/);
  assert.deepEqual(errors.sort(), ['ERR_PROTOCOL', 'ERR_PROTOCOL_VERSION', 'ERR_TIMEOUT']);
  client.close();
  server.close();
  listener.close();
});

test('credentials: a uid outside the allowed set is refused with ERR_PEER_CREDENTIALS', async () => {
  const address = uniqueAddress('creds');
  const errors: string[] = [];
  const listener = listen(address, { allowedUids: [process.geteuid!() + 12345], onConnectionError: (e) => errors.push(e.code) });
  await assert.rejects(connect(address), (e: unknown) => e instanceof ArrowShmError && (e.code === 'ERR_PEER_CREDENTIALS' || e.code === 'ERR_PEER_CLOSED'));
  await waitFor(() => errors.length > 0, 'the listener to report the refused peer');
  assert.deepEqual(errors, ['ERR_PEER_CREDENTIALS']);
  listener.close();
});

test('a peer that closes mid-conversation fails pending sends with ERR_PEER_CLOSED', async () => {
  const address = uniqueAddress('dead');
  const listener = listen(address);
  const accepted = listener.accept();
  const raw = await RawPeer.connect(address);
  const server = await accepted;
  const pending = server.send(generateSymbolTable(10)); // the raw peer never ACKs
  await sleep(20);
  raw.close();
  await assert.rejects(pending, code('ERR_PEER_CLOSED'));
  await assert.rejects(server.receive(), code('ERR_PEER_CLOSED'));
  await assert.rejects(server.send(generateSymbolTable(1)), (e: unknown) => e instanceof ArrowShmError);
  listener.close();
});

test('socket files are created 0600 and removed on close; a non-socket path is never replaced', async () => {
  const { mkdtempSync, statSync, existsSync, writeFileSync, rmSync } = await import('node:fs');
  const os = await import('node:os');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-test-'));
  const address = path.join(dir, 'sock');
  const listener = listen(address);
  assert.equal(statSync(address).mode & 0o777, 0o600);
  listener.close();
  assert.equal(existsSync(address), false);
  writeFileSync(address, 'precious');
  assert.throws(() => listen(address), code('ERR_INVALID_ARGUMENT'));
  rmSync(dir, { recursive: true });
  await assert.rejects(connect(path.join(dir, 'nothing')), (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_SYSCALL' && e.errno === 2 && e.syscall === 'connect');
});

test('leased frames are refused unless the lease capability was agreed', async () => {
  const address = uniqueAddress('lease');
  const listener = listen(address);
  const accepted = listener.accept();
  const raw = await RawPeer.connect(address);
  await accepted;
  const good = new Uint8Array(readFileSync(goldStreams()[0]!));
  const s = Segment.create(good.length);
  s.write(good, 0);
  s.seal('leased');
  const id = raw.send({ kind: FrameKind.Table, flags: FrameFlags.LEASED, ipcLength: BigInt(good.length), fdCount: 1 }, [s.fd]);
  const { frame } = await raw.receive();
  assert.equal(frame.correlationId, id);
  assert.equal(frame.metadata.code, 'ERR_SEGMENT_UNSEALED');
  s.close();
  raw.close();
  listener.close();
});

test('leased segments: reused after RELEASE, dropped (never reused) while a receiver holds them', async () => {
  const address = uniqueAddress('leased');
  const listener = listen(address, { acceptLeased: true });
  const [server, client] = await Promise.all([listener.accept(), connect(address, { lease: true })]);
  const table = generateSymbolTable(2000);
  const first = await Promise.all([server.receive(), client.send(table)]).then(([m]) => m);
  assert.equal(first.flags & FrameFlags.LEASED, FrameFlags.LEASED);
  assert.equal(checksumSymbolTable(first.table), checksumSymbolTable(table));
  assert.equal(client.poolStats.leasesOutstanding, 1);
  first.close(); // sends RELEASE
  await waitFor(() => client.poolStats.leasesOutstanding === 0, 'the RELEASE to arrive');
  assert.ok(client.poolStats.leaseBytes > 0, 'the released segment is back in the pool');
  // 50 more: the pool recycles, memfd mappings stay flat
  const maps = memfdMappings();
  for (let i = 0; i < 50; i++) {
    const [m] = await Promise.all([server.receive(), client.send(table)]);
    assert.equal(m.table.numRows, 2000);
    m.close();
    await waitFor(() => client.poolStats.leasesOutstanding === 0, 'the RELEASE to arrive');
  }
  assert.ok(memfdMappings() <= maps + 1, `memfd mappings grew from ${maps} to ${memfdMappings()}`);
  // a message held across the channel's end keeps its bytes intact
  const [held] = await Promise.all([server.receive(), client.send(table)]);
  client.close();
  await sleep(20);
  assert.equal(checksumSymbolTable(held.table), checksumSymbolTable(table));
  held.close();
  server.close();
  listener.close();
});

test('sealed sends take pre-allocated spare segments and stay correct', async () => {
  const { listener, server, client } = await pair({ spareSegments: 2 });
  const table = generateSymbolTable(3000);
  for (let i = 0; i < 5; i++) {
    const [m] = await Promise.all([server.receive(), client.send(table)]);
    assert.equal(checksumSymbolTable(m.table), checksumSymbolTable(table));
    m.close();
    await client.settled();
  }
  assert.ok(client.poolStats.spareBytes > 0, 'spares were prepared in the background');
  const fds = openFds();
  client.close();
  assert.ok(openFds() < fds, 'closing the channel closes its spare segments');
  server.close();
  listener.close();
});

test('a table sent right behind the handshake is never mistaken for part of it', async () => {
  for (let i = 0; i < 20; i++) {
    const address = uniqueAddress('race');
    const listener = listen(address);
    const accepted = listener.accept();
    const client = await connect(address);
    const sent = client.send(generateSymbolTable(10));
    const server = await accepted;
    const [m] = await Promise.all([server.receive(), sent]);
    assert.equal(m.table.numRows, 10);
    m.close();
    client.close();
    server.close();
    listener.close();
  }
});

test('safety net: messages dropped without close() are unmapped by the garbage collector', async () => {
  const { runProcess } = await import('./helpers.js');
  const script = path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures', 'gc-safety-net.js');
  const r = await runProcess(process.execPath, ['--expose-gc', script]);
  assert.equal(r.code, 0, r.stderr);
  const { before, held, after } = JSON.parse(r.stdout) as { before: number; held: number; after: number };
  assert.ok(held >= before + 10, `the dropped messages were mapped while referenced (${before} -> ${held})`);
  assert.equal(after, before, 'every forgotten mapping was released');
});

test('tables acknowledged just before the peer says GOODBYE (or hangs up) are still received', async () => {
  const good = new Uint8Array(readFileSync(goldStreams()[0]!));
  for (const ending of ['goodbye', 'hangup'] as const) {
    const address = uniqueAddress('goodbye');
    const listener = listen(address);
    const accepted = listener.accept();
    const raw = await RawPeer.connect(address);
    const server = await accepted;
    const segments = [sealedSegmentWith(good), sealedSegmentWith(good)];
    for (const s of segments) raw.send({ kind: FrameKind.Table, ipcLength: BigInt(good.length), fdCount: 1 }, [s.fd]);
    if (ending === 'goodbye') raw.send({ kind: FrameKind.Goodbye });
    raw.close();
    segments.forEach((s) => s.close());
    await sleep(50); // everything has arrived and the channel has seen the end
    const received = [];
    for await (const m of server) {
      assert.deepEqual(Buffer.from(m.bytes), Buffer.from(good));
      received.push(m);
      m.close();
    }
    assert.equal(received.length, 2, ending);
    await assert.rejects(server.receive(), code('ERR_PEER_CLOSED'));
    listener.close();
  }
});
