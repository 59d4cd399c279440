// Builds the Node-API addon with node-gyp against the headers of the Node that runs this script,
// so nothing is downloaded (node-gyp would otherwise fetch headers from the internet).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const candidates = [path.resolve(process.execPath, '..', '..'), '/usr', '/usr/local'];
const nodedir = candidates.find((dir) => existsSync(path.join(dir, 'include', 'node', 'node_api.h')));
if (!nodedir) {
  console.error('arrow-shm: cannot find the installed Node headers (include/node/node_api.h) next to', process.execPath);
  process.exit(1);
}
const require = createRequire(import.meta.url);
// Our pinned node-gyp when dev dependencies are installed, else the one bundled with npm.
function findNodeGyp() {
  try {
    return require.resolve('node-gyp/bin/node-gyp.js');
  } catch {
    const npmCli = process.env.npm_execpath;
    const bundled = npmCli && path.join(path.dirname(npmCli), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
    if (bundled && existsSync(bundled)) return bundled;
    console.error('arrow-shm: node-gyp not found (neither installed nor bundled with npm)');
    process.exit(1);
  }
}
const gyp = findNodeGyp();
const result = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--loglevel=warn'], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(result.status ?? 1);
