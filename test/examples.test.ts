// The README's and docs' examples, as people use them (issue #14): every block marked
// `<!-- example: NAME.ts -->` is extracted, type-checked with `tsc --noEmit` against the packed
// package installed into a temp app, compiled (Node 20 runs no TypeScript) and run as written,
// with the real processes it describes. Also: docs/api is what the TSDoc comments generate, and
// what item 7 of the issue asked of the CLI (help, `sub` without a publisher, metadata, the demo's
// Arrow IPC row) and of `npm run bench` (its prerequisites checked up front). The programs of
// examples/ run the same way: copied into that app, type-checked (`checkJs`) and run as their
// README says, with the Python venv and the Rust peer the repository builds.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from '../src/index.js';
import { cliScript, goldStreams, repoRoot, runCli, runProcess, startListening, venvPython, waitFor } from './helpers.js';
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
const tsc = path.join(repoRoot, 'node_modules', '.bin', 'tsc');
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
  cpSync(path.join(repoRoot, 'examples'), path.join(app, 'examples'), { recursive: true });
  for (const args of [['--noEmit', '-p', '.'], ['-p', '.']]) {
    const r = run(tsc, args, { cwd: app, env: process.env });
    assert.equal(r.status, 0, `tsc ${args.join(' ')}:\n${r.stdout}${r.stderr}`);
  }
});

after(() => {
  for (const child of children) child.kill('SIGKILL'); // a failed test's servers
  rmSync(tmp, { recursive: true, force: true });
});

/** Starts a README example (compiled) as its own process. */
function start(name: string) {
  ran.add(name);
  return spawnProgram(process.execPath, [path.join(app, 'out', name.replace(/\.ts$/, '.js'))]);
}

/** Starts a program as its own process, killed after 30 s (or after the tests, if one failed). */
function spawnProgram(command: string, args: string[], env: NodeJS.ProcessEnv = process.env) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
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

