import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { sizeClass } from '../src/shm/pool.js';

test('pool size classes fit every request and waste at most a fifth', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 40 }), (n) => {
      const c = sizeClass(n);
      assert.ok(c >= n);
      assert.equal(c % 4096, 0);
      if (n > 65536) assert.ok(c <= n * 1.25 + 4096, `${n} -> ${c}`);
    }),
  );
});
