// The programs of the stream bench contract (one per peer, same roles and flags; see
// bench/stream_peer.ts) and how bench/stream.ts runs a pair of them: a consumer and a producer,
// or a pong and a ping, each a child process whose stdout carries only the contract's JSON lines.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export type PeerName = 'node' | 'python' | 'rust' | 'cpp' | 'iceoryx2-python' | 'iceoryx2-rust';

export interface Program {
  name: PeerName;
  command: string;
  args: string[];
  /** Why it cannot run here ("not built: …"), or null. */
  missing: string | null;
  /** iceoryx2 programs take --wake and size their buffers from --bytes on the listening side too. */
  iceoryx2: boolean;
}

export const ICEORYX2_RS_BINARY = path.join('.build', 'iceoryx2-rs', 'release', 'stream_iceoryx2');

/** Every peer's program, with the reason it cannot run if it is not built (`iceoryx2Rust`: why the Rust anchor cannot, if known). */
export function programs(root: string, iceoryx2Rust: string | null = null): Record<PeerName, Program> {
  const python = path.join(root, '.build', 'venv', 'bin', 'python');
  const noVenv = existsSync(python) ? null : 'no Python venv at .build/venv (scripts/ensure-venv.sh builds it)';
  const binary = (rel: string, build: string): Pick<Program, 'command' | 'missing'> => {
    const file = path.join(root, rel);
    return { command: file, missing: existsSync(file) ? null : `not built: ${rel} is missing (${build})` };
  };
  const pythonScript = (script: string, module: string): Pick<Program, 'command' | 'args' | 'missing'> => ({
    command: python,
    args: [path.join(root, 'bench', script)],
    missing: noVenv ?? (spawnSync(python, ['-c', `import ${module}`]).status === 0 ? null : `the venv has no ${module} module (scripts/ensure-venv.sh installs it)`),
  });
  return {
    node: { name: 'node', command: process.execPath, args: [path.join(root, 'dist', 'bench', 'stream_peer.js')], missing: null, iceoryx2: false },
    python: { name: 'python', ...pythonScript('stream_peer.py', 'arrow_shm'), iceoryx2: false },
    rust: { name: 'rust', args: [], iceoryx2: false, ...binary(path.join('.build', 'rust', 'release', 'examples', 'stream_peer'), 'cargo build --release --example stream_peer --manifest-path peers/rust/Cargo.toml --target-dir .build/rust') },
    cpp: { name: 'cpp', args: [], iceoryx2: false, ...binary(path.join('.build', 'cpp', 'stream_peer'), 'peers/cpp/build.sh') },
    'iceoryx2-python': { name: 'iceoryx2-python', ...pythonScript('stream_iceoryx2.py', 'iceoryx2'), iceoryx2: true },
    'iceoryx2-rust': { name: 'iceoryx2-rust', args: [], iceoryx2: true, ...binary(ICEORYX2_RS_BINARY, 'npm run bench:stream -- --iceoryx2-rust builds it'), ...(iceoryx2Rust ? { missing: iceoryx2Rust } : {}) },
  };
}

/**
 * The iceoryx2 Rust anchor: built (cargo, bench/iceoryx2-rs with its own Cargo.lock) only when
 * asked, else used if already built. Returns why it cannot run, or null, and says which.
 */
export function prepareIceoryx2Rust(root: string, build: boolean): string | null {
  const binary = path.join(root, ICEORYX2_RS_BINARY);
  if (build) {
    console.log('building the iceoryx2 (Rust) anchor: cargo build --release in bench/iceoryx2-rs (a few minutes the first time)');
    const manifest = path.join(root, 'bench', 'iceoryx2-rs', 'Cargo.toml');
    const cargo = spawnSync('cargo', ['build', '--release', '--locked', '--manifest-path', manifest, '--target-dir', path.join(root, '.build', 'iceoryx2-rs')], { stdio: 'inherit' });
    if (cargo.status !== 0) return `its build failed (cargo build in bench/iceoryx2-rs, exit ${cargo.status ?? cargo.error?.message})`;
    return null;
  }
  if (existsSync(binary)) {
    console.log(`iceoryx2 (Rust) anchor: using the binary already built (${ICEORYX2_RS_BINARY}; --iceoryx2-rust rebuilds it)`);
    return null;
  }
  console.log('iceoryx2 (Rust) anchor: not built, its rows are not run (--iceoryx2-rust builds bench/iceoryx2-rs)');
  return 'not built (npm run bench:stream -- --iceoryx2-rust builds bench/iceoryx2-rs)';
}

