// The benchmark's peer processes: receivers in Node, Python and Rust, senders in Python and Rust
// (the Node sender is the benchmark process itself). Every program speaks the same contract:
// it prints "ready", a sender then takes one "go" line per hand-off and prints {t0, cpu_ms,
// stages?}, a receiver prints {t1, checksum?, cpu_ms, stages?} per hand-off; times are
// CLOCK_MONOTONIC ms, the same clock in every process.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Method } from './methods.js';

export type Peer = 'node' | 'python' | 'rust';

/** One line of a peer program. */
export interface Line {
  t0?: number;
  t1?: number;
  checksum?: number;
  cpu_ms?: number;
  stages?: [string, number][];
}

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '..', '..');
export const venvPython = path.join(root, '.build', 'venv', 'bin', 'python');
const rustExample = (name: string) => path.join(root, '.build', 'rust', 'release', 'examples', name);

/** A running peer program and its lines. */
export class PeerProcess {
  #lines: Line[] = [];
  #waiters: { resolve: (line: Line) => void; reject: (e: Error) => void }[] = [];
  /** Set once the program exited: later waits fail instead of hanging the benchmark. */
  #gone: Error | null = null;

  private constructor(readonly child: ChildProcess) {
    // 'close': after its output was read to the end, so no line it printed is lost.
    child.once('close', (code, signal) => {
      this.#gone = new Error(`${child.spawnfile} exited (${signal ?? code}) while the benchmark waited for its next line`);
      for (const waiter of this.#waiters.splice(0)) waiter.reject(this.#gone);
    });
  }

  /** The next line the program prints (or sends, for the v8 receiver); rejects if it exits first. */
  next(): Promise<Line> {
    const line = this.#lines.shift();
    if (line) return Promise.resolve(line);
    if (this.#gone) return Promise.reject(this.#gone);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  #push(line: Line): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(line);
    else this.#lines.push(line);
  }

  /** Starts `command` (with `ipc`: forks the Node module `command`), resolving once it is ready (rejecting if it exits first). */
  static start(command: string, args: string[], ipc = false): Promise<PeerProcess> {
    const child = ipc
      ? fork(command, args, { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
      : spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    const peer = new PeerProcess(child);
    return new Promise((resolve, reject) => {
      const onExit = (code: number | null) => reject(new Error(`${path.basename(command)} ${args.join(' ')} exited (${code}) before it was ready`));
      child.once('exit', onExit);
      const ready = () => {
        child.off('exit', onExit);
        resolve(peer);
      };
      if (ipc) child.on('message', (m: Line & { ready?: boolean }) => (m.ready ? ready() : peer.#push(m)));
      else createInterface({ input: child.stdout! }).on('line', (line) => (line === 'ready' ? ready() : peer.#push(JSON.parse(line) as Line)));
    });
  }

  /** Ends the program: closes its stdin, kills it if it has not exited within 5 s. */
  async stop(): Promise<void> {
    this.child.stdin?.end();
    await exited(this.child);
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

export function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.on('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export interface PeerOptions {
  read?: boolean;
  breakdown?: boolean;
}

/** The receiving half of `method` in `peer`, listening at `address`. */
export function startReceiver(peer: Peer, method: Method, address: string, options: PeerOptions = {}): Promise<PeerProcess> {
  const args = ['--method', method, '--socket', address, ...(options.read ? ['--read'] : []), ...(options.breakdown ? ['--breakdown'] : [])];
  if (peer === 'python') return PeerProcess.start(venvPython, [path.join(root, 'bench', 'receiver.py'), ...args]);
  if (peer === 'rust') return PeerProcess.start(rustExample('bench_receiver'), args);
  const script = path.join(here, 'receiver.js');
  return method === 'v8' ? PeerProcess.start(script, args, true) : PeerProcess.start(process.execPath, [script, ...args]);
}

/** The sending half of `method` in `peer` (python or rust), sending the IPC stream in `file` to `address`. */
export function startSender(peer: Exclude<Peer, 'node'>, method: Method, address: string, file: string, options: PeerOptions = {}): Promise<PeerProcess> {
  const args = ['--method', method, '--socket', address, '--file', file, ...(options.breakdown ? ['--breakdown'] : [])];
  if (peer === 'python') return PeerProcess.start(venvPython, [path.join(root, 'bench', 'sender.py'), ...args]);
  return PeerProcess.start(rustExample('bench_sender'), args);
}
