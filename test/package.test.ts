// The npm package as people install it (issue #14): the prebuilt addons (ELF facts, not stale,
// reproducible), the tarball's contents, and apps that install the tarball with no C compiler on
// PATH and hand a table between two processes, at the lowest and highest apache-arrow the peer
// range allows; a Table from another copy of apache-arrow is refused with a typed error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from './helpers.js';
import { makeApp, noCompilerEnv, packTarball, run } from './package-app.js';

interface Target { dir: string; libc: 'glibc' | 'musl'; cc: string; specs?: string; file: string }
interface Prebuild {
  TARGETS: Target[];
  MARKER: string;
  sourceHash(): string;
  staleTargets(): Target[];
  build(target: Target, out: string): void;
}
const prebuild = (await import(pathToFileURL(path.join(repoRoot, 'scripts', 'prebuild.mjs')).href)) as Prebuild;
const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { peerDependencies: Record<string, string> };

interface Elf { machine: number; type: number; interpreter: boolean; needed: string[]; versions: string[]; comment: string }

/** The few ELF facts that decide where a shared object loads (64-bit little-endian only). */
function readElf(file: string): Elf {
  const b = readFileSync(file);
  assert.equal(b.readUInt32BE(0), 0x7f454c46, `${file}: not ELF`);
  assert.equal(b[4], 2, `${file}: not 64-bit`);
  assert.equal(b[5], 1, `${file}: not little-endian`);
  const phoff = Number(b.readBigUInt64LE(0x20));
  const shoff = Number(b.readBigUInt64LE(0x28));
  const [phentsize, phnum, shentsize, shnum] = [b.readUInt16LE(0x36), b.readUInt16LE(0x38), b.readUInt16LE(0x3a), b.readUInt16LE(0x3c)];
  const loads: { vaddr: number; offset: number; size: number }[] = [];
  let dynamic: number | undefined;
  let interpreter = false;
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    const type = b.readUInt32LE(p);
    const offset = Number(b.readBigUInt64LE(p + 8));
    if (type === 1) loads.push({ vaddr: Number(b.readBigUInt64LE(p + 16)), offset, size: Number(b.readBigUInt64LE(p + 32)) });
    if (type === 2) dynamic = offset;
    if (type === 3) interpreter = true;
  }
  const fileOffset = (vaddr: number) => {
    const l = loads.find((s) => vaddr >= s.vaddr && vaddr < s.vaddr + s.size);
    assert.ok(l, `${file}: address ${vaddr} outside every PT_LOAD`);
    return vaddr - l.vaddr + l.offset;
  };
  const tags = new Map<number, number[]>();
  for (let d = dynamic ?? 0; dynamic !== undefined; d += 16) {
    const tag = Number(b.readBigInt64LE(d));
    if (tag === 0) break;
    tags.set(tag, [...(tags.get(tag) ?? []), Number(b.readBigUInt64LE(d + 8))]);
  }
  const strtab = fileOffset(tags.get(5)![0]!);
  const str = (at: number) => b.toString('latin1', strtab + at, b.indexOf(0, strtab + at));
  const needed = (tags.get(1) ?? []).map(str);
  const versions: string[] = [];
  // DT_VERNEED (0x6ffffffe), DT_VERNEEDNUM (0x6fffffff): Elf64_Verneed entries, each with Vernaux entries.
  let vn = tags.has(0x6ffffffe) ? fileOffset(tags.get(0x6ffffffe)![0]!) : 0;
  for (let i = 0; i < (tags.get(0x6fffffff)?.[0] ?? 0); i++) {
    let aux = vn + b.readUInt32LE(vn + 8);
    for (let j = 0; j < b.readUInt16LE(vn + 2); j++) {
      versions.push(str(b.readUInt32LE(aux + 8)));
      aux += b.readUInt32LE(aux + 12);
    }
    vn += b.readUInt32LE(vn + 12);
  }
  // The .comment section names the compiler (found by its name in the section-name table).
  const section = (i: number) => shoff + i * shentsize;
  const shstr = Number(b.readBigUInt64LE(section(b.readUInt16LE(0x3e)) + 24));
  let comment = '';
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (b.toString('latin1', shstr + b.readUInt32LE(s), b.indexOf(0, shstr + b.readUInt32LE(s))) !== '.comment') continue;
    const offset = Number(b.readBigUInt64LE(s + 24));
    comment = b.toString('latin1', offset, offset + Number(b.readBigUInt64LE(s + 32))).replace(/\0+/g, '\n').trim();
  }
  return { machine: b.readUInt16LE(0x12), type: b.readUInt16LE(0x10), interpreter, needed, versions, comment };
}

