// `npm run stress [-- --handoffs N] [-- --stream-minutes M] [-- --kill-handoffs N --kills K]`: the
// soak of issue #7, too long for CI. 1,000,000 table hand-offs between two processes, then a stream
// running for 10 minutes, sampling this process's fds, memfd mappings and RSS (and the receiver's,
// from /proc/PID) as it goes, and reporting each one's slope: a leak shows as a slope that is not
// ~0. Then 10,000 hand-offs during which the peer (receiver, sender or subscriber, in turn) is SIGKILLed 100
// times at random points (bench/kill.ts).
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { makeVector, Table } from 'apache-arrow';
import { connect } from '../src/transport/channel.js';
import { listen } from '../src/transport/listener.js';
import { randomKillRun } from './kill.js';
import { StreamWriter } from '../src/stream/producer.js';
import { StreamReader } from '../src/stream/consumer.js';

const flag = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};

interface Sample {
  at: number;
  fds: number;
  maps: number;
  rssKiB: number;
}

function sample(pid: number | 'self', at: number): Sample {
  const dir = `/proc/${pid}`;
  const maps = readFileSync(`${dir}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:')).length;
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`${dir}/status`, 'utf8'))![1]);
  return { at, fds: readdirSync(`${dir}/fd`).length, maps, rssKiB };
}

/** Least-squares slope of `y` per 1,000,000 units of `at`. */
function slope(samples: Sample[], y: (s: Sample) => number): number {
  const n = samples.length;
  const mx = samples.reduce((a, s) => a + s.at, 0) / n;
  const my = samples.reduce((a, s) => a + y(s), 0) / n;
  const num = samples.reduce((a, s) => a + (s.at - mx) * (y(s) - my), 0);
  const den = samples.reduce((a, s) => a + (s.at - mx) ** 2, 0);
  return den === 0 ? 0 : (num / den) * 1e6;
}

function report(what: string, unit: string, samples: Sample[]): void {
  // The first tenth is warm-up (pools filling, JIT): slopes are taken over the rest.
  const steady = samples.slice(Math.floor(samples.length / 10));
  const first = steady[0]!;
  const last = steady.at(-1)!;
  console.log(`${what}: ${samples.length} samples`);
  for (const [name, get] of [['fds', (s: Sample) => s.fds], ['memfd mappings', (s: Sample) => s.maps], ['RSS KiB', (s: Sample) => s.rssKiB]] as const) {
    console.log(`  ${name.padEnd(15)} ${String(get(first)).padStart(8)} → ${String(get(last)).padStart(8)}   slope ${slope(steady, get).toFixed(2)} per 1M ${unit}`);
  }
}

function child(role: string, address: string): ChildProcess {
  return fork(fileURLToPath(import.meta.url), ['--role', role, address], { stdio: 'inherit' });
}

const table = new Table({ seq: makeVector(Int32Array.from({ length: 1000 }, (_, i) => i)) });

async function handoffs(count: number): Promise<void> {
  const address = `@arrow-shm-stress-${process.pid}`;
  const listener = listen(address);
  const receiver = child('receiver', address);
  const channel = await listener.accept();
  const self: Sample[] = [];
  const peer: Sample[] = [];
  const every = Math.max(1, Math.floor(count / 200));
  for (let i = 0; i < count; i++) {
    await channel.send(table);
    if (i % every === 0) {
      self.push(sample('self', i));
      peer.push(sample(receiver.pid!, i));
    }
  }
  channel.close();
  listener.close();
  await new Promise((r) => receiver.once('exit', r));
  report(`${count} hand-offs, sender`, 'hand-offs', self);
  report(`${count} hand-offs, receiver`, 'hand-offs', peer);
}

async function stream(minutes: number): Promise<void> {
  const address = `@arrow-shm-stress-stream-${process.pid}`;
  const listener = listen(address);
  const reader = child('stream-reader', address);
  const channel = await listener.accept();
  const writer = await StreamWriter.open(channel, table.schema, { capacityBytes: 1 << 20 });
  const until = performance.now() + minutes * 60_000;
  const self: Sample[] = [];
  const peer: Sample[] = [];
  let n = 0;
  let next = 0;
  while (performance.now() < until) {
    await writer.write(table);
    if (performance.now() >= next) {
      self.push(sample('self', n));
      peer.push(sample(reader.pid!, n));
      next = performance.now() + 1000;
    }
    n++;
  }
  await writer.close();
  channel.close();
  listener.close();
  await new Promise((r) => reader.once('exit', r));
  report(`stream for ${minutes} min (${n} batches), producer`, 'batches', self);
  report(`stream for ${minutes} min (${n} batches), consumer`, 'batches', peer);
}

const role = process.argv.indexOf('--role');
if (role > 0) {
  const address = process.argv[role + 2]!;
  const channel = await connect(address);
  if (process.argv[role + 1] === 'receiver') {
    for await (const message of channel) {
      message.table.numRows;
      message.close();
    }
  } else {
    const reader = await StreamReader.accept(channel);
    for await (const batch of reader) batch.numRows;
    reader.close();
  }
  channel.close();
} else {
  await handoffs(flag('handoffs', 1_000_000));
  await stream(flag('stream-minutes', 10));
  const killed = await randomKillRun(flag('kill-handoffs', 10_000), flag('kills', 100), flag('seed', 1));
  console.log(`random SIGKILLs: ${killed.handoffs} hand-offs, ${killed.kills} peers killed (${killed.subscriberKills} of them subscribers of a publication that went on), errors seen ${JSON.stringify(killed.codes)}, memfd fds left ${killed.memfdFds}, memfd mappings left ${killed.memfdMappings}`);
  if (killed.memfdFds !== 0 || killed.memfdMappings !== 0) process.exitCode = 1;
}
