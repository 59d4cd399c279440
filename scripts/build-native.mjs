// The package's `install` script: use the prebuilt addon for this platform when there is one that
// loads (prebuilds/, made by scripts/prebuild.mjs), else build native/arrow_shm.c with node-gyp
// against the headers of the Node that runs this script, so nothing is downloaded (node-gyp would
// otherwise fetch headers from the internet). A git checkout (where the C source may be newer than
// the prebuilds), `--from-source` and `npm install --build-from-source` always build.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

/** The directory holding include/node/node_api.h for the running Node, or undefined. */
export function nodeDir() {
  const candidates = [path.resolve(process.execPath, '..', '..'), '/usr', '/usr/local'];
  return candidates.find((dir) => existsSync(path.join(dir, 'include', 'node', 'node_api.h')));
}

/** glibc or musl, the way node-gyp-build tells them apart when it picks a prebuild. */
function libc() {
  return process.env.LIBC || (existsSync('/etc/alpine-release') ? 'musl' : 'glibc');
}

/** Whether `command` (a name on PATH or a path; $CC may carry arguments) exists. */
export function onPath(command) {
  const file = command.trim().split(/\s+/)[0] ?? '';
  if (file.includes('/')) return existsSync(file);
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => dir && existsSync(path.join(dir, file)));
}

/** The prebuilt addon node-gyp-build picks for this platform (ignoring build/), if it loads here. */
function loadablePrebuild() {
  process.env.PREBUILDS_ONLY = '1'; // read by node-gyp-build when it is first required, just below
  try {
    const file = require('node-gyp-build').path(root);
    require(file);
    return file;
  } catch {
    return undefined;
  }
}

// Our pinned node-gyp when dev dependencies are installed, else the one bundled with npm.
function findNodeGyp() {
  try {
    return require.resolve('node-gyp/bin/node-gyp.js');
  } catch {
    const npmCli = process.env.npm_execpath;
    const bundled = npmCli && path.join(path.dirname(npmCli), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
    if (bundled && existsSync(bundled)) return bundled;
    return undefined;
  }
}

function fail(message) {
  console.error(`arrow-shm: ${message}`);
  process.exit(1);
}

function buildFromSource() {
  const nodedir = nodeDir();
  if (!nodedir) fail(`cannot find the installed Node headers (include/node/node_api.h) next to ${process.execPath}`);
  const missing = [process.env.CC || 'cc', 'make', 'python3'].filter((tool) => !onPath(tool));
  if (missing.length > 0) {
    fail(`no prebuilt addon for ${process.platform}-${process.arch} (${libc()}) here and no ${missing.join('/')} on PATH to build it: install a C toolchain (e.g. apt-get install build-essential python3, apk add build-base python3), then \`npm rebuild arrow-shm\``);
  }
  const gyp = findNodeGyp();
  if (!gyp) fail('node-gyp not found (neither installed nor bundled with npm)');
  const result = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--loglevel=warn'], { cwd: root, stdio: 'inherit' });
  process.exit(result.status ?? 1);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const fromSource = process.argv.includes('--from-source') || process.env.npm_config_build_from_source === 'true' || existsSync(path.join(root, '.git'));
  if (fromSource || !loadablePrebuild()) buildFromSource();
}
