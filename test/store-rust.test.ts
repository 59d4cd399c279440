// The Rust peer's store commands (arrow-shm-rs put/get/ls/rm, peers/rust/src/cli/store.rs) and
// the Node client on one `arrow-shm store` process (docs/PROTOCOL.md §15): every gold file put
// from Node comes back byte for byte through the Rust CLI, and the reverse. Needs the release
// build of the Rust peer (peers/rust/build.sh, which scripts/test.sh runs first).
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { openStore } from '../src/store/client.js';
import { cliScript, goldDir, goldStreams, repoRoot, resources, runProcess, startListening, uniqueAddress, waitForNoLeaks } from './helpers.js';

const rust = path.join(repoRoot, '.build', 'rust', 'release', 'arrow-shm-rs');

test('gold files: put in Node, get with the Rust CLI; put with the Rust CLI, get in Node; ls and rm alike', async () => {
  assert.ok(existsSync(rust), `${rust} is missing: run peers/rust/build.sh`);
  const before = resources();
  const dir = mkdtempSync(path.join(tmpdir(), 'arrow-shm-store-rust-'));
  const address = uniqueAddress('store-rs');
  const { child, done } = await startListening(process.execPath, [cliScript, 'store', '--socket', address]);
  const store = await openStore(address);
  try {
    const files = goldStreams().map((f) => [path.relative(goldDir, f), f] as const);
    for (const [i, [name, file]] of files.entries()) {
      const data = readFileSync(file);
      await store.put(`node/${name}`, new Uint8Array(data), { metadata: { from: 'node' } });
      const out = path.join(dir, `${i}.arrows`);
      const got = await runProcess(rust, ['get', '--store', address, `node/${name}`, '--out', out]);
      assert.equal(got.code, 0, got.stderr);
      assert.deepEqual(readFileSync(out), data, name);

      const put = await runProcess(rust, ['put', '--store', address, `rs/${name}`, file, '--meta', 'from=rust']);
      assert.equal(put.code, 0, put.stderr);
      const message = await store.get(`rs/${name}`);
      try {
        assert.deepEqual(Buffer.from(message.bytes), data, name);
        assert.equal(message.metadata.from, 'rust');
        const entry = (await store.list(`rs/${name}`))[0]!;
        assert.equal(put.stdout, `rs/${name}\tversion ${message.metadata['arrow-shm.version']}\t${entry.bytes} bytes\t${entry.rows} rows\n`);
      } finally {
        message.close();
      }
    }
    // ls: the Node CLI's lines (age aside); rm; the errors as one line each.
    const lines = (r: { stdout: string }) => r.stdout.split('\n').filter(Boolean).map((l) => l.slice(0, l.lastIndexOf('\t')));
    const rsLs = await runProcess(rust, ['ls', '--store', address, '--prefix', 'rs/']);
    const nodeLs = await runProcess(process.execPath, [cliScript, 'ls', '--store', address, '--prefix', 'rs/']);
    assert.equal(rsLs.code, 0, rsLs.stderr);
    assert.equal(lines(rsLs).length, files.length);
    assert.deepEqual(lines(rsLs), lines(nodeLs));
    const [first] = files[0]!;
    assert.equal((await runProcess(rust, ['rm', '--store', address, `rs/${first}`])).code, 0);
    const again = await runProcess(rust, ['rm', '--store', address, `rs/${first}`]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^arrow-shm: ERR_NOT_FOUND: /);
    assert.equal((await store.list('rs/')).length, files.length - 1);
    assert.equal((await store.list('node/')).every((e) => e.holds === 0), true, 'the Rust gets released their holds');
  } finally {
    store.close();
    child.kill('SIGTERM');
    assert.equal((await done).code, 0);
    rmSync(dir, { recursive: true });
  }
  await waitForNoLeaks(before, 'Node store client and Rust CLI');
});