test('README table store: a store, a put and a zero-copy get in one program, which exits', async () => {
  const r = await start('store.ts').done;
  ok(r, 'store.ts');
  assert.equal(r.stdout, '2 etl 300\ntrades/today 2\n');
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

// examples/: each program run as examples/README.md says, from the app (the packed package).
const examplesRan = new Set<string>();

/** Starts examples/FILE with args: Node for .mjs, the venv's Python (arrow_shm, pandas, ...) for .py. */
function example(file: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) {
  examplesRan.add(file);
  // PYTHONUNBUFFERED='' (unset): unbuffered, print() writes a line and its newline apart, and
  // processes that share this pipe would interleave the pieces.
  return spawnProgram(file.endsWith('.py') ? venvPython : process.execPath, [path.join(app, 'examples', file), ...args], { ...process.env, PYTHONUNBUFFERED: '', ...env });
}

test('examples/: every Node program type-checks (checkJs, strict) against the packed package', () => {
  writeFileSync(path.join(app, 'examples', 'tsconfig.json'), JSON.stringify({
    extends: '../tsconfig.json', compilerOptions: { allowJs: true, checkJs: true, noEmit: true }, include: ['*/*.mjs'],
  }));
  const r = run(tsc, ['-p', 'examples'], { cwd: app, env: process.env });
  assert.equal(r.status, 0, `tsc -p examples:\n${r.stdout}${r.stderr}`);
});

/** Output of several processes or threads, whose lines interleave in any order. */
const lines = (text: string) => text.trim().split('\n').sort();

test('examples/node-to-python: a Python worker reads the service\'s table in place with pandas and Polars, DuckDB answers', async () => {
  const r = await example('node-to-python/service.mjs', [], { PYTHON: venvPython }).done;
  ok(r, 'service.mjs');
  assert.deepEqual(lines(r.stdout), [
    'python: 30000 rows from trades, in place: yes',
    'pandas: mean AAPL price 148.0, in place: yes',
    'polars: 18000 trades of 5 or more, numbers in place: yes',
    'duckdb: 3 symbols',
    'node: AAPL notional 8138594',
    'node: GOOG notional 8137811',
    'node: MSFT notional 8137820',
  ].sort());
});

test('examples/python-to-rust: a Python tool starts the Rust engine and gets its summary', async () => {
  const bin = path.join(repoRoot, '.build', 'rust', 'release');
  assert.ok(existsSync(path.join(bin, 'arrow-shm-rs')), 'the Rust peer is built (peers/rust/build.sh)');
  const r = await example('python-to-rust/ask_engine.py', [], { PATH: `${bin}${path.delimiter}${process.env.PATH}` }).done;
  ok(r, 'ask_engine.py');
  assert.equal(r.stdout.replace(/arrow-shm-rs\/\S+/, 'arrow-shm-rs/VERSION'), [
    'file_id 0: 3 symbols, lines 1-60',
    'file_id 1: 2 symbols, lines 3-90',
    'kind 0: 3 symbols, lines 1-50',
    'kind 1: 2 symbols, lines 20-90',
    'answered by arrow-shm-rs/VERSION',
    '',
  ].join('\n'));
});

test('examples/worker-threads: two worker threads read their tables in place and answer with tables', async () => {
  const r = await example('worker-threads/threads.mjs').done;
  ok(r, 'threads.mjs');
  assert.deepEqual(lines(r.stdout), [
    'main: a worker summed 4999950000',
    'main: a worker summed 9999900000',
    'worker: 100000 values, in place: yes',
    'worker: 100000 values, in place: yes',
  ]);
});

test('examples/flight: a Node client asks a Node Flight server over grpc://; Ctrl-C stops the server', async () => {
  const server = example('flight/server.mjs', ['grpc://127.0.0.1:0']);
  await waitFor(() => /listening on \S+\n/.test(server.stdout()), 'the Flight server listening', 20_000);
  const address = /listening on (\S+)/.exec(server.stdout())![1]!;
  const client = await example('flight/client.mjs', [address]).done;
  ok(client, 'client.mjs');
  assert.equal(client.stdout, 'client: connected over grpc\nclient: Kyoto 40\nclient: Lyon 100\nclient: Oslo 70\n');
  server.child.kill('SIGINT');
  const r = await server.done;
  ok(r, 'server.mjs');
  assert.equal(r.stdout, `server: listening on ${address}\nserver: 6 rows over grpc\n`);
});

test('examples/store: Python workers wait for named tables a Node producer puts in its store', async () => {
  const r = await example('store/producer.mjs', [], { PYTHON: venvPython }).done;
  ok(r, 'producer.mjs');
  // Sizes are the IPC writer's business; rows, versions and the data's notional are the example's.
  assert.deepEqual(lines(r.stdout.replace(/\d+ bytes \(budget \d+\)/, 'B bytes (budget M)').replace(/\d+ bytes$/gm, 'B bytes')), [
    'node: put trades/2026-12-03 version 1, 50000 rows, B bytes',
    'node: put trades/2026-12-04 version 2, 50000 rows, B bytes',
    'python: trades/2026-12-03 version 1: 50000 rows, notional 40,693,330',
    'python: trades/2026-12-04 version 2: 50000 rows, notional 40,968,330',
    'node: the store holds 2 tables, B bytes (budget M); none held now that the workers are done: true',
  ].sort());
});

test('every example directory was run by a test above, with the command examples/README.md gives', () => {
  const dirs = readdirSync(path.join(repoRoot, 'examples'), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  assert.deepEqual([...new Set([...examplesRan].map((f) => path.dirname(f)))].sort(), dirs.sort());
  const readme = readFileSync(path.join(repoRoot, 'examples', 'README.md'), 'utf8');
  for (const file of examplesRan) assert.match(readme, new RegExp(`(node|python) examples/${file.replace('.', '\\.')}`), file);
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
  assert.match((await runCli(['sub', '--help'])).stdout.replace(/\s+/g, ' '), /@name \(abstract socket\), or grpc:\/\/host:port \| grpc\+tls:\/\/host:port \(Arrow Flight: DoGet of "stream"\)/);
  const socket = path.join(tmp, 'nobody.sock');
  const started = performance.now();
  const r = await runCli(['sub', '--socket', socket, '--timeout-ms', '300']);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `arrow-shm: no publisher at ${socket} yet: waiting up to 300 ms\narrow-shm: ERR_TIMEOUT: no publisher at ${socket} within 300 ms\n`);
  assert.ok(performance.now() - started < 5000);
  // Over Flight (§13.5) the same: waiting for a server at the address, then giving up.
  const flight = await runCli(['sub', '--socket', 'grpc://127.0.0.1:1', '--timeout-ms', '300']);
  assert.equal(flight.code, 1);
  assert.equal(flight.stderr, 'arrow-shm: no publisher at grpc://127.0.0.1:1 yet: waiting up to 300 ms\narrow-shm: ERR_TIMEOUT: no publisher at grpc://127.0.0.1:1 within 300 ms\n');
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
  assert.match(r.stderr, /^npm run bench: missing prerequisites:\n(  - .+\n)*  - cargo, for the Rust sender and receiver.*\n  - a C compiler \(cc\)/);
  assert.equal(r.stdout, '');
});
