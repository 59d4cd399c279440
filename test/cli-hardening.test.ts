// The CLI against hostile peers and inputs (issue #13): recv serves connections at the same time
// and drops only the one that breaks the protocol; --out is checked before anything is accepted
// and never left half-written; hostile Arrow IPC files fail fast with a typed error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Schema, Table, tableFromArrays, tableFromIPC, tableToIPC, vectorFromArray, Dictionary, Int32, Utf8 } from 'apache-arrow';
import { ByteBuffer } from 'flatbuffers';
import { Footer } from 'apache-arrow/fb/footer';
import { native } from '../src/native.js';
import { encodeFrame, FrameKind } from '../src/transport/frame.js';
import { arrowFileToStream } from '../src/ipc/file.js';
import { validateIpcStream } from '../src/ipc/messages.js';
import { ArrowShmError } from '../src/errors.js';
import { generateSymbolTable } from '../src/cli/symbols.js';
import { cliScript, goldDir, goldStreams, hasVenv, RawPeer, repoRoot, resources, runCli, sharedDir, sleep, startListening, venvPython, waitFor, waitForNoLeaks } from './helpers.js';

const tmp = () => mkdtempSync(path.join(os.tmpdir(), 'arrow-shm-cli-hard-'));
const startRecv = (args: string[]) => startListening(process.execPath, [cliScript, 'recv', ...args]);

/** What the process `pid` has open: fd targets (sockets by inode) with their counts. */
function openFiles(pid: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      counts.set(target, (counts.get(target) ?? 0) + 1);
    } catch {
      // closed meanwhile
    }
  }
  return counts;
}

/** Sockets `pid` has open now that it did not have at `before`. */
function newSockets(pid: number, before: Map<string, number>): string[] {
  return [...openFiles(pid)].filter(([k, n]) => k.startsWith('socket:') && n > (before.get(k) ?? 0)).map(([k]) => k);
}

const droppedLines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('arrow-shm: dropped a connection'));

test('an idle connection holds up nobody: honest senders are served while it sits there', async () => {
  const dir = tmp();
  const address = path.join(dir, 's');
  const files = goldStreams().slice(0, 2);
  const mine = resources();
  const recv = await startRecv(['--socket', address, '--count', '2', '--out', path.join(dir, 'out'), '--timeout-ms', '20000']);
  const silent = native.socket(true); // connects and never says HELLO
  native.connect(silent, address);
  const idle = await RawPeer.connect(address); // HELLO, then nothing
  try {
    for (const file of files) {
      const sent = await runCli(['send', '--socket', address, '--timeout-ms', '10000', file], { timeoutMs: 20_000 });
      assert.equal(sent.code, 0, sent.stderr);
    }
    const got = await recv.done;
    assert.equal(got.code, 0, got.stderr);
    files.forEach((f, i) => assert.deepEqual(readFileSync(path.join(dir, 'out', `00000${i}.arrows`)), readFileSync(f)));
    assert.equal(await idle.closedByPeer(), true, 'recv closes the idle connection when it exits');
  } finally {
    idle.close();
    native.close(silent);
    recv.child.kill();
  }
  await waitForNoLeaks(mine, 'the raw connections');
  rmSync(dir, { recursive: true });
});

