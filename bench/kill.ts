// Random SIGKILLs during a run of hand-offs (issue #7): a child receiver, a child sender or one of
// two child subscribers of this process's publication is killed at a random point, again and again.
// This process, the survivor, must get a typed error each time a channel peer dies, go on with a new
// peer, and at the end hold no memfd (no fd, no mapping) of any dead peer's tables; a publication
// must free a killed subscriber's slot and go on, the other subscriber receiving every batch.
// Used by `npm run stress` (10,000 hand-offs) and by test/kill.test.ts (a short run in CI).
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { makeVector, Table } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { publish, subscribe } from '../src/stream/pubsub.js';
import { connect, type Channel } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';

const table = new Table({ seq: makeVector(Int32Array.from({ length: 1000 }, (_, i) => i)) });
const ROLES = ['receiver', 'sender', 'subscriber'] as const;
type Role = (typeof ROLES)[number];

export interface KillRunResult {
  handoffs: number;
  kills: number;
  /** Of `kills`, subscribers of a publication (no error for the publisher: it frees the slot and goes on). */
  subscriberKills: number;
  /** Error codes the survivor saw when its peer died (each a typed ArrowShmError). */
  codes: Record<string, number>;
  /** memfd fds and mappings of this process at the end (both must be 0 more than at the start). */
  memfdFds: number;
  memfdMappings: number;
}

export function memfdFds(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:')) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

export function memfdMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:')).length;
}

/** A small deterministic generator, so that a failing run can be replayed with its seed. */
function random(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function spawnPeer(role: Role, address: string): ChildProcess {
  return fork(fileURLToPath(import.meta.url), ['--kill-role', role, address], { stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
}

const died = (child: ChildProcess) => new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)));

/** `total` hand-offs in `kills` rounds; each round's peer is SIGKILLed at a random hand-off. */
export async function randomKillRun(total: number, kills: number, seed = 1): Promise<KillRunResult> {
  const next = random(seed);
  const codes: Record<string, number> = {};
  const fdsBefore = memfdFds();
  const mapsBefore = memfdMappings();
  const perRound = Math.max(2, Math.floor(total / kills));
  let handoffs = 0;
  let subscriberKills = 0;
  for (let round = 0; round < kills; round++) {
    const address = `@arrow-shm-kill-${process.pid}-${round}`;
    const role = ROLES[round % ROLES.length]!;
    if (role === 'subscriber') {
      handoffs += await killSubscriberRound(address, perRound, Math.floor(next() * perRound));
      subscriberKills++;
      continue;
    }
    const listener = listen(address);
    const peer = spawnPeer(role, address);
    const channel: Channel = await listener.accept();
    listener.close();
    const killAt = Math.floor(next() * perRound);
    try {
      for (let i = 0; i < perRound; i++) {
        if (i === killAt) peer.kill('SIGKILL');
        if (role === 'receiver') await channel.send(table, { timeoutMs: 10_000 });
        else {
          const message = await channel.receive();
          message.table.numRows;
          message.close();
        }
        handoffs++;
      }
    } catch (e) {
      if (!(e instanceof ArrowShmError)) throw e;
      codes[e.code] = (codes[e.code] ?? 0) + 1;
    } finally {
      channel.close();
      peer.kill('SIGKILL');
      await died(peer);
    }
  }
  // Give the collector a chance at any mapping a dead peer's message may still hold.
  (globalThis as { gc?: () => void }).gc?.();
  return { handoffs, kills, subscriberKills, codes, memfdFds: memfdFds() - fdsBefore, memfdMappings: memfdMappings() - mapsBefore };
}

/**
 * A publication with two child subscribers; one is SIGKILLed before batch `killAt`. Its slot must be
 * freed (the small ring would otherwise fill and stall the publisher), and the other subscriber must
 * get every batch. Returns the batches published.
 */
async function killSubscriberRound(address: string, batches: number, killAt: number): Promise<number> {
  // A dead subscriber's slot not freed would fill this small ring: the write then fails with ERR_TIMEOUT.
  const publication = publish(address, table.schema, { capacityBytes: 256 * 1024, writeTimeoutMs: 10_000 });
  const [victim, survivor] = [spawnPeer('subscriber', address), spawnPeer('subscriber', address)];
  const survivorCount = new Promise<number>((resolve) => survivor.once('message', (m: { received: number }) => resolve(m.received)));
  try {
    await publication.waitForSubscribers(2, { timeoutMs: 10_000 });
    for (let i = 0; i < batches; i++) {
      if (i === killAt) victim.kill('SIGKILL');
      await publication.write(table);
    }
    await publication.close({ timeoutMs: 10_000 });
    const received = await survivorCount;
    if (received !== batches) throw new Error(`the surviving subscriber received ${received} of ${batches} batches`);
    if (publication.subscribers !== 0) throw new Error(`${publication.subscribers} reader slots still taken after the publication closed`);
  } finally {
    publication.abort();
    for (const child of [victim, survivor]) child.kill('SIGKILL');
    await Promise.all([died(victim), died(survivor)]);
  }
  return batches;
}

const roleAt = process.argv.indexOf('--kill-role');
if (roleAt > 0 && process.argv[roleAt + 1] === 'subscriber') {
  let received = 0;
  for await (const batch of await subscribe(process.argv[roleAt + 2]!)) received += batch.numRows > 0 ? 1 : 0;
  process.send!({ received }, () => process.exit(0));
} else if (roleAt > 0) {
  const channel = await connect(process.argv[roleAt + 2]!);
  if (process.argv[roleAt + 1] === 'receiver') {
    for await (const message of channel) {
      message.table.numRows;
      message.close();
    }
  } else {
    for (;;) await channel.send(table);
  }
}
