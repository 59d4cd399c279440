// The README's and docs' examples, as people use them (issue #14): every block marked
// `<!-- example: NAME.ts -->` is extracted, type-checked with `tsc --noEmit` against the packed
// package installed into a temp app, compiled (Node 20 runs no TypeScript) and run as written,
// with the real processes it describes. Also: docs/api is what the TSDoc comments generate, and
// what item 7 of the issue asked of the CLI (help, `sub` without a publisher, metadata, the demo's
// Arrow IPC row) and of `npm run bench` (its prerequisites checked up front).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from '../src/index.js';
import { cliScript, goldStreams, repoRoot, runCli, runProcess, startListening, waitFor } from './helpers.js';
import { makeApp, noCompilerEnv, packTarball, run } from './package-app.js';

interface Example { source: string; name: string; code: string }

/** README.md and docs/*.md (the generated docs/api has no examples). */
const docFiles = () => ['README.md', ...readdirSync(path.join(repoRoot, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** Every block marked `<!-- example: NAME -->`. */
function examples(): Example[] {
  return docFiles().flatMap((source) =>
    [...readFileSync(path.join(repoRoot, source), 'utf8').matchAll(/<!-- example: (\S+) -->\n```\w+\n([\s\S]*?)```/g)].map((m) => ({ source, name: m[1]!, code: m[2]! })),
  );
}

const tmp = mkdtempSync(path.join(tmpdir(), 'arrow-shm-examples-'));
const app = path.join(tmp, 'app');
const ran = new Set<string>();
const children = new Set<ChildProcess>();

before(() => {
  const list = examples();
  const names = list.map((e) => e.name);
  assert.deepEqual(names, [...new Set(names)], 'two examples share a name');
  // The package as npm would hand it out, installed with no compiler at hand, next to apache-arrow.
  const env = noCompilerEnv(path.join(tmp, 'bin'));
  const arrow = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }).devDependencies['apache-arrow'];
  makeApp(app, env, [packTarball(tmp, env), `apache-arrow@${arrow}`]);
  writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      target: 'ESNext', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: true, outDir: 'out',
      types: ['node'], typeRoots: [path.join(repoRoot, 'node_modules', '@types')],
    },
    include: ['*.ts'],
  }));
  for (const e of list) writeFileSync(path.join(app, e.name), e.code);
  const tsc = path.join(repoRoot, 'node_modules', '.bin', 'tsc');
  for (const args of [['--noEmit', '-p', '.'], ['-p', '.']]) {
    const r = run(tsc, args, { cwd: app, env: process.env });
    assert.equal(r.status, 0, `tsc ${args.join(' ')}:\n${r.stdout}${r.stderr}`);
  }
});

after(() => {
  for (const child of children) child.kill('SIGKILL'); // a failed test's servers
  rmSync(tmp, { recursive: true, force: true });
});

/** Starts an example (compiled) as its own process. */
function start(name: string) {
  ran.add(name);
  const child = spawn(process.execPath, [path.join(app, 'out', name.replace(/\.ts$/, '.js'))], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  children.add(child);
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, stdout, stderr });
    }),
  );
  return { child, done, stdout: () => stdout };
}

/**
 * Whether process pid listens at socket: the file appears at bind, a moment before listen, and a
 * probe connection would be taken for a client. Its socket inodes (/proc/PID/fd) against
 * /proc/net/unix, the path and __SO_ACCEPTCON.
 */
