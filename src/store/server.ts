// The table store (docs/PROTOCOL.md §15): sealed segments kept by name, their fds handed to any
// client. It never copies or maps table data for writing; all its state is the fds it holds.
import { makeVector, MessageHeader, Table, Utf8, vectorFromArray } from 'apache-arrow';
import { type ArrowShmError, fail } from '../errors.js';
import type { IpcLimits } from '../ipc/limits.js';
import { IpcMessageChecker, walkIpcMessages } from '../ipc/messages.js';
import { PreparedTable } from '../ipc/prepared.js';
import { closeFds } from '../shm/fds.js';
import { checkReceivedSegment, MAX_NODE_MESSAGE_BYTES, Segment } from '../shm/segment.js';
import { asError } from '../transport/channel.js';
import { FrameFlags, FrameKind, type Frame, type KeyValues } from '../transport/frame.js';
import { Acceptor, type Connection } from '../transport/acceptor.js';
import { positive } from '../transport/options.js';
import type { PacketSocket } from '../transport/socket.js';
import { StoreLink, type LinkOptions } from './link.js';
import { checkName, checkPrefix, defaultMemory, NAME_KEY, parseStoreDecimal, resolveStoreLimits, splitPutMetadata, VERSION_KEY, type EvictPolicy, type StoreLimits } from './protocol.js';

export interface StoreOptions extends LinkOptions {
  /** The memory budget in bytes (§15.4). Default: half the physical memory. */
  memory?: number;
  /** 'lru' (default): evict unheld names least recently used first; 'none': refuse puts instead. */
  evict?: EvictPolicy;
  /** §15.6. */
  limits?: Partial<StoreLimits>;
  /** What a put's IPC stream may decode to (§14.1). */
  ipcLimits?: Partial<IpcLimits>;
  /** Connections held at once, handshaking ones included (§14.2). Default 256. */
  maxConnections?: number;
  /** A connection with no frame for this long that holds, waits for and watches nothing is closed (ERR_TIMEOUT); 0 = never. Default 300000. */
  idleTimeoutMs?: number;
  backlog?: number;
  /** Connections refused, failed or closed for a reason worth logging; the store keeps serving. */
  onConnectionError?: (error: ArrowShmError) => void;
}

export interface StoreStats {
  entries: number;
  /** Accounted bytes: current versions, and older ones clients still hold. */
  bytes: number;
  heldBytes: number;
  memory: number;
  evict: EvictPolicy;
  evictions: number;
}

/** One immutable version of a name: a sealed segment the store holds the fd of. */
interface Version {
  number: bigint;
  name: string;
  segment: Segment;
  ipcOffset: bigint;
  ipcLength: bigint;
  bytes: number;
  rows: number;
  createdMs: number;
  metadata: KeyValues;
  holds: number;
  current: boolean;
}

interface Wait {
  client: Client;
  requestId: bigint;
  name: string;
  timer: NodeJS.Timeout;
}

/** A connected client and what it has open: holds (by the get answer's id), waits, watches (by request id → prefix). */
class Client implements Connection {
  link!: StoreLink;
  holds = new Map<bigint, Version>();
  waits = new Set<Wait>();
  watches = new Map<bigint, string>();
  closed = false;

  /** How long it has done nothing, or -1 while it holds, waits for or watches something. */
  idleMs(now: number): number {
    if (this.holds.size > 0 || this.waits.size > 0 || this.watches.size > 0 || this.link.queued > 0) return -1;
    return now - this.link.lastActivity;
  }

  evict(error: ArrowShmError): void {
    this.link.abort(error);
  }
}

export class TableStore {
  readonly address: string;
  readonly memory: number;
  readonly evict: EvictPolicy;
  #acceptor: Acceptor<Client>;
  #options: StoreOptions;
  #limits: Readonly<StoreLimits>;
  #ipcLimits: Partial<IpcLimits> | undefined;
  #maxMessageBytes: number;
  /** Current versions by name, least recently used first (a Map keeps insertion order). */
  #entries = new Map<string, Version>();
  #accounted = 0;
  #nextVersion = 1n;
  #evictions = 0;
  /** Clients past their handshake. */
  #clients = new Set<Client>();
  #waits = new Map<string, Set<Wait>>();
  #waitCount = 0;
  #watchCount = 0;
  #closed = false;