test('frame-level violations drop that connection only: --count 3 counts the honest tables', async () => {
  const dir = tmp();
  const address = path.join(dir, 's');
  const files = goldStreams().slice(0, 3);
  const recv = await startRecv(['--socket', address, '--count', '3', '--out', path.join(dir, 'out'), '--timeout-ms', '20000']);
  const pid = recv.child.pid!;
  const before = openFiles(pid);
  const mine = resources();
  try {
    // A frame with a bad magic.
    const badMagic = await RawPeer.connect(address);
    const bytes = encodeFrame({ kind: FrameKind.Ack, messageId: 1n, correlationId: 1n });
    bytes[0] = 0x00; // the magic is "ASHM"
    badMagic.sendBytes(bytes);
    const refusal = await badMagic.receive();
    assert.equal(refusal.frame.kind, FrameKind.Error);
    assert.equal(refusal.frame.metadata.code, 'ERR_PROTOCOL');
    assert.equal(await badMagic.closedByPeer(), true);
    badMagic.close();
    await waitFor(() => newSockets(pid, before).length === 0, 'recv closed the dropped connection');

    let sent = await runCli(['send', '--socket', address, '--timeout-ms', '10000', files[0]!], { timeoutMs: 20_000 });
    assert.equal(sent.code, 0, sent.stderr);

    // An ACK of protocol version 2 after a version-1 handshake.
    const badVersion = await RawPeer.connect(address);
    badVersion.send({ kind: FrameKind.Ack, version: 2, correlationId: 1n });
    const versionRefusal = await badVersion.receive();
    assert.equal(versionRefusal.frame.metadata.code, 'ERR_PROTOCOL_VERSION');
    assert.equal(await badVersion.closedByPeer(), true);
    badVersion.close();
    await waitFor(() => newSockets(pid, before).length === 0, 'recv closed the dropped connection');

    sent = await runCli(['send', '--socket', address, '--timeout-ms', '10000', files[1]!, files[2]!], { timeoutMs: 20_000 });
    assert.equal(sent.code, 0, sent.stderr);
    const got = await recv.done;
    assert.equal(got.code, 0, got.stderr);
    assert.deepEqual(readdirSync(path.join(dir, 'out')).sort(), ['000000.arrows', '000001.arrows', '000002.arrows']);
    files.forEach((f, i) => assert.deepEqual(readFileSync(path.join(dir, 'out', `00000${i}.arrows`)), readFileSync(f)));
    const dropped = droppedLines(got.stderr);
    assert.equal(dropped.length, 2, got.stderr);
    assert.match(dropped[0]!, /^arrow-shm: dropped a connection \(pid \d+\): ERR_PROTOCOL: /);
    assert.match(dropped[1]!, /^arrow-shm: dropped a connection \(pid \d+\): ERR_PROTOCOL_VERSION: /);
  } finally {
    recv.child.kill();
  }
  await waitForNoLeaks(mine, 'the attackers');
  rmSync(dir, { recursive: true });
});

test('--out is checked before anything is accepted: a missing directory is refused, nothing is acknowledged', async () => {
  const dir = tmp();
  const address = path.join(dir, 's');
  writeFileSync(path.join(dir, 'plain-file'), 'x');
  const cases: [string[], RegExp][] = [
    [['--out', path.join(dir, 'missing', 't.arrows')], /^arrow-shm: cannot write --out .*t\.arrows: no directory .*missing$/],
    [['--count', '2', '--out', path.join(dir, 'plain-file', 'sub')], /^arrow-shm: cannot create the --out directory .*sub: ENOTDIR$/],
  ];
  for (const [args, message] of cases) {
    const got = await runCli(['recv', '--socket', address, ...args]);
    assert.equal(got.code, 2, got.stderr);
    assert.match(got.stderr.trim(), message);
    assert.equal(got.stderr.trim().split('\n').length, 1, got.stderr);
    assert.doesNotMatch(got.stderr, /listening on/);
    // Nobody listened, so no table was acknowledged and then lost: the sender is told.
    const sent = await runCli(['send', '--socket', address, goldStreams()[0]!]);
    assert.equal(sent.code, 1);
    assert.match(sent.stderr, /^arrow-shm: ERR_SYSCALL: no socket at /);
  }
  assert.deepEqual(readdirSync(dir).sort(), ['plain-file']);
  rmSync(dir, { recursive: true });
});

