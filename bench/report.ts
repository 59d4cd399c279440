// BENCHMARKS.md and its chart, regenerated from a results document.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Row } from './run.js';

interface Doc {
  command: string;
  date: string;
  machine: Record<string, unknown>;
  versions: Record<string, string>;
  rows: Row[];
}

const ms = (x: number) => (x < 1 ? x.toFixed(3) : x < 100 ? x.toFixed(2) : x.toFixed(0));
const us = (x: number) => `${(x * 1000).toFixed(0)} µs`;
const human = (b: number) => (b >= 2 ** 30 ? `${b / 2 ** 30} GiB` : b >= 2 ** 20 ? `${b / 2 ** 20} MiB` : b >= 1024 ? `${b / 1024} KiB` : `${b} B`);
const cpu = (r: Row | undefined) => (r?.cpu_ms !== undefined ? `${ms(r.cpu_ms)} ms` : '');

function sweepChart(rows: Row[]): string {
  const sizes = new Set(rows.filter((r) => r.scenario === 'sweep').map((r) => r.bytes));
  // memcpy of the same bytes in one process, drawn dashed: the floor a copying hand-off can reach
  const sweep = rows.filter((r) => r.scenario === 'sweep' || (r.scenario === 'limits' && r.method === 'memcpy' && sizes.has(r.bytes) && r.median_ms > 0));
  const methods = [...new Set(sweep.map((r) => r.method))];
  const W = 720, H = 420, L = 70, B = 50, T = 20, R = 170;
  const xs = sweep.map((r) => Math.log10(r.bytes));
  const ys = sweep.map((r) => Math.log10(Math.max(r.median_ms, 1e-3)));
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.floor(Math.min(...ys)), Math.ceil(Math.max(...ys))];
  const px = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (y: number) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - B - T);
  const colors = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd', '#ff7f0e', '#777777'];
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`, `<rect width="${W}" height="${H}" fill="white"/>`];
  for (let y = y0; y <= y1; y++) parts.push(`<line x1="${L}" x2="${W - R}" y1="${py(y)}" y2="${py(y)}" stroke="#ddd"/><text x="${L - 6}" y="${py(y) + 4}" text-anchor="end">${10 ** y >= 1 ? 10 ** y : (10 ** y).toFixed(-y)} ms</text>`);
  for (const r of sweep.filter((r) => r.method === methods[0] && r.scenario === 'sweep')) parts.push(`<text x="${px(Math.log10(r.bytes))}" y="${H - B + 16}" text-anchor="middle">${human(r.bytes)}</text>`);
  methods.forEach((m, i) => {
    const pts = sweep.filter((r) => r.method === m).map((r) => `${px(Math.log10(r.bytes)).toFixed(1)},${py(Math.log10(Math.max(r.median_ms, 1e-3))).toFixed(1)}`);
    const dash = m === 'memcpy' ? ' stroke-dasharray="5,4"' : '';
    parts.push(`<polyline fill="none" stroke="${colors[i % colors.length]}" stroke-width="2"${dash} points="${pts.join(' ')}"/>`);
    parts.push(`<text x="${W - R + 10}" y="${T + 16 * (i + 1)}" fill="${colors[i % colors.length]}">${m}</text>`);
  });
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle">table size (Arrow IPC bytes), hand-off median, log-log</text></svg>`);
  return parts.join('\n');
}

type Find = (scenario: string, method: string, from?: string, to?: string, bytes?: number) => Row | undefined;

