// The table store's commands (docs/CLI.md): store, put, get, ls, rm.
import { type Command, InvalidArgumentError } from 'commander';
import type { KeyValues } from '../transport/frame.js';
import type { ReceivedTable } from '../transport/received.js';
import { openStore, type StoreClient } from '../store/client.js';
import { serveStore } from '../store/server.js';
import { readIpcInput } from './files.js';
import { Output } from './output.js';

const STORE = "the store's socket path or @name";

function bytesValue(value: string): number {
  const match = /^([0-9]+)([KMGT]i?B?)?$/i.exec(value);
  const units: Record<string, number> = { k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
  const n = match ? Number(match[1]) * (match[2] ? units[match[2][0]!.toLowerCase()]! : 1) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive number of bytes (e.g. 1073741824, 512MiB, 8GiB)');
  return n;
}

function evictValue(value: string): 'lru' | 'none' {
  if (value !== 'lru' && value !== 'none') throw new InvalidArgumentError('expected lru or none');
  return value;
}

async function withStore<T>(address: string, timeoutMs: number | undefined, use: (store: StoreClient) => Promise<T>): Promise<T> {
  const store = await openStore(address, { timeoutMs });
  try {
    return await use(store);
  } finally {
    store.close();
  }
}

/** Runs a store until SIGINT or SIGTERM. */
async function runStore(flags: { socket: string; memory?: number; evict: 'lru' | 'none' }): Promise<void> {
  const store = serveStore(flags.socket, { memory: flags.memory, evict: flags.evict, onConnectionError: (e) => process.stderr.write(`arrow-shm: dropped a client: ${e.code}: ${e.message}\n`) });
  process.stderr.write(`arrow-shm: listening on ${flags.socket} (a table store: memory ${store.memory} bytes, evict ${store.evict})\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  store.close();
}

function age(createdMs: number): string {
  const s = Math.max(0, Math.round((Date.now() - createdMs) / 1000));
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : s < 172800 ? `${Math.round(s / 3600)}h` : `${Math.round(s / 86400)}d`;
}

/** What the store commands share with the rest of the CLI (main.ts). */
export interface CliParts {
  printSummary: (message: ReceivedTable, index: number) => void;
  positiveInt: (value: string) => number;
  keyValue: (value: string, previous?: KeyValues) => KeyValues;
}

/** Adds the store commands to the CLI. */
export function addStoreCommands(cli: Command, { printSummary, positiveInt, keyValue }: CliParts): void {
  cli
    .command('store')
    .description('run a table store: named tables any local process can put and get, zero-copy')
    .requiredOption('--socket <addr>', 'the socket path or @name to listen on')
    .option('--memory <bytes>', 'memory budget (default: half the physical memory)', bytesValue)
    .option('--evict <policy>', 'lru: evict unheld names least recently used first; none: refuse puts when full', evictValue, 'lru')
    .action(runStore);

  cli
    .command('put')
    .description('put FILE (Arrow IPC stream or file, - for stdin) into a store under NAME')
    .requiredOption('--store <addr>', STORE)
    .option('--meta <key=value>', 'user metadata (repeatable)', keyValue)
    .option('--replace', 'make a new version if NAME exists')
    .option('--timeout-ms <n>', 'give up connecting after N ms', positiveInt)
    .argument('<name>')
    .argument('<file>')
    .action(async (name: string, file: string, flags: { store: string; meta?: KeyValues; replace?: boolean; timeoutMs?: number }) => {
      const data = readIpcInput(file);
      const put = await withStore(flags.store, flags.timeoutMs, (store) => store.put(name, data, { metadata: flags.meta, replace: flags.replace }));
      process.stdout.write(`${name}\tversion ${put.version}\t${put.bytes} bytes\t${put.rows} rows\n`);
    });

  cli
    .command('get')
    .description('get NAME from a store; write it as an IPC stream file and/or print a summary')
    .requiredOption('--store <addr>', STORE)
    .option('--out <file>', 'write the table to FILE')
    .option('--print', 'print schema, rows, metadata and the first rows')
    .option('--timeout-ms <n>', 'wait up to N ms for NAME to be put', positiveInt)
    .argument('<name>')
    .action(async (name: string, flags: { store: string; out?: string; print?: boolean; timeoutMs?: number }) => {
      const output = Output.prepare(flags.out, 1);
      await withStore(flags.store, flags.timeoutMs, async (store) => {
        const message = await store.get(name, { timeoutMs: flags.timeoutMs });
        try {
          output?.write(0, message.bytes);
          if (flags.print || !output) printSummary(message, 0);
        } finally {
          message.close();
        }
      });
    });

  cli
    .command('ls')
    .description('list a store: one line per name (name, bytes, rows, age)')
    .requiredOption('--store <addr>', STORE)
    .option('--prefix <prefix>', 'only names starting with PREFIX')
    .option('--timeout-ms <n>', 'give up connecting after N ms', positiveInt)
    .action(async (flags: { store: string; prefix?: string; timeoutMs?: number }) => {
      const entries = await withStore(flags.store, flags.timeoutMs, (store) => store.list(flags.prefix));
      process.stdout.write(entries.map((e) => `${e.name}\t${e.bytes}\t${e.rows}\t${age(e.createdMs)}\n`).join(''));
    });

  cli
    .command('rm')
    .description('delete NAME from a store (readers keep what they have)')
    .requiredOption('--store <addr>', STORE)
    .option('--timeout-ms <n>', 'give up connecting after N ms', positiveInt)
    .argument('<name>')
    .action(async (name: string, flags: { store: string; timeoutMs?: number }) => {
      await withStore(flags.store, flags.timeoutMs, (store) => store.delete(name));
    });
}
