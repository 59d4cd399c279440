import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ArrowShmError } from '../src/errors.js';
import { decodeFrame, decodeKeyValues, encodeFrame, encodeKeyValues, FrameKind, FrameFlags, HEADER_LENGTH, MAGIC } from '../src/transport/frame.js';

const isProtocolError = (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_PROTOCOL';

test('frames round-trip every field', () => {
  const bytes = encodeFrame({ kind: FrameKind.Table, flags: FrameFlags.REQUEST, messageId: 7n, correlationId: 3n, ipcOffset: 64n, ipcLength: 2n ** 40n, fdCount: 1, metadata: { name: 'symbols', 'ü': 'ß' } });
  const f = decodeFrame(bytes);
  assert.equal(f.kind, FrameKind.Table);
  assert.equal(f.flags, FrameFlags.REQUEST);
  assert.equal(f.messageId, 7n);
  assert.equal(f.correlationId, 3n);
  assert.equal(f.ipcOffset, 64n);
  assert.equal(f.ipcLength, 2n ** 40n);
  assert.equal(f.fdCount, 1);
  assert.deepEqual({ ...f.metadata }, { name: 'symbols', 'ü': 'ß' });
  assert.equal(new DataView(bytes.buffer).getUint32(0, true), MAGIC);
  assert.equal(String.fromCharCode(...bytes.subarray(0, 4)), 'ASHM');
});

test('key/value blocks round-trip arbitrary strings (property)', () => {
  fc.assert(
    fc.property(fc.dictionary(fc.string(), fc.string()), (kv) => {
      assert.deepEqual({ ...decodeKeyValues(encodeKeyValues(kv)) }, { ...kv });
    }),
  );
});

test('malformed frames are ERR_PROTOCOL', () => {
  const good = encodeFrame({ kind: FrameKind.Ack, messageId: 1n, metadata: { a: 'b' } });
  const mutate = (f: (b: Uint8Array, v: DataView) => void) => {
    const b = good.slice();
    f(b, new DataView(b.buffer));
    return b;
  };
  const cases: [string, Uint8Array][] = [
    ['short', good.subarray(0, 10)],
    ['magic', mutate((b) => (b[0] = 0))],
    ['kind 0', mutate((b) => (b[6] = 0))],
    ['kind 99', mutate((b) => (b[6] = 99))],
    ['unknown flag', mutate((b) => (b[7] = 0x80))],
    ['header length', mutate((_, v) => v.setUint32(8, 32, true))],
    ['metadata length too long', mutate((_, v) => v.setUint32(12, 9999, true))],
    ['kv count overflow', mutate((_, v) => v.setUint32(HEADER_LENGTH, 0xffffffff, true))],
    ['kv key length overflow', mutate((_, v) => v.setUint32(HEADER_LENGTH + 4, 0x7fffffff, true))],
    ['trailing bytes', (() => { const b = new Uint8Array(good.length + 3); b.set(good); new DataView(b.buffer).setUint32(12, good.length - HEADER_LENGTH + 3, true); return b; })()],
  ];
  for (const [name, bytes] of cases) assert.throws(() => decodeFrame(bytes), isProtocolError, name);
  const invalidUtf8 = encodeKeyValues({ k: 'v' });
  invalidUtf8[8] = 0xff;
  assert.throws(() => decodeKeyValues(invalidUtf8), isProtocolError);
  const duplicate = new Uint8Array([...encodeKeyValues({ k: '1' })]);
  const twice = new Uint8Array(4 + 2 * (duplicate.length - 4));
  new DataView(twice.buffer).setUint32(0, 2, true);
  twice.set(duplicate.subarray(4), 4);
  twice.set(duplicate.subarray(4), duplicate.length);
  assert.throws(() => decodeKeyValues(twice), isProtocolError);
});

test('random bytes never decode into anything but a frame or ERR_PROTOCOL (property)', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 256 }), fc.boolean(), (random, withHeader) => {
      const bytes = random.slice();
      if (withHeader && bytes.length >= 16) {
        const v = new DataView(bytes.buffer);
        v.setUint32(0, MAGIC, true);
        v.setUint32(8, HEADER_LENGTH, true);
      }
      try {
        decodeFrame(bytes);
      } catch (e) {
        assert.ok(isProtocolError(e), String(e));
      }
    }),
    { numRuns: 2000 },
  );
});