function listeningBy(pid: number, socket: string): boolean {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`, { encoding: 'utf8' }));
      if (m) inodes.add(m[1]!);
    }
  } catch {
    return false; // exited, or an fd closed while we looked
  }
  return readFileSync('/proc/net/unix', 'utf8').split('\n').some((l) => {
    const f = l.trim().split(/\s+/);
    return f[7] === socket && inodes.has(f[6]!) && (parseInt(f[3]!, 16) & 0x10000) !== 0;
  });
}

const ok = (r: { code: number | null; stderr: string }, name: string) => assert.equal(r.code, 0, `${name}: ${r.stderr}`);

test('README "Ten lines": the receiver serves connections side by side, senders exit, Ctrl-C stops it cleanly', async () => {
  const receiver = start('receiver.ts');
  await waitFor(() => listeningBy(receiver.child.pid!, '/tmp/tables.sock'), 'the receiver listening');
  // A client that connects and sends nothing must not hold up the others.
  const idle = await connect('/tmp/tables.sock');
  try {
    const senders = await Promise.all([start('sender.ts').done, start('sender.ts').done]);
    senders.forEach((r) => ok(r, 'sender.ts'));
    // Served, not just queued (the channel ACKs on arrival): printed while the idle one is open.
    await waitFor(() => receiver.stdout() === 'ids 3\nids 3\n', 'both tables printed while another connection idles');
  } finally {
    idle.close();
  }
  receiver.child.kill('SIGINT');
  const r = await receiver.done;
  ok(r, 'receiver.ts');
  assert.equal(r.stdout, 'ids 3\nids 3\n');
  assert.ok(!existsSync('/tmp/tables.sock'), 'the receiver removed its socket file');
});

test('README streams: a StreamWriter to a StreamReader over one channel; both exit', async () => {
  const reader = start('stream-reader.ts');
  await waitFor(() => listeningBy(reader.child.pid!, '/tmp/stream.sock'), 'the reader listening');
  const [w, r] = await Promise.all([start('stream-writer.ts').done, reader.done]);
  ok(w, 'stream-writer.ts');
  ok(r, 'stream-reader.ts');
  assert.equal(r.stdout, '3\n3\n3\n');
});

test('README publish/subscribe: two subscribers get every batch; all three exit', async () => {
  const publisher = start('publisher.ts');
  await waitFor(() => listeningBy(publisher.child.pid!, '/tmp/feed.sock'), 'the publisher listening');
  const subs = await Promise.all([start('subscriber.ts').done, start('subscriber.ts').done]);
  for (const s of subs) {
    ok(s, 'subscriber.ts');
    assert.equal(s.stdout, '3\n');
  }
  ok(await publisher.done, 'publisher.ts');
});

test('every marked example was run by a test above', (t) => {
  assert.deepEqual(examples().map((e) => e.name).filter((n) => !ran.has(n)), []);
  // Fragments that are not whole programs yet (README "Other hosts", the Flight one) are listed, not run.
  for (const source of docFiles()) {
    const text = readFileSync(path.join(repoRoot, source), 'utf8');
    const unmarked = [...text.matchAll(/(?<!-->\n)```(ts|js)\n/g)].map((m) => text.slice(0, m.index).split('\n').length);
    if (unmarked.length > 0) t.diagnostic(`${source}: TypeScript/JavaScript blocks not run (no example marker) at lines ${unmarked.join(', ')}`);
  }
});

test('docs/api is what `npm run docs` generates from the TSDoc comments', async () => {
  const r = await runProcess(process.execPath, [path.join(repoRoot, 'scripts', 'docs.mjs'), '--check'], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
});

test('CLI: --socket help names every kind of address; sub says when no publisher is there and gives up at --timeout-ms', async () => {
  for (const command of ['send', 'recv']) {
    const help = (await runCli([command, '--help'])).stdout.replace(/\s+/g, ' ');
    assert.match(help, /--socket <addr> a socket path, @name \(abstract socket\), or grpc:\/\/host:port \| grpc\+tls:\/\/host:port/, command);
  }
  assert.match((await runCli(['sub', '--help'])).stdout.replace(/\s+/g, ' '), /@name \(abstract socket\); streams are shared memory only/);
  const socket = path.join(tmp, 'nobody.sock');
  const started = performance.now();
  const r = await runCli(['sub', '--socket', socket, '--timeout-ms', '300']);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `arrow-shm: no publisher at ${socket} yet: waiting up to 300 ms\narrow-shm: ERR_TIMEOUT: no publisher at ${socket} within 300 ms\n`);
  assert.ok(performance.now() - started < 5000);
  const flight = await runCli(['sub', '--socket', 'grpc://127.0.0.1:1']);
  assert.equal(flight.code, 2);
  assert.match(flight.stderr, /streams are shared memory only/);
});

test('CLI: recv --print shows metadata as plain key=value; the demo puts Arrow IPC and JSON over a socket next to arrow-shm', async () => {
  const socket = path.join(tmp, 'meta.sock');
  const recv = await startListening(process.execPath, [cliScript, 'recv', '--socket', socket, '--print', '--timeout-ms', '20000']);
  const sent = await runCli(['send', '--socket', socket, '--meta', 'run=42', '--meta', 'who=a b', goldStreams()[0]!]);
  assert.equal(sent.code, 0, sent.stderr);
  const printed = await recv.done;
  assert.equal(printed.code, 0, printed.stderr);
  assert.match(printed.stdout, /^metadata: run=42, who=a b$/m);

  const demo = await runCli(['demo', '--rows', '2000', '--runs', '3']);
  assert.equal(demo.code, 0, demo.stderr);
  assert.match(demo.stdout, /checksum of every value: sender \d+, receiver \d+ \(equal\)/);
  assert.match(demo.stdout, /zero-copy: .*: yes/);
  for (const row of [/arrow-shm \(copy into a sealed memfd/, /Arrow IPC over a UNIX socket .*x slower/, /JSON over a UNIX socket .*x slower/]) assert.match(demo.stdout, row);
});

test('npm run bench says which prerequisites are missing before it starts', async () => {
  const bin = path.join(tmp, 'bench-bin'); // node and sh only: no cargo, no cc
  mkdirSync(bin);
  symlinkSync(process.execPath, path.join(bin, 'node'));
  symlinkSync('/bin/sh', path.join(bin, 'sh'));
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'dist', 'bench', 'run.js')], { encoding: 'utf8', env: { ...process.env, PATH: bin }, timeout: 30_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /^npm run bench: missing prerequisites:\n(  - .+\n)*  - cargo, for the Rust receiver.*\n  - a C compiler \(cc\)/);
  assert.equal(r.stdout, '');
});
