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

test('spare segments follow the traffic: prepared in the background at the size just sent, used once, closed with the pool', async () => {
  const { SparePool } = await import('../src/shm/pool.js');
  const { leaksSince, resources } = await import('./helpers.js');
  const before = resources();
  const pool = new SparePool({ perClass: 1, maxBytes: 1 << 30 });
  const size = 3 * 1024 * 1024 + 123;
  assert.equal(pool.take(size), null, 'nothing is ready before the first send');
  await pool.settled();
  assert.ok(pool.pooledBytes > 0, 'a spare was prepared for the size just asked for');
  const spare = pool.take(size);
  assert.ok(spare, 'the next send of that size gets it');
  assert.equal(spare.size, Math.ceil(size / 4096) * 4096, 'page-rounded, not the whole size class');
  spare.close();
  await pool.settled();
  // A larger table of the same size class does not fit the spare made for a smaller one.
  assert.equal(pool.take(size + 8192), null);
  await pool.settled();
  const larger = pool.take(size + 8192);
  assert.ok(larger && larger.size >= size + 8192, 'the next spare follows the larger size');
  larger.close();
  await pool.settled();
  pool.close();
  assert.equal(pool.pooledBytes, 0);
  assert.deepEqual(leaksSince(before), [], 'closing the pool closes every spare');
});