const MACHINE: Record<string, number> = { 'linux-x64': 62, 'linux-arm64': 183 };
const glibcVersion = (v: string) => v.replace('GLIBC_', '').split('.').map(Number) as [number, number];

test('every prebuilt addon is a shared object for its machine and libc, built from the current source', () => {
  const hash = prebuild.sourceHash();
  for (const t of prebuild.TARGETS) {
    const file = path.join(repoRoot, t.file);
    const elf = readElf(file);
    assert.equal(elf.type, 3, `${t.file}: ET_DYN`);
    assert.equal(elf.machine, MACHINE[t.dir], `${t.file}: e_machine`);
    assert.equal(elf.interpreter, false, `${t.file}: a shared object has no PT_INTERP`);
    assert.ok(elf.needed.every((n) => /^(libc\.so(\.6)?|ld-linux-x86-64\.so\.2)$/.test(n)), `${t.file}: needs only libc, not ${elf.needed}`);
    const glibc = elf.versions.filter((v) => v.startsWith('GLIBC_'));
    if (t.libc === 'glibc') {
      assert.ok(elf.needed.includes('libc.so.6'), `${t.file}: glibc's libc.so.6`);
      // Node 20's own floor: glibc 2.28 (scripts/prebuild.mjs keeps fstat64 off GLIBC_2.33).
      const newest = glibc.map(glibcVersion).sort((a, b) => b[0] - a[0] || b[1] - a[1])[0]!;
      assert.ok(newest[0] === 2 && newest[1] <= 28, `${t.file}: needs glibc ${newest.join('.')} > 2.28`);
    } else {
      assert.deepEqual(elf.needed, ['libc.so'], `${t.file}: musl's libc.so only`);
      assert.deepEqual(glibc, [], `${t.file}: no glibc symbol versions`);
    }
    assert.ok(readFileSync(file).includes(prebuild.MARKER + hash), `${t.file} is stale (built from other sources): run \`npm run prebuilds\``);
  }
  assert.deepEqual(prebuild.staleTargets(), []);
});

