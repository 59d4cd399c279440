// Apps that install the packed package as people do (test/package.test.ts, test/examples.test.ts).
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './helpers.js';

const fixtures = path.join(repoRoot, 'test', 'fixtures', 'package-app');

/** npm with a PATH that has node, npm, sh and python3 but no C compiler or make. */
export function noCompilerEnv(bin: string): NodeJS.ProcessEnv {
  mkdirSync(bin, { recursive: true });
  const compiler = /gcc|g\+\+|clang|tcc|^cc$|^c\+\+$|^c89|^c99|^cpp|make$|^ld(\.|$)|-ld$/;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    for (const name of existsSync(dir) ? readdirSync(dir) : []) {
      if (!compiler.test(name) && !existsSync(path.join(bin, name))) symlinkSync(path.join(dir, name), path.join(bin, name));
    }
  }
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: bin };
  for (const key of Object.keys(env)) if (key.startsWith('npm_')) delete env[key]; // not our `npm test`'s settings
  delete env.CC;
  return env;
}

export function run(command: string, args: string[], options: SpawnSyncOptions & { env: NodeJS.ProcessEnv }) {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 120_000, ...options });
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** `npm pack` of the repository into dir; the tarball's path. */
export function packTarball(dir: string, env: NodeJS.ProcessEnv): string {
  // --ignore-scripts: dist/ is built already (scripts/test.sh), and other suites are reading it.
  const packed = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir, repoRoot], { env });
  assert.equal(packed.status, 0, packed.stderr);
  return path.join(dir, (JSON.parse(packed.stdout) as { filename: string }[])[0]!.filename);
}

/** An ES-module app in dir (with test/fixtures/package-app) that npm-installs specs; its apache-arrow version. */
export function makeApp(dir: string, env: NodeJS.ProcessEnv, specs: string[]): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: path.basename(dir), version: '1.0.0', private: true, type: 'module' }));
  for (const f of readdirSync(fixtures)) copyFileSync(path.join(fixtures, f), path.join(dir, f));
  const r = run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', ...specs], { cwd: dir, env });
  assert.equal(r.status, 0, `npm install ${specs.join(' ')}:\n${r.stderr}`);
  return JSON.parse(readFileSync(path.join(dir, 'node_modules', 'apache-arrow', 'package.json'), 'utf8')).version as string;
}
