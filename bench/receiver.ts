// Receiving half of a benchmark method, run in its own process. Prints "ready", then one JSON
// line per hand-off: { t1, checksum?, cpu_ms, stages? } where t1 is when the data became usable
// (CLOCK_MONOTONIC), cpu_ms this process's CPU time so far (user + system, all threads) and, with
// --breakdown, stages the [name, time] at which each stage of the receive ended (the
// `arrow-shm:handoff` diagnostics channel). The bench contract is the same for every peer
// (bench/receiver.py, peers/rust/examples/bench_receiver.rs).
import diagnosticsChannel from 'node:diagnostics_channel';
import net from 'node:net';
import { listen } from '../src/transport/listener.js';
import { FlightServer } from '../src/transport/flight-server.js';
import { HANDOFF_CHANNEL, type HandoffEvent } from '../src/trace.js';
import { SOCKET_METHODS, checksumOf, cpuMs, decodeFromSocket, now, readFramed, type Method } from './methods.js';
import type { SymbolRow } from '../src/cli/symbols.js';

const args = process.argv.slice(2);
const method = args[args.indexOf('--method') + 1] as Method;
const address = args[args.indexOf('--socket') + 1]!;
const read = args.includes('--read');
const breakdown = args.includes('--breakdown');
let stages: [string, number][] = [];
if (breakdown) diagnosticsChannel.subscribe(HANDOFF_CHANNEL, (e) => stages.push([(e as HandoffEvent).stage, (e as HandoffEvent).at]));

/** With --read, the hand-off ends only after every value was read once. */
function report(usableAt: number, value: unknown): void {
  const checksum = read ? checksumOf(value as SymbolRow[]) : undefined;
  const t1 = read ? now() : usableAt;
  if (read && breakdown) stages.push(['read', t1]);
  const line = { t1, checksum, cpu_ms: cpuMs(), ...(breakdown ? { stages } : {}) };
  stages = [];
  if (method === 'v8') process.send!(line);
  else process.stdout.write(JSON.stringify(line) + '\n');
}

if (method === 'v8') {
  process.on('message', (msg: { rows?: SymbolRow[]; stop?: boolean }) => {
    if (msg.stop) process.exit(0);
    report(now(), msg.rows);
  });
  process.send!({ ready: true });
} else if ((SOCKET_METHODS as readonly string[]).includes(method)) {
  const server = net.createServer((socket) => {
    readFramed(socket, (_t0, payload) => {
      const value = decodeFromSocket(method as (typeof SOCKET_METHODS)[number], payload);
      const t1 = now();
      if (!Array.isArray(value)) value.numRows; // a Table is usable once constructed
      report(t1, value);
    });
    socket.on('close', () => server.close());
  });
  server.listen(address, () => process.stdout.write('ready\n'));
} else if (method === 'flight') {
  // Arrow Flight over loopback: each DoPut is one hand-off; usable once the Table is built.
  const server = await FlightServer.listen(address);
  process.stdout.write('ready\n');
  for (;;) {
    const message = await server.receive();
    const table = message.table;
    report(now(), table);
  }
} else {
  const listener = listen(address, { acceptLeased: true });
  process.stdout.write('ready\n');
  const channel = await listener.accept();
  listener.close();
  for await (const message of channel) {
    const table = message.table;
    const t1 = now();
    report(t1, table);
    message.close();
  }
}