test('the prebuilt addons are reproducible: rebuilt with the same compiler, byte for byte the same', (t) => {
  const version = (cc: string) => spawnSync(cc, ['--version'], { encoding: 'utf8' }).stdout?.split('\n')[0]?.replace(/^\S+ /, '') ?? '';
  const tmp = mkdtempSync(path.join(tmpdir(), 'arrow-shm-rebuild-'));
  try {
    let compared = 0;
    for (const target of prebuild.TARGETS) {
      const built = readElf(path.join(repoRoot, target.file)).comment; // "GCC: (Debian 12.2.0-14) 12.2.0"
      const ours = version(target.cc);
      if (!ours || !built.endsWith(ours) || (target.specs && !existsSync(target.specs))) {
        t.diagnostic(`${target.file}: not rebuilt here (made by "${built}", ${target.cc} here: "${ours || 'absent'}"; scripts/prebuild-toolchains.sh installs it)`);
        continue;
      }
      const out = path.join(tmp, `${target.dir}.${target.libc}.node`);
      prebuild.build(target, out);
      assert.ok(readFileSync(out).equals(readFileSync(path.join(repoRoot, target.file))), `${target.file} differs from a rebuild: run \`npm run prebuilds\``);
      compared++;
    }
    t.diagnostic(`${compared} of ${prebuild.TARGETS.length} prebuilds rebuilt and compared`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('the x64 glibc prebuild loads in this Node and works', () => {
  const file = path.join(repoRoot, 'prebuilds', 'linux-x64', 'arrow-shm.napi.glibc.node');
  const script = `const a = require(${JSON.stringify(file)}); const fd = a.memfdCreate('t', 4096, true); a.addSeals(fd, a.constants.F_SEAL_SEAL); console.log(a.getSeals(fd) & a.constants.F_SEAL_SEAL, a.fstat(fd).size); a.close(fd);`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), '1 4096');
  // The musl ones cannot load into a glibc Node (their DT_NEEDED libc.so is musl's); checked by ELF only.
});

test('every prebuilt addon loads under its own libc\'s dynamic linker (arm64 under qemu), Node-API stubbed', (t) => {
  const has = (command: string) => spawnSync('sh', ['-c', `command -v ${command}`]).status === 0;
  const tmp = mkdtempSync(path.join(tmpdir(), 'arrow-shm-dlopen-'));
  try {
    let loaded = 0;
    for (const target of prebuild.TARGETS) {
      const file = path.join(repoRoot, target.file);
      const emulated = target.dir === 'linux-arm64';
      const missing = [target.cc, 'nm', ...(emulated ? ['qemu-aarch64'] : [])].filter((c) => !has(c));
      if (missing.length > 0 || (target.specs && !existsSync(target.specs))) {
        t.diagnostic(`${target.file}: not loaded here (missing ${missing.join(', ') || target.specs}; scripts/prebuild-toolchains.sh installs them)`);
        continue;
      }
      // A program for the target's libc that defines the Node-API and libuv functions the addon
      // imports (as Node would) and dlopens it with every symbol bound now: libc's must resolve.
      const imports = spawnSync('nm', ['-D', '--undefined-only', file], { encoding: 'utf8' }).stdout.split('\n').map((l) => l.trim().split(/\s+/)[1] ?? '');
      const stubs = imports.filter((name) => /^(napi_|node_api_|uv_)\w+$/.test(name)).map((name) => `int ${name}(void) { return 1; }`);
      assert.ok(stubs.length > 10, `${target.file}: imports ${stubs.length} Node-API functions`);
      const source = path.join(tmp, 'load.c');
      writeFileSync(source, ['#include <dlfcn.h>', '#include <stdio.h>', ...stubs,
        'int main(int argc, char **argv) { void *h = dlopen(argv[1], RTLD_NOW); if (!h) { puts(dlerror()); return 1; }',
        '  puts(dlsym(h, "napi_register_module_v1") ? "loaded" : "no napi_register_module_v1"); return 0; }'].join('\n'));
      const program = path.join(tmp, `load-${target.dir}-${target.libc}`);
      const cc = spawnSync(target.cc, [...(target.specs ? ['-specs', target.specs] : []), '-rdynamic', '-o', program, source], { encoding: 'utf8' });
      assert.equal(cc.status, 0, cc.stderr);
      const env = { ...process.env, QEMU_LD_PREFIX: '/usr/aarch64-linux-gnu' }; // where Debian's cross glibc lives
      const r = spawnSync(emulated ? 'qemu-aarch64' : program, emulated ? [program, file] : [file], { encoding: 'utf8', env });
      assert.equal(`${r.stdout}${r.stderr}`.trim(), 'loaded', target.file);
      loaded++;
    }
    t.diagnostic(`${loaded} of ${prebuild.TARGETS.length} prebuilds loaded`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('the tarball installs with no C compiler and hands a table between two processes; apache-arrow at both ends of its peer range', (t) => {
  const tmp = mkdtempSync(path.join(tmpdir(), 'arrow-shm-package-'));
  try {
    const env = noCompilerEnv(path.join(tmp, 'bin'));
    assert.equal(run('sh', ['-c', 'command -v cc gcc make || true'], { env }).stdout, '', 'the PATH still has a compiler');
    const started = Date.now();
    const tarball = packTarball(tmp, env);

    // The peer range's highest version (what npm installs for it) and its lowest.
    const range = pkg.peerDependencies['apache-arrow']!;
    const lowest = /^\^(\d+\.\d+\.\d+)$/.exec(range)?.[1];
    assert.ok(lowest, `peer range ${range}: the test knows only ^x.y.z`);
    const app = path.join(tmp, 'app');
    const highestVersion = makeApp(app, env, [tarball]);
    const low = path.join(tmp, 'app-lowest');
    assert.equal(makeApp(low, env, [tarball, `apache-arrow@${lowest}`]), lowest);
    const second = path.join(tmp, 'second-copy');
    makeApp(second, env, [`apache-arrow@${highestVersion}`]);
    t.diagnostic(`pack + 3 installs: ${Date.now() - started} ms; apache-arrow ${lowest} and ${highestVersion}`);

    const installed = path.join(app, 'node_modules', 'arrow-shm');
    assert.ok(!existsSync(path.join(installed, 'build')), 'nothing was compiled');
    const picked = run('node', ['-e', "console.log(require('node-gyp-build').path('node_modules/arrow-shm'))"], { cwd: app, env });
    assert.equal(picked.stdout.trim(), path.join(installed, 'prebuilds', 'linux-x64', 'arrow-shm.napi.glibc.node'));
    for (const dir of [app, low]) {
      const r = run('node', ['handoff.mjs'], { cwd: dir, env, timeout: 30_000 });
      assert.equal(r.status, 0, `${dir}: ${r.stderr}`);
      assert.deepEqual(JSON.parse(r.stdout), [{ id: 1, name: 'a' }, { id: 2, name: 'b' }, { id: 3, name: 'c' }]);
    }

    // The install script, where npm runs it (npm 11 only after `npm install-scripts approve`):
    // a matching prebuild that loads means no build; without one, a one-line hint, no node-gyp stack.
    const script = path.join(installed, 'scripts', 'build-native.mjs');
    const withPrebuild = run('node', [script], { cwd: installed, env });
    assert.equal(withPrebuild.status, 0, withPrebuild.stderr);
    assert.ok(!existsSync(path.join(installed, 'build')));
    const empty = path.join(tmp, 'no-prebuilds');
    mkdirSync(empty);
    const without = run('node', [script], { cwd: installed, env: { ...env, ARROW_SHM_PREBUILD: empty } }); // node-gyp-build's override
    assert.equal(without.status, 1);
    assert.match(without.stderr, /^arrow-shm: no prebuilt addon for linux-x64 \(glibc\) here and no cc\/make on PATH to build it: .*npm rebuild arrow-shm`\n$/);

    // A Table from another copy of apache-arrow (same version, or the lowest) or from require():
    // refused with a typed error that names both copies. Run from `low`, "the app" there is 21.1-ish.
    const foreign = run('node', [path.join(app, 'foreign.mjs'), second, low], { cwd: low, env });
    assert.equal(foreign.status, 0, foreign.stderr);
    const results = JSON.parse(foreign.stdout) as Record<string, 'ok' | { code: string; message: string }>;
    assert.equal(results.own, 'ok');
    const ours = `${highestVersion} at ${path.join(app, 'node_modules', 'apache-arrow')}`;
    for (const [name, theirs] of [
      [second, `the app's is ${lowest} at ${path.join(low, 'node_modules', 'apache-arrow')}`],
      [low, `the app's is ${lowest} at ${path.join(low, 'node_modules', 'apache-arrow')}`],
      ['require()', `CommonJS build (require()) of apache-arrow ${highestVersion}`],
    ] as const) {
      const r = results[name];
      assert.ok(r !== 'ok' && r?.code === 'ERR_INVALID_ARGUMENT', `${name}: ${JSON.stringify(r)}`);
      assert.ok(r.message.includes(theirs) && r.message.includes(ours), `${name}: ${r.message}`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('the tarball holds what the README links to, the license and changelog, and no tests or build outputs', () => {
  const r = run('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: repoRoot, env: process.env });
  assert.equal(r.status, 0, r.stderr);
  const files = new Set((JSON.parse(r.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path));
  for (const f of ['LICENSE', 'CHANGELOG.md', 'README.md', 'package.json', 'scripts/build-native.mjs', 'binding.gyp', 'native/arrow_shm.c', 'dist/src/index.js', 'dist/src/index.d.ts']) {
    assert.ok(files.has(f), `${f} is missing from the tarball`);
  }
  for (const t of prebuild.TARGETS) assert.ok(files.has(t.file), `${t.file} is missing from the tarball`);
  const readme = readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const links = [...readme.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/.test(l));
  assert.ok(links.length > 0);
  for (const link of links) assert.ok(files.has(path.posix.normalize(link)), `README links to ${link}, which is not in the tarball`);
  for (const f of files) assert.doesNotMatch(f, /^(test|bench|peers|dist\/test|dist\/bench|build|\.build|scripts\/(?!build-native\.mjs))/, `${f} should not be in the tarball`);
  assert.ok(readFileSync(path.join(repoRoot, 'LICENSE'), 'utf8').includes('Apache License\n                           Version 2.0, January 2004'));
});
