// Random SIGKILLs of the peer during a run of hand-offs, every role (bench/kill.ts; the long run is
// in `npm run stress`): the survivor gets typed errors and keeps no memfd of a dead peer's tables.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomKillRun } from '../bench/kill.js';

test('SIGKILL of the receiver, the sender or a subscriber at random points of 2,000 hand-offs: typed errors, slots freed, nothing left open', { timeout: 120_000 }, async () => {
  const result = await randomKillRun(2000, 12, 7);
  assert.ok(result.handoffs > 0);
  assert.equal(result.subscriberKills, 4); // the publication went on each time (randomKillRun checks the other subscriber got every batch)
  const errors = Object.values(result.codes).reduce((a, b) => a + b, 0);
  assert.equal(errors, result.kills - result.subscriberKills, `every killed channel peer surfaced as one typed error: ${JSON.stringify(result.codes)}`);
  assert.deepEqual(Object.keys(result.codes).filter((c) => c !== 'ERR_PEER_CLOSED'), [], JSON.stringify(result.codes));
  assert.equal(result.memfdFds, 0, 'no memfd fd left open');
  assert.equal(result.memfdMappings, 0, 'no memfd mapping left');
});