/** The goals of issue #15 (and the earlier ones of #6 that still apply), checked against this run. */
function targets(rows: Row[], find: Find): string[] {
  const out: string[] = [];
  const add = (what: string, measured: number | undefined, target: string, ok: (x: number) => boolean) => {
    const known = measured !== undefined && Number.isFinite(measured);
    out.push(`| ${what} | ${known ? measured!.toFixed(2) : 'n/a'} | ${target} | ${known ? (ok(measured!) ? 'yes' : 'no') : '?'} |`);
  };
  const median = (r: Row | undefined) => r?.median_ms;
  for (const d of [...new Set(rows.filter((r) => r.scenario === 'symbols' && r.method === 'arrow-shm').map((r) => `${r.from}→${r.to}`))]) {
    const [from, to] = d.split('→') as [string, string];
    add(`${from} → ${to}: arrow-socket / arrow-shm, symbol table`, (median(find('symbols', 'arrow-socket', from, to)) ?? NaN) / (median(find('symbols', 'arrow-shm', from, to)) ?? NaN), '≥ 3', (x) => x >= 3);
  }
  for (const to of ['node', 'python']) add(`node → ${to}: arrow-shm, symbol table (ms)`, median(find('symbols', 'arrow-shm', 'node', to)), '< 1', (x) => x < 1);
  add('node → node: arrow-shm-prebuilt, symbol table (ms)', median(find('symbols', 'arrow-shm-prebuilt')), '< 0.2', (x) => x < 0.2);
  add('node → node: arrow-shm-leased, symbol table (ms)', median(find('symbols', 'arrow-shm-leased')), '< 0.2', (x) => x < 0.2);
  const sizes = [...new Set(rows.filter((r) => r.scenario === 'sweep').map((r) => r.bytes))];
  const worst = Math.max(...sizes.map((b) => (median(find('sweep', 'arrow-shm', 'node', 'node', b)) ?? NaN) / (median(find('sweep', 'arrow-socket', 'node', 'node', b)) ?? NaN)));
  if (sizes.length > 0) add('sweep: arrow-shm / arrow-socket at its worst size', worst, '≤ 1', (x) => x <= 1);
  const fdpass = find('limits', 'c-fdpass', 'c', 'c', 1024);
  add('arrow-shm at 1 KiB / a C fd-pass round trip', (median(find('sweep', 'arrow-shm', 'node', 'node', 1024)) ?? NaN) / (median(fdpass) ?? NaN), '≤ 3', (x) => x <= 3);
  const breakdown = find('breakdown', 'arrow-shm');
  const copy = breakdown?.stages?.find(([s]) => s === 'copy')?.[1];
  add('sealed copy-in (node, the `copy` stage) / one memcpy of the same bytes', (copy ?? NaN) / (median(find('limits', 'memcpy', 'node', 'node', breakdown?.bytes)) ?? NaN), '≤ 1.5', (x) => x <= 1.5);
  const shm = median(find('symbols', 'arrow-shm'));
  for (const m of ['json', 'msgpack']) add(`node → node: ${m} / arrow-shm (#6)`, (median(find('symbols', m)) ?? NaN) / (shm ?? NaN), '≥ 150', (x) => x >= 150);
  const largest = Math.max(...sizes);
  if (sizes.length > 0) {
    add(`arrow-shm-prebuilt, ${human(largest)} / 1 MiB (#6)`, (median(find('sweep', 'arrow-shm-prebuilt', 'node', 'node', largest)) ?? NaN) / (median(find('sweep', 'arrow-shm-prebuilt', 'node', 'node', 2 ** 20)) ?? NaN), '≤ 2', (x) => x <= 2);
    add(`arrow-shm (copy-in) at ${human(largest)}, GB/s (#6)`, largest / (median(find('sweep', 'arrow-shm', 'node', 'node', largest)) ?? NaN) / 1e6, '≥ 8', (x) => x >= 8);
  }
  return ['## Targets (issue #15; #6 where marked), checked against this run', '', '| what | measured | target | met |', '|---|---:|---:|:---:|', ...out, ''];
}

/** Where each direction's hand-off spends its time (npm run bench -- --breakdown). */
function breakdownSection(rows: Row[], doc: Doc): string[] {
  const b = rows.filter((r) => r.scenario === 'breakdown' && r.stages);
  if (b.length === 0) return [];
  const names = [...new Set(b.flatMap((r) => r.stages!.map(([s]) => s)))];
  return [
    '<!-- breakdown -->',
    '## Where a hand-off\'s time goes: the symbol table, arrow-shm, per stage',
    '',
    `Generated by \`${doc.command}\` on ${doc.date} (also part of \`npm run bench\`). Each peer reports when each stage of a hand-off ended`,
    '(Node: the `arrow-shm:handoff` diagnostics channel; Python: `arrow_shm.trace`; Rust: the bench programs time the library\'s own calls), on one',
    'clock; a stage lasts from the end of the one before it (the first from the sender\'s t0). Medians per stage, so they need not add up to the',
    'median total. Sender stages: `copy` (the IPC stream written into a sealed segment), `send` (sendmsg). Receiver stages: `wake` (until',
    'recvmsg returned the frame: the kernel and the receiver\'s event loop), `map` (seals, size, mmap), `check` (the IPC stream validated), `decode`',
    '(a Table exists), and in Python `validate` (the bounds policy, after decoding). CPU: both processes, background threads included.',
    '',
    `| direction | ${names.join(' | ')} | total (median) | CPU per hand-off |`,
    `|---|${names.map(() => '---:').join('|')}|---:|---:|`,
    ...b.map((r) => `| ${r.from} → ${r.to} | ${names.map((n) => { const s = r.stages!.find(([x]) => x === n); return s ? us(s[1]) : ''; }).join(' | ')} | ${ms(r.median_ms)} ms | ${cpu(r)} |`),
    '<!-- /breakdown -->',
  ];
}

