// Hostile *amounts* (issue #13, docs/PROTOCOL.md §14): a real receiver process
// (test/fixtures/limited-receiver.ts) against the scripted attacker test/python/attacks.py. Each
// test asserts that the receiver stays alive, answers with a typed error or drops only the
// attacker, serves an honest sender right after (during, for floods), and stays bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { lstatSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { tableFromArrays } from 'apache-arrow';
import { ArrowShmError } from '../src/errors.js';
import { native } from '../src/native.js';
import { connect } from '../src/transport/channel.js';
import { listen, type ListenerOptions } from '../src/transport/listener.js';
import { FrameKind } from '../src/transport/frame.js';
import { hasVenv, memfdMappings, RawPeer, repoRoot, resources, runProcess, venvPython, waitForNoLeaks } from './helpers.js';

const fixture = path.join(repoRoot, 'dist', 'test', 'fixtures', 'limited-receiver.js');
const attacks = path.join(repoRoot, 'test', 'python', 'attacks.py');
const skip = hasVenv() ? false : 'needs the Python venv (scripts/ensure-venv.sh)';

type Event = { event: string; [key: string]: unknown };
type Stats = { fds: number; memfdMappings: number; open: Record<string, number>; connections: number; heapUsed: number; rss: number };

/** The receiver process: its JSON events as they come, and a way to ask what it holds. */
class Receiver {
  readonly events: Event[] = [];
  #waiters: (() => void)[] = [];
  readonly exited: Promise<number | null>;