/** What a consumer prints once the stream ended (contract). */
export interface ConsumeLine {
  batches: number;
  first_sent_ms: number;
  last_recv_ms: number;
  latency_median_us: number;
  latency_p99_us: number;
  cpu_ms: number;
}

export interface PingLine {
  rounds: number;
  rtt_median_us: number;
  rtt_p99_us: number;
  cpu_ms: number;
}

interface CpuLine {
  cpu_ms: number;
}

/** One child of a pair: its JSON lines as they come, its exit, its stderr for the error message. */
class Child {
  readonly lines: object[] = [];
  readonly exited: Promise<void>;
  #stderr = '';
  #ready: Promise<void>;
  #process: ChildProcess;

  constructor(
    readonly label: string,
    program: Program,
    args: string[],
  ) {
    this.#process = spawn(program.command, [...program.args, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let markReady: () => void = () => {};
    this.#ready = new Promise((r) => (markReady = r));
    let pending = '';
    this.#process.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      pending += chunk;
      for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
        const text = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        let line: object;
        try {
          line = JSON.parse(text) as object;
        } catch {
          this.#stderr += `\n(stdout line that is not JSON: ${text.slice(0, 200)})`;
          continue;
        }
        this.lines.push(line);
        if ('ready' in line) markReady();
      }
    });
    this.#process.stderr!.setEncoding('utf8').on('data', (chunk: string) => (this.#stderr = (this.#stderr + chunk).slice(0, 8000)));
    this.exited = new Promise((resolve, reject) => {
      this.#process.once('error', (e) => reject(new Error(`${label} could not start: ${e.message}`)));
      // 'close', not 'exit': the result line may still be unread in the pipe when the process exits.
      this.#process.once('close', (code, signal) => {
        if (code === 0 && !this.#stderr.includes('stdout line that is not JSON')) resolve();
        else reject(new Error(`${label} exited with ${signal ?? code}: ${this.#message()}`));
      });
    });
    this.exited.catch(() => {}); // observed through run(); never an unhandled rejection
  }

  /** The start of its stderr (the error; a stack's first frame) and its last line, on one line. */
  #message(): string {
    const lines = this.#stderr.split('\n').map((l) => l.trim()).filter(Boolean);
    if (!lines.length) return 'no message';
    const shown = lines.length > 3 ? [...lines.slice(0, 2), '…', lines.at(-1)!] : lines;
    return shown.join(' | ').slice(0, 600);
  }

  /** Resolves once it printed {"ready":true}; rejects if it exits first. */
  ready(): Promise<void> {
    return Promise.race([this.#ready, this.exited.then(() => Promise.reject(new Error(`${this.label} exited before it was ready`)))]);
  }

  /** The last line that has `key` (the role's result). */
  result<T>(key: string): T {
    const line = [...this.lines].reverse().find((l) => key in l);
    if (!line) throw new Error(`${this.label} printed no line with "${key}"`);
    return line as T;
  }

  kill(): void {
    if (this.#process.exitCode === null && this.#process.signalCode === null) this.#process.kill('SIGKILL');
  }
}

let sequence = 0;

/** A fresh address for one pair: abstract socket (arrow-shm), a path (socket baseline), a name (iceoryx2). */
function addressFor(kind: 'arrow-shm' | 'socket' | 'iceoryx2'): string {
  const name = `arrow-shm-bench-${process.pid}-${++sequence}`;
  if (kind === 'socket') return path.join(os.tmpdir(), `${name}.sock`);
  return kind === 'iceoryx2' ? name : `@${name}`;
}

/** Runs `body` over the children; on any failure or after `timeoutMs`, kills every child it started. */
async function supervise<T>(timeoutMs: number, what: string, body: (start: (c: Child) => Child) => Promise<T>): Promise<T> {
  const started: Child[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${timeoutMs / 1000} s`)), timeoutMs)));
  try {
    return await Promise.race([body((c) => (started.push(c), c)), timeout]);
  } finally {
    clearTimeout(timer);
    for (const c of started) c.kill();
  }
}

export interface StreamJob {
  bytes: number;
  batches: number;
  intervalMs: number;
  spinMicros: number;
  /** iceoryx2 only: poll for ever, or sleep on an event the publisher notifies. */
  wake: 'poll' | 'event';
  /** The Node program's Arrow-over-a-socket baseline instead of a ring. */
  socket?: boolean;
  /** arrow-shm: the ring's capacity (the programs' default is 64 MiB). */
  capacityBytes?: number;
  /** Node consumer: read with readBlocking() (asleep in poll() on its main thread) instead of the event loop. */
  blocking?: boolean;
}

export interface StreamRun {
  consumer: ConsumeLine;
  producer_cpu_ms: number;
}

/** One stream: `consumer` listens, `producer` connects and writes the batches; both are killed after `timeoutMs`. */
export async function runStream(producer: Program, consumer: Program, job: StreamJob, timeoutMs = 60_000 + job.batches * job.intervalMs * 2): Promise<StreamRun> {
  const address = addressFor(job.socket ? 'socket' : consumer.iceoryx2 ? 'iceoryx2' : 'arrow-shm');
  const wake = consumer.iceoryx2 ? ['--wake', job.wake] : [];
  const socket = job.socket ? ['--socket'] : [];
  const capacity = job.capacityBytes ? ['--capacity-bytes', String(job.capacityBytes)] : [];
  const blocking = job.blocking ? ['--blocking'] : [];
  try {
    return await supervise(timeoutMs, `${producer.name}→${consumer.name}`, async (start) => {
      const c = start(new Child(`the ${consumer.name} consumer`, consumer, ['consume', '--address', address, '--batches', String(job.batches), '--spin-micros', String(job.spinMicros), ...(consumer.iceoryx2 ? ['--bytes', String(job.bytes)] : []), ...wake, ...socket, ...blocking]));
      await c.ready();
      const p = start(new Child(`the ${producer.name} producer`, producer, ['produce', '--address', address, '--bytes', String(job.bytes), '--batches', String(job.batches), '--interval-ms', String(job.intervalMs), ...wake, ...socket, ...capacity]));
      await Promise.all([c.exited, p.exited]);
      const line = c.result<ConsumeLine>('batches');
      if (line.batches !== job.batches) throw new Error(`the consumer counted ${line.batches} of ${job.batches} batches`);
      return { consumer: line, producer_cpu_ms: p.result<CpuLine>('cpu_ms').cpu_ms };
    });
  } finally {
    if (job.socket) rmSync(address, { force: true });
  }
}

export interface PingPongRun {
  ping: PingLine;
  pong_cpu_ms: number;
}

/** One ping-pong: `program`'s pong listens and answers, its ping measures `rounds` round trips. */
export function runPingPong(program: Program, job: { bytes: number; rounds: number; spinMicros: number; wake: 'poll' | 'event' }): Promise<PingPongRun> {
  const address = addressFor(program.iceoryx2 ? 'iceoryx2' : 'arrow-shm');
  const spin = ['--spin-micros', String(job.spinMicros)];
  const extra = program.iceoryx2 ? ['--wake', job.wake, '--bytes', String(job.bytes)] : [];
  return supervise(60_000, `${program.name} ping-pong`, async (start) => {
    const pong = start(new Child(`the ${program.name} pong`, program, ['pong', '--address', address, ...spin, ...extra]));
    await pong.ready();
    const ping = start(new Child(`the ${program.name} ping`, program, ['ping', '--address', address, '--bytes', String(job.bytes), '--rounds', String(job.rounds), ...spin, ...extra]));
    await Promise.all([pong.exited, ping.exited]);
    return { ping: ping.result<PingLine>('rtt_median_us'), pong_cpu_ms: pong.result<CpuLine>('cpu_ms').cpu_ms };
  });
}

export interface CLimit {
  rounds: number;
  spin_median_us: number;
  spin_p99_us: number;
  eventfd_median_us: number;
  eventfd_p99_us: number;
  /** A C reader asleep on an eventfd, woken every idle_gap_ms: send → wake-up. */
  idle_rounds: number;
  idle_gap_ms: number;
  idle_eventfd_median_us: number;
  idle_eventfd_p99_us: number;
}

/** The physical limit: bench/limits/pingpong.c, built here with the system C compiler (null if there is none). */
export function cPingPong(root: string, rounds: number): CLimit | null {
  const binary = path.join(root, '.build', 'bench', 'pingpong');
  mkdirSync(path.dirname(binary), { recursive: true });
  const cc = spawnSync('cc', ['-O2', '-o', binary, path.join(root, 'bench', 'limits', 'pingpong.c')], { stdio: 'inherit' });
  if (cc.status !== 0) {
    console.log('no C compiler: the C ping-pong limit is skipped');
    return null;
  }
  const run = spawnSync(binary, [String(rounds)], { encoding: 'utf8' });
  return run.status === 0 ? (JSON.parse(run.stdout) as CLimit) : null;
}