/** README's speed table (between `<!-- speed -->` markers): the symbol table in every direction. */
function readmeTable(rows: Row[], find: Find): string {
  const dirs: [string, string][] = [['node', 'node'], ['node', 'python'], ['node', 'rust'], ['python', 'node'], ['python', 'rust'], ['rust', 'python']];
  const methods: [string, string][] = [
    ['json', 'JSON over a UNIX socket'],
    ['msgpackr-records', 'msgpack (msgpackr, records)'],
    ['arrow-socket', 'Arrow IPC bytes over a UNIX socket'],
    ['flight', 'Arrow Flight over loopback gRPC (`grpc://`)'],
    ['arrow-shm', '**arrow-shm**, copied into a sealed memfd (the default)'],
    ['arrow-shm-leased', '**arrow-shm**, leased warm segment (`lease: true`)'],
    ['arrow-shm-prebuilt', '**arrow-shm**, table already in shared memory'],
    ['arrow-shm-born', '**arrow-shm**, columns built in shared memory (`TableBuilder`, Python `channel.allocate`)'],
  ];
  const cell = (r: Row | undefined) => (r ? `${ms(r.median_ms)} ms` : '');
  const lines = [
    `| method | ${dirs.map(([f, t]) => `${f} → ${t}`).join(' | ')} |`,
    `|---|${dirs.map(() => '---:').join('|')}|`,
    ...methods
      .filter(([m]) => dirs.some(([f, t]) => find('symbols', m, f, t)))
      .map(([m, label]) => `| ${label} | ${dirs.map(([f, t]) => (m === 'arrow-shm' ? `**${cell(find('symbols', m, f, t))}**` : cell(find('symbols', m, f, t)))).join(' | ')} |`),
  ];
  return lines.join('\n');
}