test('a seed-compat sender truncating its memfd during the copy: the whole table or a typed error, never a partial output file', async () => {
  const dir = tmp();
  const address = path.join(dir, 'memfd_socket');
  // 256 MiB of body, so that copying it takes long enough to truncate the segment meanwhile.
  const mine = resources();
  const stream = tableToIPC(tableFromArrays({ x: new Int32Array(64 * 1024 * 1024) }));
  const memfd = native.memfdCreate('torn', stream.byteLength, false);
  const listener = native.socket(false);
  try {
    native.pwrite(memfd, stream, 0);
    native.bind(listener, address);
    native.listen(listener, 1);
    const out = path.join(dir, 'out.arrows');
    const recv = runCli(['recv', '--seed-compat', '--socket', address, '--out', out]);
    let conn = -1;
    await waitFor(() => (conn = native.accept(listener)) >= 0, 'the receiver connects', 10_000);
    assert.equal(native.sendmsg(conn, Uint8Array.of(0x46), [memfd]), 1);
    native.close(conn);
    await sleep(20); // the receiver is copying the segment (an unsealed one is never mapped)
    native.ftruncate(memfd, 0);
    const got = await recv;
    if (got.code === 0) {
      // The copy finished before the truncation: the table is whole.
      assert.deepEqual(readdirSync(dir).sort(), ['memfd_socket', 'out.arrows']);
      assert.equal(readFileSync(out).byteLength, stream.byteLength);
    } else {
      assert.equal(got.code, 1, got.stderr);
      assert.match(got.stderr, /^arrow-shm: ERR_SEGMENT_BOUNDS: the seed sender's segment shrank to \d+ of \d+ bytes while it was read\n$/);
      assert.deepEqual(readdirSync(dir), ['memfd_socket'], 'neither the output nor its temporary file is left');
    }
  } finally {
    native.close(listener);
    native.close(memfd);
  }
  await waitForNoLeaks(mine, 'the seed sender');
  rmSync(dir, { recursive: true });
});

test('attacks.py seed-truncate: the truncated segment is refused (or was copied whole first), never a partial file', { skip: !hasVenv() && 'no Python venv' }, async () => {
  const dir = tmp();
  const address = path.join(dir, 'memfd_socket');
  const out = path.join(dir, 'out.arrows');
  const attacker = startListening(venvPython, [path.join(repoRoot, 'test', 'python', 'attacks.py'), 'seed-truncate', '--socket', address]).catch(() => null);
  await waitFor(() => existsSync(address), 'the attacker listens', 10_000);
  const got = await runCli(['recv', '--seed-compat', '--socket', address, '--out', out]);
  await (await attacker)?.done;
  if (got.code === 0) {
    // The receiver copied the segment before the attacker truncated it: a whole, valid table.
    assert.equal(validateIpcStream(new Uint8Array(readFileSync(out))).recordBatches, 1);
    assert.deepEqual(readdirSync(dir).filter((f) => f !== 'memfd_socket'), ['out.arrows']);
  } else {
    assert.equal(got.code, 1, got.stderr);
    assert.match(got.stderr, /^arrow-shm: ERR_SEGMENT_BOUNDS: /);
    assert.deepEqual(readdirSync(dir).filter((f) => f !== 'memfd_socket'), []);
  }
  rmSync(dir, { recursive: true });
});

// apache/arrow-testing data/arrow-ipc-file/clusterfuzz-testcase-minimized-arrow-ipc-file-fuzz-6240547580936192
// (Apache-2.0): 698 bytes that made arrow-js's file reader spin forever.
const SPINNING_FILE = Buffer.from('QVJST1cxAAD/////QAIAABAAAAAAjAAAAAAAAAAACAAAAAAAAABoAAAAAAAAAAgAAAAAAAcAAAALDg8AAAAAAP////8AAAAAEAAAAAwAFAAGAAgADAAQAAwAAAAAAAMAMAAAACgAAAAEAAAAAQAAAFACAAAAAAAAIAIAAAAAAACwAAAAAAAAAAAAAAAAAAAAhP7//wQAAAADAAAAUAEAAKgAAAAEAAAAUP7//wAAAQ6MAAAAHAAAAAQAAAACAAAAUAAAACQAAAAIAAwABgAIAAgAAAAAAAAABAAAAAIAAAAFAAAA/wAAAJD+//8AAAECGAAAAAwAAAAEAAAAAAAAAL7+//8IAAAAAgAAAHUxAAC4/v//AAABAhwAAAAMAAAABAAAAAAAAACo/v//AAAAASAAAAACAAAAdTAAAAUAAABkZW5zZQAAAPD+//8AAAEOgAAAABQAAAAEAAAAAgAAAEQAAAAYAAAAXP///wQAAAACAAAABQAAAAoAAAAk////AAABAhgAAAAMAAAABAAAAAAAAABS////CAAAAAIAAAB1MQAATP///wAAAQIcAAAADAAAAAQAAAAAAAAAPP///wAAAAEgAAAAAgAAAHUwAAAGAAAAc3BhcnNlAAAQABQACAAAAAcADAAAABAAEAAAAAAAAA6oAAAAHAAAAAQAAAACAAAAZAAAACAAAAAIAAgAAAAEAAgAAAAEAAAAAgAAAAUAAAAKAAAA0P///wAAAQIgAAAAFAAAAAQAAAAAAAAAAAAGAAgABAAGAAAACAAAAAIAAAB1MQAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAECJAAAABQAAAAEAAAAAAAAAAgADAAIAAcACAAAAAAAAAEgAAAAAgAAAHUxAAAOAAAAc3BhcnNlX25vbm51bGwAAGgCAABBUlJPVzE=', 'base64');

/** The Arrow IPC file-format fuzz corpus (arrow-testing data/arrow-ipc-file), where a checkout has it. */
function fileFuzzCorpus(): string[] {
  const dir = [process.env.ARROW_SHM_IPC_FILE_FUZZ, path.join(sharedDir, 'testdata', 'arrow-ipc-file')].find((d) => d && existsSync(d));
  return dir ? readdirSync(dir).filter((f) => !f.endsWith('.md')).map((f) => path.join(dir, f)).sort() : [];
}

test('hostile Arrow IPC files through send: each ends within 10 s with a typed error or is sent', async () => {
  const dir = tmp();
  const spinning = path.join(dir, 'spinning.arrow');
  writeFileSync(spinning, SPINNING_FILE);
  const files = [spinning, ...fileFuzzCorpus()];
  const outcomes = new Map<string, number>();
  // Two at a time; nobody listens at the address, so a file that passes every check fails to connect.
  for (let i = 0; i < files.length; i += 2) {
    await Promise.all(
      files.slice(i, i + 2).map(async (file) => {
        const r = await runCli(['send', '--socket', path.join(dir, 'nobody'), file], { timeoutMs: 10_000 });
        assert.equal(r.code, 1, `${file}: killed after 10 s or unexpected status ${r.code}: ${r.stderr}`);
        assert.match(r.stderr.trimEnd(), /^arrow-shm: (ERR_IPC_(INVALID|TRUNCATED|LIMIT|UNSUPPORTED): .+$|ERR_SYSCALL: no socket at )/, file);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
        const code = /ERR_[A-Z_]+/.exec(r.stderr)![0];
        outcomes.set(code, (outcomes.get(code) ?? 0) + 1);
      }),
    );
  }
  const spun = await runCli(['send', '--socket', path.join(dir, 'nobody'), spinning], { timeoutMs: 10_000 });
  assert.match(spun.stderr, /^arrow-shm: ERR_IPC_INVALID: .*spinning\.arrow: Arrow IPC file: record batch block 0 .* is not inside the file/);
  console.log(`file-format fuzz files: ${files.length} (${files.length - 1} from the corpus), outcomes ${JSON.stringify(Object.fromEntries(outcomes))}`);
  rmSync(dir, { recursive: true });
});

/** Every gold IPC file, its footer's blocks and where each block's struct lies in the file. */
function goldFile(name: string): { bytes: Uint8Array; footerStart: number; blocks: { kind: 'dictionary' | 'record'; at: number }[] } {
  const bytes = new Uint8Array(readFileSync(path.join(goldDir, name)));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const footerLength = view.getInt32(bytes.length - 10, true);
  const footerStart = bytes.length - 10 - footerLength;
  const footer = Footer.getRootAsFooter(new ByteBuffer(bytes.subarray(footerStart, bytes.length - 10)));
  const blocks: { kind: 'dictionary' | 'record'; at: number }[] = [];
  for (let i = 0; i < footer.dictionariesLength(); i++) blocks.push({ kind: 'dictionary', at: footerStart + footer.dictionaries(i)!.bb_pos });
  for (let i = 0; i < footer.recordBatchesLength(); i++) blocks.push({ kind: 'record', at: footerStart + footer.recordBatches(i)!.bb_pos });
  return { bytes, footerStart, blocks };
}

test('IPC files: every gold file and arrow-js files re-frame to their stream; each footer and block check refuses its violation', () => {
  for (const d of readdirSync(goldDir).filter((d) => !d.endsWith('.md'))) {
    for (const f of readdirSync(path.join(goldDir, d)).filter((f) => f.endsWith('.arrow_file'))) {
      const stream = readFileSync(path.join(goldDir, d, f.replace('.arrow_file', '.stream')));
      const reframed = arrowFileToStream(goldFile(path.join(d, f)).bytes);
      // Byte for byte the gold stream, but for one file whose writer framed the Schema differently.
      if (!f.includes('map_non_canonical')) assert.deepEqual(Buffer.from(reframed), stream, f);
      const { messages, recordBatches, dictionaryBatches } = validateIpcStream(reframed);
      assert.deepEqual({ messages, recordBatches, dictionaryBatches }, (({ messages, recordBatches, dictionaryBatches }) => ({ messages, recordBatches, dictionaryBatches }))(validateIpcStream(stream)), f);
    }
  }
  // arrow-js writes no Schema message into a file's stream (only the footer has the schema).
  const dictionary = vectorFromArray(['a', 'b', 'a', null], new Dictionary(new Utf8(), new Int32()));
  for (const table of [generateSymbolTable(100), new Table({ d: dictionary }), new Table(new Schema(generateSymbolTable(1).schema.fields))]) {
    const reframed = tableFromIPC(arrowFileToStream(tableToIPC(table, 'file')));
    assert.equal(reframed.numRows, table.numRows);
    assert.deepEqual(reframed.schema.fields.map(String), table.schema.fields.map(String));
    assert.deepEqual(JSON.stringify(reframed.toArray(), (_, v) => (typeof v === 'bigint' ? String(v) : v)), JSON.stringify(table.toArray(), (_, v) => (typeof v === 'bigint' ? String(v) : v)));
  }
  const mutate = (name: string, change: (view: DataView, g: ReturnType<typeof goldFile>) => void): Uint8Array => {
    const g = goldFile(name);
    const bytes = g.bytes.slice();
    change(new DataView(bytes.buffer), g);
    return bytes;
  };
  const primitive = '1.0.0-littleendian/generated_primitive.arrow_file';
  const withDictionary = '1.0.0-littleendian/generated_dictionary.arrow_file';
  const record = (g: ReturnType<typeof goldFile>, i: number) => g.blocks.filter((b) => b.kind === 'record')[i]!.at;
  const cases: [string, Uint8Array, RegExp][] = [
    ['no trailing magic', mutate(primitive, (v) => v.setUint8(v.byteLength - 1, 0)), /does not end with the ARROW1 magic/],
    ['footer longer than the file', mutate(primitive, (v) => v.setInt32(v.byteLength - 10, 0x7fffffff, true)), /a footer of 2147483647 bytes does not fit/],
    ['negative footer length', mutate(primitive, (v) => v.setInt32(v.byteLength - 10, -8, true)), /a footer of -8 bytes does not fit/],
    ['block inside the footer', mutate(primitive, (v, g) => v.setBigInt64(record(g, 0), BigInt(g.footerStart), true)), /record batch block 0 .* is not inside the file/],
    ['negative block offset', mutate(primitive, (v, g) => v.setBigInt64(record(g, 0), -1n << 62n, true)), /record batch block 0 .* is not inside the file/],
    ['huge body length', mutate(primitive, (v, g) => v.setBigInt64(record(g, 0) + 16, 1n << 62n, true)), /record batch block 0 .* is not inside the file/],
    ['zero metadata length', mutate(primitive, (v, g) => v.setInt32(record(g, 0) + 8, 0, true)), /record batch block 0 .* is not inside the file/],
    ['two blocks, one message', mutate(primitive, (v, g) => new Uint8Array(v.buffer).copyWithin(record(g, 1), record(g, 0), record(g, 0) + 24)), /record batch block 1 at offset \d+ overlaps record batch block 0/],
    ['a dictionary where a record batch belongs', mutate(withDictionary, (v, g) => new Uint8Array(v.buffer).copyWithin(record(g, 0), g.blocks[0]!.at, g.blocks[0]!.at + 24)), /overlaps|does not hold exactly one record batch message/],
    ['block cut short', mutate(primitive, (v, g) => v.setBigInt64(record(g, 0) + 16, v.getBigInt64(record(g, 0) + 16, true) - 8n, true)), /record batch block 0 at offset \d+: /],
    ['metadata length off by 8', mutate(primitive, (v, g) => v.setInt32(record(g, 0) + 8, v.getInt32(record(g, 0) + 8, true) - 8, true)), /record batch block 0 at offset \d+: /],
  ];
  for (const [what, bytes, message] of cases) {
    assert.throws(
      () => arrowFileToStream(bytes),
      (e: unknown) => e instanceof ArrowShmError && e.code.startsWith('ERR_IPC_') && message.test(e.message),
      what,
    );
  }
});

test('send on a file that is not Arrow says so, naming the file', async () => {
  const cases: [string[], Uint8Array | undefined, RegExp][] = [
    [[path.join(repoRoot, 'package.json')], undefined, /^arrow-shm: ERR_IPC_INVALID: .*package\.json is not an Arrow IPC stream or file\n$/],
    [['-'], new TextEncoder().encode('{"not": "arrow"}\n'), /^arrow-shm: ERR_IPC_INVALID: standard input is not an Arrow IPC stream or file\n$/],
  ];
  for (const [files, input, message] of cases) {
    const r = await runCli(['send', '--socket', '/tmp/nobody-listens-here', ...files], { input });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, message);
  }
});
