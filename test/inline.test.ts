// Inline tables (docs/PROTOCOL.md §5.3): a small table travels inside its TABLE frame, with no
// segment, between peers that accept it; hostile inline frames are refused like hostile segments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ArrowShmError } from '../src/errors.js';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { FrameFlags, FrameKind, HEADER_LENGTH, MAX_FRAME, encodeFrame, inlineOffset } from '../src/transport/frame.js';
import { Segment } from '../src/shm/segment.js';
import { checksumSymbolTable, generateSymbolTable } from '../src/cli/symbols.js';
import { goldStreams, leaksSince, memfdMappings, RawPeer, resources, uniqueAddress } from './helpers.js';

const code = (c: string) => (e: unknown) => e instanceof ArrowShmError && e.code === c;

test('a small table travels inside its frame (no segment is mapped); a large one, and any with maxInlineBytes 0, in a segment', async () => {
  const address = uniqueAddress('inline');
  const listener = listen(address);
  // No spare segments: their mappings would be counted with the received ones below.
  const [server, client] = await Promise.all([listener.accept(), connect(address, { spareSegments: 0 })]);
  const strict = await Promise.all([listener.accept(), connect(address, { maxInlineBytes: 0, spareSegments: 0 })]);
  try {
    assert.ok(server.peer.capabilities.includes('inline') && client.peer.capabilities.includes('inline'), 'Node peers take inline tables');
    const small = generateSymbolTable(20);
    const before = memfdMappings();
    const [inline] = await Promise.all([server.receive(), client.send(small, { metadata: { name: 'small' } })]);
    assert.ok(inline.flags & FrameFlags.INLINE, 'the small table came inline');
    assert.equal(memfdMappings(), before, 'an inline table maps no segment');
    assert.equal(inline.metadata.name, 'small');
    assert.equal(checksumSymbolTable(inline.table), checksumSymbolTable(small));
    // Its columns are views of the frame's bytes, detached on close like a mapping's.
    const kinds = inline.table.getChild('kind')!.data[0]!.values as Uint8Array;
    assert.equal(kinds.buffer, inline.sharedBuffer);
    assert.ok(inline.sharedBuffer.byteLength <= MAX_FRAME);
    inline.close();
    assert.equal(kinds.length, 0, 'closing detaches every view');

    const large = generateSymbolTable(5_000);
    const [segment] = await Promise.all([server.receive(), client.send(large)]);
    assert.equal(segment.flags & FrameFlags.INLINE, 0, 'a table larger than a frame goes in a segment');
    assert.equal(memfdMappings(), before + 1);
    assert.equal(checksumSymbolTable(segment.table), checksumSymbolTable(large));
    segment.close();

    const [forced] = await Promise.all([strict[0].receive(), strict[1].send(small)]);
    assert.equal(forced.flags & FrameFlags.INLINE, 0, 'maxInlineBytes 0: always a segment');
    assert.equal(checksumSymbolTable(forced.table), checksumSymbolTable(small));
    forced.close();

    // Requests and responses go inline too.
    const answering = (async () => {
      const request = await server.receive();
      assert.ok(request.flags & FrameFlags.INLINE);
      await request.respond(small);
      request.close();
    })();
    const response = await client.request(small);
    assert.ok(response.flags & FrameFlags.INLINE);
    assert.equal(response.table.numRows, 20);
    response.close();
    await answering;
  } finally {
    for (const c of [server, client, ...strict]) c.close();
    listener.close();
  }
});

test('a sender does not send inline to a peer that did not offer it', async () => {
  const address = uniqueAddress('inline-raw');
  const listener = listen(address);
  const accepted = listener.accept();
  const raw = await RawPeer.connect(address); // its HELLO lists no capability
  const server = await accepted;
  try {
    const sent = server.send(generateSymbolTable(3), { timeoutMs: 5000 });
    const { frame, fds } = await raw.receive();
    assert.equal(frame.kind, FrameKind.Table);
    assert.equal(frame.flags & FrameFlags.INLINE, 0);
    assert.equal(fds.length, 1, 'a segment fd, not inline bytes');
    for (const fd of fds) Segment.adopt(fd).close();
    raw.send({ kind: FrameKind.Ack, correlationId: frame.messageId });
    await sent;
  } finally {
    server.close();
    raw.close();
    listener.close();
  }
});

test('hostile inline frames: misplaced or oversized streams, fds or LEASED beside INLINE, bad bytes; nothing leaks', async () => {
  const address = uniqueAddress('inline-hostile');
  const listener = listen(address, { maxMessageBytes: 200 });
  const accepted = listener.accept();
  const raw = await RawPeer.connect(address);
  const server = await accepted;
  const before = resources();
  const good = new Uint8Array(readFileSync(goldStreams()[0]!));
  const small = good.byteLength < 60_000 ? good : null;
  assert.ok(small, 'a gold stream small enough to travel inline');
  const inline = (bytes: Uint8Array) => ({ byteLength: bytes.byteLength, writeInto: (t: Uint8Array) => t.set(bytes) });
  const expectError = async (id: bigint, expected: string | RegExp) => {
    const { frame } = await raw.receive();
    assert.equal(frame.kind, FrameKind.Error, String(expected));
    assert.equal(frame.correlationId, id);
    if (typeof expected === 'string') assert.equal(frame.metadata.code, expected);
    else assert.match(frame.metadata.code!, expected);
  };
  try {
    // Message-level: the channel answers with an ERROR and goes on.
    await expectError(raw.send({ kind: FrameKind.Table, flags: FrameFlags.INLINE, inline: inline(small) }), 'ERR_TOO_LARGE'); // past maxMessageBytes 200
    await expectError(raw.send({ kind: FrameKind.Table, flags: FrameFlags.INLINE, inline: inline(new Uint8Array(64).fill(0x41)) }), /^ERR_IPC_(INVALID|TRUNCATED)$/);
    const segment = Segment.create(8);
    await expectError(raw.send({ kind: FrameKind.Table, flags: FrameFlags.INLINE, inline: inline(new Uint8Array(16)) }, [segment.fd]), 'ERR_PROTOCOL');
    segment.close();
    await expectError(raw.send({ kind: FrameKind.Table, flags: FrameFlags.INLINE | FrameFlags.LEASED, inline: inline(new Uint8Array(16)) }), 'ERR_PROTOCOL');
    assert.deepEqual(leaksSince(before), [], 'nothing leaked by refused inline tables');

    // Framing-level: a stream that does not start right after the metadata, or does not end the frame, is fatal.
    const frame = encodeFrame({ kind: FrameKind.Table, flags: FrameFlags.INLINE, messageId: 99n, inline: inline(new Uint8Array(24)) });
    new DataView(frame.buffer).setBigUint64(32, BigInt(inlineOffset(0) + 8), true);
    raw.sendBytes(frame);
    const { frame: fatal } = await raw.receive();
    assert.equal(fatal.kind, FrameKind.Error);
    assert.equal(fatal.metadata.code, 'ERR_PROTOCOL');
    assert.ok(await raw.closedByPeer(), 'the channel is closed after a malformed frame');
    await assert.rejects(server.receive(), code('ERR_PROTOCOL'));
    assert.equal(HEADER_LENGTH, 64);
  } finally {
    server.close();
    raw.close();
    listener.close();
  }
});