export function writeReport(doc: Doc, root: string): void {
  const file = path.join(root, 'BENCHMARKS.md');
  const previous = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const keep = (name: string) => new RegExp(`<!-- ${name}[\\s\\S]*?<!-- /${name} -->`).exec(previous)?.[0];
  const rows = doc.rows;
  const find: Find = (scenario, method, from = 'node', to = 'node', bytes) => rows.find((r) => r.from === from && r.to === to && r.scenario === scenario && r.method === method && (bytes === undefined || r.bytes === bytes));
  if (doc.command.includes('--breakdown')) {
    // Only the breakdown was run: replace that section, keep the rest of the page.
    const section = breakdownSection(rows, doc).join('\n');
    const old = keep('breakdown');
    writeFileSync(file, old ? previous.replace(old, section) : `${previous.trimEnd()}\n\n${section}\n`);
    return;
  }
  const lines: string[] = [
    '# Benchmarks',
    '',
    `Generated by \`${doc.command}\` on ${doc.date} — ${doc.machine.cpus} × ${doc.machine.cpu}, ${doc.machine.memory_gib} GiB, Linux ${doc.machine.kernel}, Node ${doc.machine.node}.`,
    'Every figure is a median of hand-offs between two processes, measured from "the sender holds the data" to "the receiver holds a usable',
    'table" (an apache-arrow Table, a pyarrow Table, Rust RecordBatches, or parsed objects), on one clock (CLOCK_MONOTONIC). All methods ran in',
    `the same run; raw samples are in \`bench/results/\`. Hand-offs are spaced (2 ms + 1 ms per 2 MB) so that what a sender prepares in the`,
    'background between hand-offs is ready; the CPU column counts that work: it is the CPU time of both processes per hand-off, all threads.',
    'Do not compare figures across runs or machines, compare the ratios.',
    '',
    ...targets(rows, find),
  ];
  const memcpy = find('limits', 'memcpy', 'node', 'node', find('symbols', 'arrow-shm')?.bytes);
  const direction = (from: string, to: string, title: string, notes: string[]) => {
    const dir = rows.filter((r) => r.from === from && r.to === to && (r.scenario === 'symbols' || r.scenario === 'symbols-read'));
    if (dir.length === 0) return;
    const base = (scenario: string) => dir.find((r) => r.scenario === scenario && r.method === 'arrow-shm');
    const ratio = (x: Row | undefined, b: Row | undefined) => (x && b ? (x.median_ms / b.median_ms).toFixed(1) + '×' : '');
    lines.push(title, '', '| method | usable: median | p99 | CPU per hand-off | vs arrow-shm | vs one memcpy | + read every value: median | vs arrow-shm |', '|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of dir.filter((r) => r.scenario === 'symbols')) {
      const read = dir.find((x) => x.scenario === 'symbols-read' && x.method === r.method);
      lines.push(`| ${r.method} | ${ms(r.median_ms)} ms | ${ms(r.p99_ms)} ms | ${cpu(r)} | ${ratio(r, base('symbols'))} | ${ratio(r, memcpy)} | ${read ? ms(read.median_ms) + ' ms' : ''} | ${ratio(read, base('symbols-read'))} |`);
    }
    lines.push('', ...notes, '');
  };
  const bytes = find('symbols', 'arrow-shm')?.bytes ?? 0;
  const anchor = rows.find((r) => r.method === 'pyarrow-flight');
  direction('node', 'node', `## Symbol table, node → node: 100,000 rows, ${(bytes / 1e6).toFixed(1)} MB as Arrow IPC`, [
    `One memcpy of the same ${(bytes / 1e6).toFixed(1)} MB in one process (the limit): ${memcpy ? ms(memcpy.median_ms) : '?'} ms.`,
    ...(anchor ? [`Anchor for the \`flight\` row (arrow-shm's Flight transport over loopback gRPC): pyarrow.flight's own client and server, python → python, same table, until the server read the table and answered the put: ${ms(anchor.median_ms)} ms (p99 ${ms(anchor.p99_ms)} ms).`] : []),
  ]);
  const pySender = 'Sender: `bench/sender.py` (JSON text from rows converted before the clock starts; Arrow IPC written per hand-off; arrow-shm copies the table once into a sealed segment).';
  const rustSender = 'Sender: `peers/rust/examples/bench_sender.rs` (the same methods as the Python sender, with arrow-rs).';
  const rustReceiver = [
    'Receiver: `peers/rust/examples/bench_receiver.rs`: JSON parsed by serde_json into typed rows; Arrow IPC bytes decoded by arrow-ipc\'s',
    '`StreamReader`; arrow-shm decoded in place over the mapping by the Rust peer (every offset, buffer and UTF-8 string checked: Rust\'s `&str`',
    'needs valid UTF-8). Reading every value: string lengths and integer sums over all columns.',
  ];
  const pyReceiver = [
    'The Python receiver reads every value with pyarrow.compute (strings: byte lengths); JSON rows by a Python loop. arrow-shm rows use the',
    'Python peer\'s validation policies: `arrow-shm` the default `validate="bounds"` (every offset, index, run end and view inside its buffers, so',
    'Arrow C++ kernels cannot read out of bounds; no UTF-8 scan), `arrow-shm-full` `validate="full"` (UTF-8 too), `arrow-shm-trusted`',
    '`validate="framing"` (for a trusted sender: framing and buffer bounds only). The Arrow-over-a-socket receiver checks nothing after decoding.',
  ];
  direction('node', 'python', '## Symbol table, node → python (pyarrow Table, or Python objects for JSON)', pyReceiver);
  direction('node', 'rust', '## Symbol table, node → rust', rustReceiver);
  direction('python', 'node', '## Symbol table, python → node (the Python sender starts from a pyarrow Table; the Node receiver builds an apache-arrow Table, or parses JSON)', [pySender]);
  direction('python', 'rust', '## Symbol table, python → rust (the motivating case: a Python tool hands its symbols to a Rust engine)', [pySender, ...rustReceiver]);
  direction('rust', 'python', '## Symbol table, rust → python', [rustSender, ...pyReceiver.slice(0, 1)]);
  lines.push(
    '- `arrow-shm`: the Table is copied once into a sealed memfd (into spare pages allocated in the background when one is ready), the fd is passed.',
    '- `arrow-shm-leased`: copied into a warm, reusable leased segment (docs/PROTOCOL.md §6.2; not write-sealed).',
    '- `arrow-shm-prebuilt`: the table was already written into a sealed segment before the clock started.',
    '- `arrow-shm-born`: the columns are written straight into the segment (Node `TableBuilder`, Python `channel.allocate`; here copied from the table',
    '  read at start, as a producer would write its values), then sent with no copy of the data: allocation and writing are inside the clock.',
    '- `arrow-socket`: Arrow IPC bytes over a UNIX stream socket, read with the receiver\'s Arrow library (`tableFromIPC`, pyarrow, arrow-rs).',
    '- `json`, `msgpack`, `msgpackr-records`: row objects over a UNIX stream socket; `v8`: Node advanced serialization over child_process IPC.',
    '',
    ...breakdownSection(rows, doc),
    '',
    '## Size sweep: hand-off time by table size, node → node',
    '',
    '![hand-off time vs size](docs/bench-sweep.svg)',
    '',
  );
  const sweepMethods = [...new Set(rows.filter((r) => r.scenario === 'sweep').map((r) => r.method))];
  lines.push(`| size | ${sweepMethods.join(' | ')} | memcpy |`, `|---:|${sweepMethods.map(() => '---:').join('|')}|---:|`);
  for (const size of [...new Set(rows.filter((r) => r.scenario === 'sweep').map((r) => r.bytes))]) {
    const cells = sweepMethods.map((m) => {
      const r = find('sweep', m, 'node', 'node', size);
      return r ? `${ms(r.median_ms)} ms (${(size / r.median_ms / 1e6).toFixed(2)} GB/s)` : '';
    });
    const mc = find('limits', 'memcpy', 'node', 'node', size);
    lines.push(`| ${human(size)} | ${cells.join(' | ')} | ${mc ? ms(mc.median_ms) + ' ms' : ''} |`);
  }
  const fdpass = find('limits', 'c-fdpass', 'c', 'c', 1024);
  if (fdpass) {
    lines.push(
      '',
      `The physical limit of a small hand-off, same run (\`bench/limits/fdpass.c\`): two C processes make a memfd, write 1 KiB, seal it, pass the fd with a`,
      `64-byte frame over SOCK_SEQPACKET, check seals and size, map, read, unmap and answer, spaced like the hand-offs: ${us(fdpass.median_ms)} per round trip (p99 ${us(fdpass.p99_ms)}).`,
    );
  }
  lines.push('', 'Streams, publish/subscribe and the C ping-pong limit: see below (`npm run bench:stream`, also run by `npm run bench`).', '');
  // Streams, Flight and the table store have benchmarks of their own (bench/stream.ts, bench/flight.ts, bench/store.ts): keep their sections.
  const kept = ['streams', 'flight', 'store'].map(keep).filter((k): k is string => !!k);
  writeFileSync(file, lines.join('\n') + kept.map((k) => `\n${k}\n`).join(''));
  const readme = path.join(root, 'README.md');
  const text = readFileSync(readme, 'utf8');
  const speed = /(<!-- speed: generated by npm run bench -->\n)[\s\S]*?(\n<!-- \/speed -->)/;
  if (speed.test(text)) writeFileSync(readme, text.replace(speed, (_, open: string, close: string) => `${open}${readmeTable(rows, find)}${close}`));
  writeFileSync(path.join(root, 'docs', 'bench-sweep.svg'), sweepChart(rows));
}

// `node dist/bench/report.js bench/results/<file>.json`: regenerate BENCHMARKS.md from a saved run.
if (process.argv[1] && import.meta.url.endsWith(path.basename(process.argv[1])) && process.argv[2]) {
  const doc = JSON.parse(readFileSync(process.argv[2], 'utf8')) as Doc;
  writeReport(doc, path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..'));
}
