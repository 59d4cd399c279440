// Generates the API reference in docs/api (Markdown) from the TSDoc comments of what src/index.ts
// exports, with TypeDoc (typedoc.json).
//   node scripts/docs.mjs            regenerate docs/api (`npm run docs`)
//   node scripts/docs.mjs --check    exit 1 if docs/api differs from a fresh run (test/examples.test.ts)
// TypeDoc runs from scripts/typedoc/, its own manifest and lock (installed here on first use):
// TypeDoc reads sources through TypeScript's JS API, which TypeScript 7 no longer has, so it uses
// TypeScript 6.0, the newest it supports. The output has no dates or source links: it changes
// only when the exported API or its comments do.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tools = path.join(root, 'scripts', 'typedoc');
const typedoc = path.join(tools, 'node_modules', 'typedoc', 'bin', 'typedoc');
const out = path.join(root, 'docs', 'api');

function run(command, args, options = {}) {
  const r = spawnSync(command, args, { cwd: root, encoding: 'utf8', ...options });
  if (r.status !== 0) {
    process.stderr.write(`${r.stdout ?? ''}${r.stderr ?? ''}arrow-shm docs: ${command} ${args.join(' ')} failed\n`);
    process.exit(1);
  }
  return r.stdout;
}

/** Every file under dir, relative path -> contents. */
function tree(dir, base = dir, files = new Map()) {
  for (const e of existsSync(dir) ? readdirSync(dir, { withFileTypes: true }) : []) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) tree(p, base, files);
    else files.set(path.relative(base, p), readFileSync(p, 'utf8'));
  }
  return files;
}

if (!existsSync(typedoc)) {
  // Not the settings of an enclosing `npm test` / `npm run` (npm_config_*), which are the repository's.
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('npm_')));
  run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: tools, env });
}
const tmp = mkdtempSync(path.join(tmpdir(), 'arrow-shm-docs-'));
try {
  const fresh = path.join(tmp, 'api');
  // --treatWarningsAsErrors: a broken {@link} or a missing export fails the run, not the reader.
  run(process.execPath, [typedoc, '--options', 'typedoc.json', '--out', fresh, '--logLevel', 'Warn', '--treatWarningsAsErrors']);
  if (process.argv.includes('--check')) {
    const [want, have] = [tree(fresh), tree(out)];
    const stale = [...new Set([...want.keys(), ...have.keys()])].filter((f) => want.get(f) !== have.get(f)).sort();
    if (stale.length > 0) {
      process.stderr.write(`arrow-shm docs: docs/api is stale (${stale.slice(0, 5).join(', ')}${stale.length > 5 ? ', ...' : ''}): run \`npm run docs\`\n`);
      process.exitCode = 1; // not exit(): the finally below removes the temporary folder
    }
  } else {
    rmSync(out, { recursive: true, force: true });
    cpSync(fresh, out, { recursive: true });
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
