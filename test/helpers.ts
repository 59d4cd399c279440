import { readdirSync, readFileSync, readlinkSync, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { native } from '../src/native.js';
import { decodeFrame, encodeFrame, FrameKind, type Frame, type FrameInit } from '../src/transport/frame.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const sharedDir = path.resolve(repoRoot, '..', 'shared');
export const goldDir = path.join(sharedDir, 'testdata', 'arrow-gold');
export const fuzzDir = path.join(sharedDir, 'testdata', 'arrow-fuzz');
export const cliScript = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
export const venvPython = path.join(repoRoot, '.build', 'venv', 'bin', 'python');

export function goldStreams(): string[] {
  return readdirSync(goldDir)
    .filter((d) => !d.endsWith('.md'))
    .flatMap((d) => readdirSync(path.join(goldDir, d)).filter((f) => f.endsWith('.stream')).map((f) => path.join(goldDir, d, f)))
    .sort();
}

export function fuzzFiles(): string[] {
  return readdirSync(fuzzDir)
    .filter((f) => !f.endsWith('.md'))
    .map((f) => path.join(fuzzDir, f))
    .sort();
}

export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/**
 * What this process has open, counted by kind: fd targets (a socket or pipe by its inode, a memfd
 * by its name) and memfd mappings by name. Counts rather than fd numbers or addresses, since pools
 * legitimately replace a spare segment with a new one at another fd and address.
 */
export type Resources = Map<string, number>;

export function resources(): Resources {
  const counts: Resources = new Map();
  const add = (key: string) => counts.set(key, (counts.get(key) ?? 0) + 1);
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      add(`fd -> ${readlinkSync(`/proc/self/fd/${fd}`)}`);
    } catch {
      // the fd readdir itself used, closed again by now
    }
  }
  for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const at = line.indexOf('/memfd:');
    if (at >= 0) add(`mapping of ${line.slice(at)}`);
  }
  return counts;
}

/**
 * What is open now beyond what was open at `before`: what the test leaked. What closed since does
 * not offset it (a previous test's sockets may still have been on their way out at `before`).
 */
export function leaksSince(before: Resources): string[] {
  const leaks: string[] = [];
  for (const [key, count] of resources()) {
    const extra = count - (before.get(key) ?? 0);
    if (extra > 0) leaks.push(`${extra} x ${key}`);
  }
  return leaks;
}

/** Polls until nothing opened since `before` is still open (closing sockets and unmapping can lag a little). */
export async function waitForNoLeaks(before: Resources, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const leaks = leaksSince(before);
    if (leaks.length === 0) return;
    if (Date.now() > deadline) throw new Error(`still open after ${ms} ms (${what}): ${leaks.join('; ')}`);
    await sleep(5);
  }
}

/** Shared-memory mappings of this process (memfd segments). */
export function memfdMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes('/memfd:')).length;
}

/** The fds of stream rings this process holds (to scribble over a ring as a hostile peer would). */
export function ringFds(): number[] {
  return readdirSync('/proc/self/fd')
    .map(Number)
    .filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:arrow-shm-ring');
      } catch {
        return false;
      }
    });
}

let counter = 0;
export function uniqueAddress(tag: string): string {
  return `@arrow-shm-test-${process.pid}-${tag}-${counter++}`;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `condition` until it holds (or fails the test after `ms`): no fixed sleeps in assertions. */
export async function waitFor(condition: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(5);
  }
}

/** A hand-driven peer for hostile-input tests: raw frames and fds, no library logic. */
export class RawPeer {
  private nextId = 1n;
  constructor(readonly fd: number) {}

  static async connect(address: string, handshake = true): Promise<RawPeer> {
    const fd = native.socket(true);
    native.connect(fd, address);
    const peer = new RawPeer(fd);
    if (handshake) {
      peer.send({ kind: FrameKind.Hello, messageId: 0n, metadata: { min_version: '1', max_version: '1', capabilities: '', implementation: 'raw-test', pid: String(process.pid) } });
      const welcome = await peer.receive();
      if (welcome.frame.kind !== FrameKind.Welcome) throw new Error(`expected WELCOME, got ${FrameKind[welcome.frame.kind]}`);
    }
    return peer;
  }

  send(init: Omit<FrameInit, 'messageId'> & { messageId?: bigint }, fds: number[] = []): bigint {
    const id = init.messageId || this.nextId++;
    this.sendBytes(encodeFrame({ ...init, messageId: id }), fds);
    return id;
  }

  sendBytes(bytes: Uint8Array, fds: number[] = []): void {
    if (native.sendmsg(this.fd, bytes, fds) < 0) throw new Error('socket buffer full');
  }

  /** Next frame, or null when the peer closed. */
  async receive(timeoutMs = 5000): Promise<{ frame: Frame; fds: number[] }> {
    const buffer = new Uint8Array(65537);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = native.recvmsg(this.fd, buffer);
      if (got) {
        if (got.bytes === 0) throw Object.assign(new Error('peer closed'), { closed: true });
        return { frame: decodeFrame(buffer.subarray(0, got.bytes)), fds: got.fds };
      }
      if (Date.now() > deadline) throw new Error('timed out waiting for a frame');
      await sleep(2);
    }
  }

  /** Resolves true once the peer has closed the connection. */
  async closedByPeer(timeoutMs = 5000): Promise<boolean> {
    try {
      for (;;) await this.receive(timeoutMs);
    } catch (e) {
      return (e as { closed?: boolean }).closed === true;
    }
  }

  close(): void {
    native.close(this.fd);
  }
}

/** Runs the node CLI; resolves with exit code, stdout and stderr. */
export function runCli(args: string[], options: { input?: Uint8Array; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runProcess(process.execPath, [cliScript, ...args], options);
}

export function runProcess(cmd: string, args: string[], options: { input?: Uint8Array; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    if (options.input) child.stdin.end(options.input);
    else child.stdin.end();
  });
}

/** Starts a listening CLI process and resolves once it printed its "listening" line. */
export async function startListening(cmd: string, args: string[]): Promise<{ child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }>; line: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stderr! });
    rl.on('line', (line) => {
      stderr += line + '\n';
      if (line.includes('arrow-shm: listening on')) resolve(line);
    });
    child.on('close', (code) => reject(new Error(`exited (${code}) before listening: ${stderr}`)));
  });
  return { child, done, line };
}

export const hasVenv = (): boolean => existsSync(venvPython);

/** Reads and releases batches until the stream ends or fails: how many were read, and the error (null at a clean end). */
export async function drainStream(reader: { read(): Promise<{ release(): void } | null> }): Promise<{ read: number; error: unknown }> {
  let read = 0;
  try {
    for (;;) {
      const b = await reader.read();
      if (!b) return { read, error: null };
      b.release();
      read++;
    }
  } catch (e) {
    return { read, error: e };
  }
}