  private constructor(address: string, options: StoreOptions, resolved: Resolved) {
    this.address = address;
    this.#options = options;
    this.memory = resolved.memory;
    this.evict = resolved.evict;
    this.#limits = resolved.limits;
    this.#maxMessageBytes = resolved.maxMessageBytes;
    this.#ipcLimits = options.ipcLimits;
    this.#acceptor = new Acceptor<Client>(address, options, 'store', (socket) => this.#open(socket), (client) => {
      if (this.#closed) client.link.close();
      else if (client.closed) this.#acceptor.forget(client); // it left between its handshake and now
    });
  }

  /** Listens at `address` (a path or @name) and serves clients until close(). */
  static listen(address: string, options: StoreOptions = {}): TableStore {
    const evict = options.evict ?? 'lru';
    if (evict !== 'lru' && evict !== 'none') throw fail('ERR_INVALID_ARGUMENT', `evict must be "lru" or "none", got ${JSON.stringify(evict)}`);
    const resolved: Resolved = {
      memory: positive('memory', options.memory, defaultMemory()),
      evict,
      limits: resolveStoreLimits(options.limits),
      maxMessageBytes: positive('maxMessageBytes', options.maxMessageBytes, MAX_NODE_MESSAGE_BYTES),
    };
    return new TableStore(address, options, resolved);
  }

  stats(): StoreStats {
    let heldBytes = 0;
    for (const v of this.#versions()) if (v.holds > 0) heldBytes += v.bytes;
    return { entries: this.#entries.size, bytes: this.#accounted, heldBytes, memory: this.memory, evict: this.evict, evictions: this.#evictions };
  }

  /** Connections held now, handshaking ones included. */
  get connections(): number {
    return this.#acceptor.connections;
  }

  /** Keeps (default) or stops keeping the Node process alive while the store listens (its connections keep it alive while they are open). */
  ref(keep = true): this {
    this.#acceptor.ref(keep);
    return this;
  }

  /** Stops listening, closes every connection and drops every version (clients' mappings stay valid). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#acceptor.close();
    for (const client of [...this.#clients]) client.link.close();
    for (const v of this.#versions()) v.segment.close();
    this.#entries.clear();
    this.#accounted = 0;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Every version the store keeps: current ones and held older ones. */
  #versions(): Set<Version> {
    const all = new Set(this.#entries.values());
    for (const client of this.#clients) for (const v of client.holds.values()) all.add(v);
    return all;
  }

  // --- connections ------------------------------------------------------------------------------

  /** A client on an accepted socket: its handshake, then every frame it sends. */
  #open(socket: PacketSocket): Promise<Client> {
    const client = new Client();
    const events = {
      onOpen: (link: StoreLink) => {
        client.link = link;
        this.#clients.add(client);
      },
      onFrame: (frame: Frame, fds: number[]) => this.#onFrame(client, frame, fds),
      onClose: () => this.#onClientClose(client),
    };
    return StoreLink.open(socket, 'listener', this.#options, events, this.#maxMessageBytes).then(() => client);
  }

  #drop(client: Client, error: ArrowShmError): void {
    client.evict(error);
    this.#options.onConnectionError?.(error);
  }

  /** A client gone: its holds end, its waits and watches with it. */
  #onClientClose(client: Client): void {
    client.closed = true;
    this.#clients.delete(client);
    this.#acceptor.forget(client);
    for (const id of [...client.holds.keys()]) this.#release(client, id);
    for (const wait of client.waits) this.#endWait(wait);
    this.#watchCount -= client.watches.size;
    client.watches.clear();
  }

  /** Past maxQueuedFrames the client does not read its socket: it goes (§15.6). */
  #checkQueue(client: Client): void {
    if (client.link.queued > this.#limits.maxQueuedFrames) {
      this.#drop(client, fail('ERR_RESOURCE_LIMIT', `${client.link.queued} frames queued for a client that does not read them (max_queued_frames ${this.#limits.maxQueuedFrames})`));
    }
  }

  // --- frames -----------------------------------------------------------------------------------

  #onFrame(client: Client, frame: Frame, fds: number[]): void {
    switch (frame.kind) {
      case FrameKind.Table:
        this.#onPut(client, frame, fds);
        return;
      case FrameKind.Store:
        this.#onRequest(client, frame);
        return;
      case FrameKind.Release:
      case FrameKind.Error: // the client refused a get's answer: that ends the hold too
        this.#release(client, frame.correlationId);
        return;
      default:
        return; // ACK: nothing to do (§15.1)
    }
  }

  #onRequest(client: Client, frame: Frame): void {
    try {
      if (!(frame.flags & FrameFlags.REQUEST) || frame.flags & ~FrameFlags.REQUEST) throw fail('ERR_PROTOCOL', 'a STORE frame to a store must be a request (flag REQUEST only)');
      const kv = frame.metadata;
      switch (kv.op) {
        case 'get':
          return this.#get(client, frame.messageId, checkName(kv.name, this.#limits.maxNameBytes), kv.timeout_ms === undefined ? 0 : Number(parseStoreDecimal(kv.timeout_ms, 'timeout_ms')));
        case 'list':
          return this.#list(client, frame.messageId, checkPrefix(kv.prefix, this.#limits.maxNameBytes));
        case 'delete':
          return this.#answer(client, frame.messageId, { version: String(this.#delete(checkName(kv.name, this.#limits.maxNameBytes))) });
        case 'watch':
          return this.#watch(client, frame.messageId, checkPrefix(kv.prefix, this.#limits.maxNameBytes));
        case 'unwatch': {
          const id = parseStoreDecimal(kv.watch, 'watch', 19);
          if (!client.watches.delete(id)) throw fail('ERR_NOT_FOUND', `no watch ${id} on this connection`);
          this.#watchCount--;
          return this.#answer(client, frame.messageId, {});
        }
        case 'stats': {
          const s = this.stats();
          return this.#answer(client, frame.messageId, { entries: String(s.entries), bytes: String(s.bytes), held_bytes: String(s.heldBytes), memory: String(s.memory), evict: s.evict, evictions: String(s.evictions) });
        }
        default:
          throw fail('ERR_INVALID_ARGUMENT', `unknown store op ${JSON.stringify((kv.op ?? '').slice(0, 32))}`);
      }
    } catch (e) {
      client.link.sendError(asError(e), frame.messageId, (frame.flags & FrameFlags.REQUEST) !== 0);
    }
  }

  #answer(client: Client, requestId: bigint, metadata: KeyValues): void {
    client.link.send({ kind: FrameKind.Store, flags: FrameFlags.RESPONSE, correlationId: requestId, metadata });
    this.#checkQueue(client);
  }

  // --- put --------------------------------------------------------------------------------------

  /** §15.3 put: every check first; the version becomes visible in one step, or nothing does. */
  #onPut(client: Client, frame: Frame, fds: number[]): void {
    let segment: Segment | null = null;
    try {
      if (!(frame.flags & FrameFlags.REQUEST)) throw fail('ERR_INVALID_ARGUMENT', 'a TABLE sent to a store must be a put: flag REQUEST and the key arrow-shm.name (§15.3)');
      if (fds.length !== 1 || frame.fdCount !== 1) throw fail('ERR_PROTOCOL', `TABLE frame must carry exactly 1 fd, got ${fds.length} (fd_count ${frame.fdCount})`);
      if (frame.flags & FrameFlags.LEASED) throw fail('ERR_SEGMENT_UNSEALED', 'a put must carry a fully sealed segment, not a LEASED one');
      const { name, replace, metadata } = splitPutMetadata(frame.metadata, this.#limits);
      segment = Segment.adopt(fds.pop()!); // closes the fd itself if it is not a regular file
      checkReceivedSegment(segment, { policy: 'sealed', ipcOffset: frame.ipcOffset, ipcLength: frame.ipcLength, maxMessageBytes: this.#maxMessageBytes });
      const rows = countRows(segment, frame.ipcOffset, frame.ipcLength, this.#ipcLimits);
      const victims = this.#makeRoom(name, replace, segment.size);
      for (const victim of victims) {
        this.#unlist(victim, 'evict');
        this.#evictions++;
      }
      const previous = this.#entries.get(name);
      if (previous) this.#unlist(previous, null);
      const version: Version = { number: this.#nextVersion++, name, segment, ipcOffset: frame.ipcOffset, ipcLength: frame.ipcLength, bytes: segment.size, rows, createdMs: Date.now(), metadata, holds: 0, current: true };
      segment = null; // the version owns it now
      this.#entries.set(name, version);
      this.#accounted += version.bytes;
      this.#emit('put', version); // before the answer: a putter that watches sees its event first
      this.#answer(client, frame.messageId, { version: String(version.number), bytes: String(version.bytes), rows: String(rows) });
      this.#serveWaits(version);
    } catch (e) {
      closeFds(fds);
      segment?.close();
      client.link.sendError(asError(e), frame.messageId, (frame.flags & FrameFlags.REQUEST) !== 0);
    }
  }

  /** §15.4: the versions to evict so that `bytes` more fit, or ERR_RESOURCE_LIMIT / ERR_EXISTS. Evicts nothing itself. */
  #makeRoom(name: string, replace: boolean, bytes: number): Version[] {
    const previous = this.#entries.get(name);
    if (previous && !replace) throw fail('ERR_EXISTS', `${name} already has version ${previous.number} (put with replace to make a new one)`);
    if (!previous && this.#entries.size >= this.#limits.maxEntries) throw fail('ERR_RESOURCE_LIMIT', `the store holds its maximum of ${this.#limits.maxEntries} names (max_entries)`);
    if (bytes > this.memory) throw fail('ERR_RESOURCE_LIMIT', `a ${bytes}-byte segment is larger than the store's memory budget of ${this.memory} bytes`);
    let over = this.#accounted + bytes - (previous && previous.holds === 0 ? previous.bytes : 0) - this.memory;
    if (over <= 0) return [];
    if (this.evict === 'none') throw fail('ERR_RESOURCE_LIMIT', `the store is full: ${this.#accounted} of ${this.memory} bytes used, ${bytes} more asked, and it does not evict (--evict none)`);
    const victims: Version[] = [];
    for (const v of this.#entries.values()) {
      if (over <= 0) break;
      if (v.holds > 0 || v === previous) continue;
      victims.push(v);
      over -= v.bytes;
    }
    if (over > 0) throw fail('ERR_RESOURCE_LIMIT', `the store is full: ${this.#accounted} of ${this.memory} bytes used, ${bytes} more asked, and what is left is held by clients`);
    return victims;
  }

  /** Takes a version off its name (delete, evict, replace); it is dropped once nobody holds it. */
  #unlist(version: Version, event: 'delete' | 'evict' | null): void {
    this.#entries.delete(version.name);
    version.current = false;
    if (version.holds === 0) this.#forget(version);
    if (event) this.#emit(event, version);
  }

  #forget(version: Version): void {
    this.#accounted -= version.bytes;
    version.segment.close();
  }

  #delete(name: string): bigint {
    const version = this.#entries.get(name);
    if (!version) throw fail('ERR_NOT_FOUND', `no table named ${name}`);
    this.#unlist(version, 'delete');
    return version.number;
  }

  // --- get and holds ----------------------------------------------------------------------------

  #get(client: Client, requestId: bigint, name: string, timeoutMs: number): void {
    const version = this.#entries.get(name);
    if (version) return this.#hand(client, requestId, version);
    if (timeoutMs === 0) throw fail('ERR_NOT_FOUND', `no table named ${name}`);
    if (client.waits.size >= this.#limits.maxWaits) throw fail('ERR_RESOURCE_LIMIT', `${client.waits.size} gets of this connection are waiting already (max_waits ${this.#limits.maxWaits})`);
    if (this.#waitCount >= this.#limits.maxStoreWaits) throw fail('ERR_RESOURCE_LIMIT', `${this.#waitCount} gets are waiting already (max_store_waits ${this.#limits.maxStoreWaits})`);
    const wait: Wait = {
      client,
      requestId,
      name,
      timer: setTimeout(() => {
        this.#endWait(wait);
        client.link.sendError(fail('ERR_TIMEOUT', `no table named ${name} was put within ${timeoutMs} ms`), requestId, true);
      }, timeoutMs),
    };
    client.waits.add(wait);
    let waits = this.#waits.get(name);
    if (!waits) this.#waits.set(name, (waits = new Set()));
    waits.add(wait);
    this.#waitCount++;
  }

  #endWait(wait: Wait): void {
    clearTimeout(wait.timer);
    if (!wait.client.waits.delete(wait)) return;
    this.#waitCount--;
    const waits = this.#waits.get(wait.name);
    waits?.delete(wait);
    if (waits?.size === 0) this.#waits.delete(wait.name);
  }

  #serveWaits(version: Version): void {
    const waits = this.#waits.get(version.name);
    if (!waits) return;
    for (const wait of [...waits]) {
      this.#endWait(wait);
      try {
        this.#hand(wait.client, wait.requestId, version);
      } catch (e) {
        wait.client.link.sendError(asError(e), wait.requestId, true);
      }
    }
  }

  /** The get's answer: the version's fd, held until the client releases it (§15.5). */
  #hand(client: Client, requestId: bigint, version: Version): void {
    if (client.holds.size >= this.#limits.maxHolds) throw fail('ERR_RESOURCE_LIMIT', `this connection holds ${client.holds.size} tables not yet released (max_holds ${this.#limits.maxHolds})`);
    const metadata = { ...version.metadata, [NAME_KEY]: version.name, [VERSION_KEY]: String(version.number) };
    const { id } = client.link.send(
      { kind: FrameKind.Table, flags: FrameFlags.RESPONSE | FrameFlags.LEASED, correlationId: requestId, ipcOffset: version.ipcOffset, ipcLength: version.ipcLength, fdCount: 1, metadata },
      [version.segment.fd],
    );
    client.holds.set(id, version);
    version.holds++;
    this.#entries.delete(version.name); // most recently used now
    this.#entries.set(version.name, version);
    this.#checkQueue(client);
  }

  #release(client: Client, id: bigint): void {
    const version = client.holds.get(id);
    if (!version) return;
    client.holds.delete(id);
    if (--version.holds === 0 && !version.current) this.#forget(version);
  }

  // --- list and watch ---------------------------------------------------------------------------

  #list(client: Client, requestId: bigint, prefix: string): void {
    const rows = [...this.#entries.values()].filter((v) => v.name.startsWith(prefix)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const table = new Table({
      name: vectorFromArray(rows.map((v) => v.name), new Utf8()),
      version: makeVector(BigUint64Array.from(rows, (v) => v.number)),
      bytes: makeVector(BigUint64Array.from(rows, (v) => BigInt(v.bytes))),
      ipc_length: makeVector(BigUint64Array.from(rows, (v) => v.ipcLength)),
      rows: makeVector(BigUint64Array.from(rows, (v) => BigInt(v.rows))),
      created_ms: makeVector(BigInt64Array.from(rows, (v) => BigInt(v.createdMs))),
      holds: makeVector(Uint32Array.from(rows, (v) => v.holds)),
      metadata: vectorFromArray(rows.map((v) => JSON.stringify(v.metadata)), new Utf8()),
    });
    const prepared = PreparedTable.from(table);
    const { sent } = client.link.send({ kind: FrameKind.Table, flags: FrameFlags.RESPONSE, correlationId: requestId, ipcLength: BigInt(prepared.ipcLength), fdCount: 1 }, [prepared.segment.fd]);
    sent.finally(() => prepared.close()).catch(() => {});
    this.#checkQueue(client);
  }

  #watch(client: Client, requestId: bigint, prefix: string): void {
    if (client.watches.size >= this.#limits.maxWatches) throw fail('ERR_RESOURCE_LIMIT', `this connection has ${client.watches.size} watches (max_watches ${this.#limits.maxWatches})`);
    if (this.#watchCount >= this.#limits.maxStoreWatches) throw fail('ERR_RESOURCE_LIMIT', `the store has ${this.#watchCount} watches (max_store_watches ${this.#limits.maxStoreWatches})`);
    this.#answer(client, requestId, {});
    client.watches.set(requestId, prefix);
    this.#watchCount++;
  }

  #emit(event: 'put' | 'delete' | 'evict', version: Version): void {
    const metadata: KeyValues = { event, name: version.name, version: String(version.number) };
    if (event === 'put') metadata.bytes = String(version.bytes);
    for (const client of [...this.#clients]) {
      for (const [id, prefix] of client.watches) {
        if (version.name.startsWith(prefix)) client.link.send({ kind: FrameKind.Store, correlationId: id, metadata });
      }
      this.#checkQueue(client);
    }
  }
}

interface Resolved {
  memory: number;
  evict: EvictPolicy;
  limits: Readonly<StoreLimits>;
  maxMessageBytes: number;
}

/** Validates a put's IPC stream (§7, §14.1) through a read-only mapping and counts its rows. */
function countRows(segment: Segment, ipcOffset: bigint, ipcLength: bigint, limits: Partial<IpcLimits> | undefined): number {
  const mapping = segment.takeReadOnlyMapping();
  let rows = 0;
  try {
    walkIpcMessages(mapping.bytes(Number(ipcOffset), Number(ipcLength)), 'stream', (m) => {
      if (m.message.headerType === MessageHeader.RecordBatch) rows += Number(m.header?.length ?? 0);
    }, new IpcMessageChecker(limits));
  } finally {
    mapping.release();
  }
  return rows;
}

/** Starts a table store at `address` (what `arrow-shm store` runs). */
export function serveStore(address: string, options: StoreOptions = {}): TableStore {
  return TableStore.listen(address, options);
}
