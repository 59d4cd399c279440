// The hand-off methods compared by the benchmark. Each has a sender half (in the benchmark
// process) and a receiver half (in a child process); "usable" means decoded into objects or an
// apache-arrow Table, and with `read`, also every value read once (the same checksum everywhere).
import net from 'node:net';
import { tableFromIPC, tableToIPC, type Table } from 'apache-arrow';
import { Packr } from 'msgpackr';
import { checksumSymbolTable, type SymbolRow } from '../src/cli/symbols.js';

export const now = (): number => Number(process.hrtime.bigint()) / 1e6;

/** This process's CPU time so far, user + system, all threads, in ms. */
export const cpuMs = (): number => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e3;
};

export const SOCKET_METHODS = ['json', 'msgpack', 'msgpackr-records', 'arrow-socket'] as const;
export const SHM_METHODS = ['arrow-shm', 'arrow-shm-leased', 'arrow-shm-prebuilt', 'arrow-shm-trusted', 'arrow-shm-full', 'arrow-shm-born'] as const;
export type Method = (typeof SOCKET_METHODS)[number] | (typeof SHM_METHODS)[number] | 'v8' | 'flight';

const plain = new Packr({ useRecords: false });
const records = new Packr({ useRecords: true });

export function encodeForSocket(method: (typeof SOCKET_METHODS)[number], rows: SymbolRow[] | null, table: Table | null): Uint8Array {
  switch (method) {
    case 'json':
      return Buffer.from(JSON.stringify(rows));
    case 'msgpack':
      return plain.pack(rows);
    case 'msgpackr-records':
      return records.pack(rows);
    case 'arrow-socket':
      return tableToIPC(table!);
  }
}

export function decodeFromSocket(method: (typeof SOCKET_METHODS)[number], bytes: Buffer): SymbolRow[] | Table {
  switch (method) {
    case 'json':
      return JSON.parse(bytes.toString('utf8')) as SymbolRow[];
    case 'msgpack':
      return plain.unpack(bytes) as SymbolRow[];
    case 'msgpackr-records':
      return records.unpack(bytes) as SymbolRow[];
    case 'arrow-socket':
      return tableFromIPC(bytes);
  }
}

/** The checksum of checksumSymbolTable, computed over plain row objects (ASCII strings). */
export function checksumRows(rows: SymbolRow[]): number {
  let h = 0x811c9dc5;
  const mix = (x: number) => {
    h = Math.imul(h ^ x, 0x01000193) >>> 0;
  };
  for (const name of ['kind', 'file_id', 'start_line', 'start_col', 'end_line', 'end_col'] as const) for (const r of rows) mix(r[name]);
  for (const name of ['id', 'fqn'] as const) {
    for (const r of rows) mix(r[name].length);
    for (const r of rows) {
      const s = r[name];
      for (let i = 0; i < s.length; i++) mix(s.charCodeAt(i));
    }
  }
  return h;
}

export function checksumOf(value: SymbolRow[] | Table): number {
  return Array.isArray(value) ? checksumRows(value) : checksumSymbolTable(value);
}

/** Length-prefixed frames over a stream socket (the copying baselines). */
export function writeFramed(socket: net.Socket, t0: number, payload: Uint8Array): void {
  const header = Buffer.alloc(16);
  header.writeDoubleLE(t0, 0);
  header.writeBigUInt64LE(BigInt(payload.byteLength), 8);
  socket.write(header);
  socket.write(payload);
}

export function readFramed(socket: net.Socket, onFrame: (t0: number, payload: Buffer) => void): void {
  let chunks: Buffer[] = [];
  let have = 0;
  let need = -1;
  let t0 = 0;
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    have += chunk.length;
    for (;;) {
      if (need < 0) {
        if (have < 16) return;
        const all = Buffer.concat(chunks);
        t0 = all.readDoubleLE(0);
        need = Number(all.readBigUInt64LE(8));
        chunks = [all.subarray(16)];
        have -= 16;
      }
      if (have < need) return;
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      const payload = all.subarray(0, need);
      const rest = all.subarray(need);
      chunks = rest.length ? [rest] : [];
      have = rest.length;
      need = -1;
      onFrame(t0, payload);
    }
  });
}
