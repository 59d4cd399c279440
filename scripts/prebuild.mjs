// Builds the prebuilt Node-API addons shipped in the package (prebuilds/<platform>-<arch>/, the
// layout and names node-gyp-build loads) with Debian's cross gcc, straight from native/arrow_shm.c
// and the flags in binding.gyp. Not prebuildify: it drives node-gyp, which downloads the target's
// headers, and cross builds need Docker there (prebuildify-cross); Node-API headers are the same for
// every target, so the running Node's headers serve them all.
//   node scripts/prebuild.mjs            build every target (installs missing toolchains, as root)
//   node scripts/prebuild.mjs --check    exit 1 if a committed binary is stale (test/package.test.ts)
// Each binary embeds "arrow-shm-source-sha256:<hash of its inputs>", so a stale one is detectable.
// glibc builds define fstat64 themselves (a direct syscall, as glibc's own is): glibc 2.33 moved
// it to a new symbol version, which would raise the floor from Node 20's glibc 2.28 to 2.33.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { nodeDir, onPath } from './build-native.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SOURCE = 'native/arrow_shm.c';
/** Everything a binary is made from, besides the compiler: the hash of these is embedded in it. */
const INPUTS = [SOURCE, 'binding.gyp', 'scripts/prebuild.mjs'];

export const TARGETS = [
  { dir: 'linux-x64', libc: 'glibc', cc: 'x86_64-linux-gnu-gcc' },
  { dir: 'linux-x64', libc: 'musl', cc: 'x86_64-linux-gnu-gcc', specs: '/usr/lib/x86_64-linux-musl/musl-gcc.specs' },
  { dir: 'linux-arm64', libc: 'glibc', cc: 'aarch64-linux-gnu-gcc' },
  { dir: 'linux-arm64', libc: 'musl', cc: 'aarch64-linux-gnu-gcc', specs: '/usr/lib/aarch64-linux-musl/musl-gcc.specs' },
].map((t) => ({ ...t, file: path.join('prebuilds', t.dir, `arrow-shm.napi.${t.libc}.node`) }));

export const MARKER = 'arrow-shm-source-sha256:';

const GLIBC_FSTAT64 = `
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <unistd.h>
__attribute__((visibility("hidden"))) int fstat64(int fd, void *st) { return (int)syscall(SYS_fstat, fd, st); }
`;

export function sourceHash() {
  const hash = createHash('sha256');
  for (const input of INPUTS) hash.update(`${input}\0`).update(readFileSync(path.join(root, input))).update('\0');
  return hash.digest('hex');
}

/** Compiles `target` into `out` (a path); throws with the compiler's output on failure. */
export function build(target, out) {
  const gyp = JSON.parse(readFileSync(path.join(root, 'binding.gyp'), 'utf8')).targets[0];
  const tmp = mkdtempSync(path.join(tmpdir(), 'arrow-shm-prebuild-'));
  try {
    const stamp = path.join(tmp, 'source_hash.c');
    const shim = target.libc === 'glibc' ? GLIBC_FSTAT64 : '';
    writeFileSync(stamp, `${shim}__attribute__((used)) static const char arrow_shm_source_sha256[] = "${MARKER}${sourceHash()}";\n`);
    const args = [
      ...(target.specs ? ['-specs', target.specs] : []),
      ...gyp.cflags,
      ...gyp.defines.map((d) => `-D${d}`),
      '-DBUILDING_NODE_EXTENSION', '-D_FILE_OFFSET_BITS=64', '-D_LARGEFILE_SOURCE',
      '-fPIC', '-pthread', `-ffile-prefix-map=${root}=.`, `-ffile-prefix-map=${tmp}=.`,
      '-I', path.join(nodeDir() ?? '/usr', 'include', 'node'),
      '-shared', '-s', '-Wl,-soname=arrow_shm.node', '-Wl,--build-id=sha1',
      '-o', out, SOURCE, stamp,
    ];
    const result = spawnSync(target.cc, args, { cwd: root, encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`${target.cc} failed for ${target.file}:\n${result.stderr || result.error}`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The targets whose committed binary does not embed the current source hash. */
export function staleTargets() {
  const marker = MARKER + sourceHash();
  return TARGETS.filter((t) => {
    try {
      return !readFileSync(path.join(root, t.file)).includes(marker);
    } catch {
      return true;
    }
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  if (process.argv.includes('--check')) {
    const stale = staleTargets();
    for (const t of stale) console.error(`arrow-shm: ${t.file} is stale or missing: run \`npm run prebuild\``);
    process.exit(stale.length > 0 ? 1 : 0);
  }
  const missing = () => TARGETS.some((t) => !onPath(t.cc)) || TARGETS.some((t) => t.specs && !readFileSafe(t.specs));
  if (missing()) {
    console.log('installing the cross toolchains (scripts/prebuild-toolchains.sh)');
    const r = spawnSync('bash', [path.join(root, 'scripts', 'prebuild-toolchains.sh')], { stdio: 'inherit' });
    if (r.status !== 0) process.exit(r.status ?? 1);
  }
  for (const target of TARGETS) {
    const started = Date.now();
    mkdirSync(path.join(root, 'prebuilds', target.dir), { recursive: true });
    build(target, path.join(root, target.file));
    console.log(`${target.file} (${Date.now() - started} ms)`);
  }
}

function readFileSafe(file) {
  try {
    return readFileSync(file);
  } catch {
    return undefined;
  }
}
