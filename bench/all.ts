// `npm run bench [-- --quick | --breakdown | --sweep]`: every benchmark, one after the other, in
// one process tree so that flags reach each of them (npm appends arguments to the last command
// of a script only). --quick goes to every bench; --breakdown and --sweep select parts of run.js
// and run nothing else.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const known = ['--quick', '--breakdown', '--sweep'];
const unknown = args.filter((a) => !known.includes(a));
if (unknown.length) {
  console.error(`npm run bench: unknown option ${unknown.join(' ')} (known: ${known.join(', ')}; run a single bench with node dist/bench/<name>.js for its own options)`);
  process.exit(2);
}
const quick = args.includes('--quick') ? ['--quick'] : [];
const runOnly = args.includes('--breakdown') || args.includes('--sweep');
const benches: [string, string[]][] = runOnly ? [['run.js', args]] : [['run.js', quick], ['stream.js', quick], ['flight.js', quick], ['store.js', quick]];
for (const [file, flags] of benches) {
  const r = spawnSync(process.execPath, [path.join(here, file), ...flags], { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`npm run bench: ${file} ${r.signal ? `was killed by ${r.signal}` : `exited with ${r.status}`}`);
    process.exit(r.status ?? 1);
  }
}
