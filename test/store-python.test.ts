// Node and Python clients of one `arrow-shm store` process (docs/PROTOCOL.md §15): every gold
// file put from Node comes back byte for byte in Python, and the reverse. Needs the Python peer's
// store client (`arrow_shm.open_store`); until it exists the test says it skipped, and why.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { openStore } from '../src/store/client.js';
import { cliScript, goldDir, goldStreams, hasVenv, resources, runProcess, startListening, uniqueAddress, venvPython, waitForNoLeaks } from './helpers.js';

const PYTHON_CLIENT = `
import json, pathlib, sys
from arrow_shm import open_store

mode, address = sys.argv[1], sys.argv[2]
files = json.loads(sys.stdin.read())
store = open_store(address)
try:
    for name, file in files:
        data = pathlib.Path(file).read_bytes()
        if mode == "put":
            store.put(name, data, metadata={"from": "python"})
            continue
        message = store.get(name)
        try:
            assert message.ipc_bytes.to_pybytes() == data, name
            assert message.metadata["from"] == "node", message.metadata
            assert message.metadata["arrow-shm.name"] == name
        finally:
            message.close()
finally:
    store.close()
print("ok", len(files))
`;

function pythonStoreClient(): string | null {
  if (!hasVenv()) return 'no Python venv (.build/venv)';
  const r = spawnSync(venvPython, ['-c', 'import arrow_shm; arrow_shm.open_store'], { encoding: 'utf8' });
  return r.status === 0 ? null : 'the Python peer has no store client yet (arrow_shm.open_store)';
}

const missing = pythonStoreClient();

test('gold files: put in Node, get in Python; put in Python, get in Node; byte for byte', { skip: missing ?? false }, async () => {
  const before = resources();
  const address = uniqueAddress('store-py');
  const { child, done } = await startListening(process.execPath, [cliScript, 'store', '--socket', address]);
  const store = await openStore(address);
  try {
    const files = goldStreams().map((f) => [path.relative(goldDir, f), f] as const);
    for (const [name, file] of files) await store.put(`node/${name}`, new Uint8Array(readFileSync(file)), { metadata: { from: 'node' } });
    const got = await runProcess(venvPython, ['-c', PYTHON_CLIENT, 'get', address], { input: Buffer.from(JSON.stringify(files.map(([n, f]) => [`node/${n}`, f]))) });
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout.trim(), `ok ${files.length}`);

    const put = await runProcess(venvPython, ['-c', PYTHON_CLIENT, 'put', address], { input: Buffer.from(JSON.stringify(files.map(([n, f]) => [`py/${n}`, f]))) });
    assert.equal(put.code, 0, put.stderr);
    for (const [name, file] of files) {
      const message = await store.get(`py/${name}`);
      try {
        assert.deepEqual(Buffer.from(message.bytes), readFileSync(file), name);
        assert.equal(message.metadata.from, 'python');
      } finally {
        message.close();
      }
    }
    assert.equal((await store.list('py/')).length, files.length);
  } finally {
    store.close();
    child.kill('SIGTERM');
    assert.equal((await done).code, 0);
  }
  await waitForNoLeaks(before, 'Node and Python store clients');
});