  private constructor(
    readonly child: ChildProcess,
    readonly address: string,
  ) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.events.push(JSON.parse(line) as Event);
      for (const w of this.#waiters.splice(0)) w();
    });
    this.exited = new Promise((resolve) => child.on('close', resolve));
  }

  static async start(dir: string, options: ListenerOptions, mode: 'receive' | 'hold-first' = 'receive', prlimit: string[] = []): Promise<Receiver> {
    const address = path.join(dir, `r${Math.random().toString(36).slice(2)}.sock`);
    const args = [fixture, address, JSON.stringify(options), mode];
    const child = prlimit.length ? spawn('prlimit', [...prlimit, process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      let stderr = '';
      child.stderr!.on('data', (d) => {
        stderr += d;
        if (stderr.includes('listening on')) resolve();
      });
      child.on('close', (code) => reject(new Error(`receiver exited (${code}) before listening: ${stderr}`)));
    });
    return new Receiver(child, address);
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async next(match: (e: Event) => boolean, what: string, ms = 5000): Promise<Event> {
    const deadline = Date.now() + ms;
    for (let seen = 0; ; ) {
      for (; seen < this.events.length; seen++) if (match(this.events[seen]!)) return this.events.splice(seen, 1)[0]!;
      if (!this.alive) throw new Error(`the receiver died waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for ${what}; events: ${JSON.stringify(this.events.slice(-5))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 100));
        this.#waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
  }

  async stats(): Promise<Stats> {
    this.child.stdin!.write('stats\n');
    return (await this.next((e) => e.event === 'stats', 'stats')) as never;
  }

  /** What the receiver has open now beyond `before` (fd targets, memfd mappings), once closing connections are gone. */
  async openedSince(before: Stats, ms = 5000): Promise<string[]> {
    const deadline = Date.now() + ms;
    for (;;) {
      const now = await this.stats();
      const extra = Object.entries(now.open)
        .filter(([key, count]) => count > (before.open[key] ?? 0))
        .map(([key, count]) => `${count - (before.open[key] ?? 0)} x ${key}`);
      if (extra.length === 0 || Date.now() > deadline) return extra;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** An honest sender (this test process) hands over a table; resolves when the receiver reports it. */
  async servesHonestSender(ms = 2000): Promise<void> {
    const started = Date.now();
    const channel = await connect(this.address, { timeoutMs: ms });
    try {
      await channel.send(tableFromArrays({ honest: Int32Array.from([1, 2, 3]) }), { timeoutMs: ms });
    } finally {
      channel.close();
    }
    await this.next((e) => e.event === 'table' && e.pid === process.pid, 'the honest table', Math.max(100, ms - (Date.now() - started)));
  }

  stop(): Promise<number | null> {
    this.child.kill('SIGKILL');
    return this.exited;
  }
}

async function attack(args: string[], timeoutMs = 60_000): Promise<Event[]> {
  const run = await runProcess(venvPython, [attacks, ...args], { timeoutMs });
  assert.equal(run.code, 0, `attacks.py ${args.join(' ')} failed: ${run.stderr}`);
  return run.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Event);
}

function replies(events: Event[]): Event[] {
  return events.filter((e) => e.event === 'reply');
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-resources-'));
  try {
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('decoding bombs (shared offsets, huge counts) are refused with a typed error, cheaply, and the receiver goes on', { skip }, () =>
  withDir(async (dir) => {
    const receiver = await Receiver.start(dir, {});
    try {
      await receiver.servesHonestSender(5000); // warm: pools and code paths the baseline should include
      const before = await receiver.stats();
      const expected: Record<string, string> = {
        'metadata-bomb': 'ERR_IPC_LIMIT',
        'schema-bomb': 'ERR_IPC_LIMIT',
        'node-count-bomb': 'ERR_IPC_LIMIT',
        'counts-mismatch': 'ERR_IPC_INVALID',
      };
      for (const [kind, code] of Object.entries(expected)) {
        const answer = replies(await attack(['attack', kind, '--socket', receiver.address, '--seconds', '20']));
        assert.equal(answer.at(-1)?.kind, 'ERROR', `${kind}: ${JSON.stringify(answer)}`);
        assert.equal(answer.at(-1)?.code, code, `${kind}: ${JSON.stringify(answer)}`);
        assert.ok(receiver.alive, `the receiver died of ${kind}`);
        await receiver.servesHonestSender();
      }
      assert.deepEqual(await receiver.openedSince(before), [], 'nothing the attacks opened is still open');
      const after = await receiver.stats();
      assert.ok(after.heapUsed < before.heapUsed + 64 * 1024 ** 2, `heap grew ${before.heapUsed} -> ${after.heapUsed}`);
    } finally {
      await receiver.stop();
    }
  }));

for (const [kind, flags] of [['inbox-flood', 'tables'], ['request-flood', 'requests']] as const) {
  test(`a flood of ${flags} the application does not take stops at maxInboxMessages; the kernel pushes back; others are served meanwhile`, { skip }, () =>
    withDir(async (dir) => {
      const maxInboxMessages = 16;
      const receiver = await Receiver.start(dir, { maxInboxMessages }, 'hold-first');
      try {
        const flood = attack(['attack', kind, '--socket', receiver.address, '--count', '100000', '--seconds', '4']);
        await receiver.next((e) => e.event === 'accepted', 'the flooding connection');
        await new Promise((r) => setTimeout(r, 1000));
        const during = await receiver.stats();
        // Held: at most maxInboxMessages mappings of the flood (plus none of the honest sender's yet).
        assert.ok(during.memfdMappings <= maxInboxMessages, `${during.memfdMappings} memfd mappings held during the flood`);
        await receiver.servesHonestSender();
        const events = await flood;
        const sent = events.filter((e) => e.event === 'sent').at(-1)?.count as number;
        assert.ok(sent < 100_000, `the attacker was not pushed back: it sent all ${sent}`);
        assert.ok(receiver.alive);
      } finally {
        await receiver.stop();
      }
    }));
}

test('1,003 idle connections under a 1,024-fd limit: excess refused or idlest evicted, an honest sender is served during the attack', { skip }, () =>
  withDir(async (dir) => {
    const receiver = await Receiver.start(dir, {}, 'receive', ['--nofile=1024:1024', '--']);
    try {
      const attacker = attack(['attack', 'idle-connections', '--socket', receiver.address, '--count', '1003', '--seconds', '6']);
      await new Promise((r) => setTimeout(r, 2500)); // the attacker's connections are in and idle for over a second
      const during = await receiver.stats();
      assert.ok(during.connections <= 256, `${during.connections} connections held (maxConnections 256)`);
      await receiver.servesHonestSender(2000);
      const result = (await attacker).find((e) => e.event === 'done') as Event & { connected?: number; refused?: Record<string, number> };
      assert.ok(result, 'the attacker finished');
      assert.ok((result.refused?.ERR_RESOURCE_LIMIT ?? 0) > 0, `the excess was refused with ERR_RESOURCE_LIMIT: ${JSON.stringify(result)}`);
      assert.ok(receiver.alive);
      await receiver.servesHonestSender(2000);
    } finally {
      await receiver.stop();
    }
  }));

test('idleTimeoutMs closes a connection that does nothing, with ERR_TIMEOUT', { skip }, () =>
  withDir(async (dir) => {
    const receiver = await Receiver.start(dir, { idleTimeoutMs: 300 });
    try {
      const events = await attack(['attack', 'idle-connections', '--socket', receiver.address, '--count', '3', '--seconds', '3']);
      const done = events.find((e) => e.event === 'done') as Event & { errors?: Record<string, number>; closed_by_peer?: number };
      assert.equal(done.closed_by_peer, 3, JSON.stringify(done));
      assert.equal(done.errors?.ERR_TIMEOUT, 3, JSON.stringify(done));
      await receiver.servesHonestSender();
    } finally {
      await receiver.stop();
    }
  }));

test('HELLO version fields must be strict decimals: "0x1", "", "-0", "1e0", " 1" are refused with ERR_PROTOCOL', { skip }, () =>
  withDir(async (dir) => {
    const receiver = await Receiver.start(dir, {});
    try {
      for (const value of ['0x1', '', '-0', '1e0', ' 1', '01', '1.0']) {
        const answer = replies(await attack(['attack', 'hello-version', '--socket', receiver.address, '--value', value, '--seconds', '5']));
        assert.equal(answer.at(-1)?.code, 'ERR_PROTOCOL', `min_version ${JSON.stringify(value)}: ${JSON.stringify(answer)}`);
      }
      await receiver.servesHonestSender();
    } finally {
      await receiver.stop();
    }
  }));

test('a frame-level violation drops only that connection; the listener keeps serving', { skip }, () =>
  withDir(async (dir) => {
    const receiver = await Receiver.start(dir, {});
    try {
      for (const kind of ['bad-frame', 'bad-ack-version']) {
        await attack(['attack', kind, '--socket', receiver.address, '--seconds', '5']);
        assert.ok(receiver.alive);
        await receiver.servesHonestSender();
      }
    } finally {
      await receiver.stop();
    }
  }));

test('stream offers nobody accepts stop at maxStreamOffers (ERR_RESOURCE_LIMIT); their fds are closed', { skip }, () =>
  withDir(async (dir) => {
    const receiver = await Receiver.start(dir, { maxStreamOffers: 4 }, 'hold-first');
    const peer = await RawPeer.connect(receiver.address);
    try {
      const before = await receiver.stats();
      const refused: string[] = [];
      for (let i = 0; i < 10; i++) {
        const fd = native.memfdCreate('offer', 4096);
        try {
          peer.send({ kind: FrameKind.StreamOpen, fdCount: 1 }, [fd]);
        } finally {
          native.close(fd);
        }
      }
      for (let i = 0; i < 6; i++) {
        const { frame } = await peer.receive();
        if (frame.kind === FrameKind.Error) refused.push(frame.metadata.code ?? '');
      }
      assert.deepEqual(refused, Array(6).fill('ERR_RESOURCE_LIMIT'));
      const during = await receiver.stats();
      assert.deepEqual(await receiver.openedSince(before, 0), ['4 x fd -> /memfd:offer (deleted)'], 'only the 4 queued offers hold an fd');
      await receiver.servesHonestSender();
    } finally {
      peer.close();
      await receiver.stop();
    }
  }));

test('a receiver that never releases leases: the sender holds at most maxLeases, then sends sealed', { skip }, () =>
  withDir(async (dir) => {
    const address = path.join(dir, 'hoard.sock');
    const hoarder = spawn(venvPython, [attacks, 'listen', 'lease-hoard', '--socket', address, '--seconds', '30'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((resolve) => hoarder.on('close', resolve));
    try {
      await new Promise<void>((resolve) => createInterface({ input: hoarder.stdout! }).once('line', () => resolve()));
      const before = resources();
      const channel = await connect(address, { lease: true, maxLeases: 8, timeoutMs: 5000 });
      try {
        assert.ok(channel.peer.capabilities.includes('lease'), 'the hoarder offers leases');
        const table = tableFromArrays({ x: new Float64Array(128 * 1024) }); // 1 MiB
        for (let i = 0; i < 40; i++) await channel.send(table, { timeoutMs: 5000 });
        assert.equal(channel.poolStats.leasesOutstanding, 8);
        assert.ok(memfdMappings() <= 8 + 4, `${memfdMappings()} memfd mappings after 40 sends`);
      } finally {
        channel.close();
      }
      await waitForNoLeaks(before, 'lease hoarding');
    } finally {
      hoarder.kill('SIGKILL');
      await exited;
    }
  }));

test('a second listener on a live socket path is refused (ERR_ADDRESS_IN_USE); a stale one is replaced; close unlinks only its own file', { skip }, () =>
  withDir(async (dir) => {
    const receiver = await Receiver.start(dir, {});
    try {
      assert.throws(() => listen(receiver.address), (e: unknown) => e instanceof ArrowShmError && e.code === 'ERR_ADDRESS_IN_USE');
      await receiver.servesHonestSender(); // still the first listener's
    } finally {
      await receiver.stop(); // SIGKILL: its socket file stays behind, stale
    }
    assert.ok(lstatSync(receiver.address).isSocket());
    const second = listen(receiver.address);
    try {
      const client = connect(receiver.address, { timeoutMs: 2000 });
      (await second.accept()).close();
      (await client).close();
      // Someone moves our socket file away and a third listener takes the path: closing ours must not remove theirs.
      renameSync(receiver.address, path.join(dir, 'moved.sock'));
      const third = listen(receiver.address);
      second.close();
      assert.ok(lstatSync(receiver.address).isSocket(), "the third listener's socket file is still there");
      third.close();
      assert.throws(() => lstatSync(receiver.address), 'the third listener removed its own file');
    } finally {
      second.close();
    }
  }));
