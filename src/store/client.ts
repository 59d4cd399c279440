// A client of a table store (docs/PROTOCOL.md §15): put, get (zero copy, held until close()),
// list, delete, watch, stats over one connection.
import type { Table } from 'apache-arrow';
import { type ArrowShmError, fail } from '../errors.js';
import type { IpcLimits } from '../ipc/limits.js';
import { PreparedTable, type Sendable } from '../ipc/prepared.js';
import { AsyncQueue } from '../queue.js';
import { closeFds } from '../shm/fds.js';
import { MAX_NODE_MESSAGE_BYTES } from '../shm/segment.js';
import { withTimeout } from '../timeout.js';
import { asError } from '../transport/channel.js';
import { FrameFlags, FrameKind, type Frame, type FrameInit, type KeyValues } from '../transport/frame.js';
import type { ReceivedTable, TableOrigin } from '../transport/received.js';
import { connectSocket, PacketSocket } from '../transport/socket.js';
import { remoteError, StoreLink, type LinkOptions } from './link.js';
import { checkName, checkPrefix, parseStoreDecimal, putMetadata, type EvictPolicy } from './protocol.js';
import type { StoreStats } from './server.js';

export interface StoreClientOptions extends LinkOptions {
  /** Give up connecting (and the handshake) after this many ms. */
  timeoutMs?: number;
  /** What a received table may decode to (§14.1). */
  ipcLimits?: Partial<IpcLimits>;
  /** Events a watch keeps for a reader that does not take them; past it the watch fails with ERR_RESOURCE_LIMIT. Default 4096. */
  maxQueuedEvents?: number;
}

export interface PutOptions {
  /** User metadata, returned with every get (keys starting with `arrow-shm.` are reserved). */
  metadata?: KeyValues;
  /** Make a new version if the name exists (default: fail with ERR_EXISTS). */
  replace?: boolean;
}

export interface PutResult {
  version: number;
  /** What the store accounts for this version (the segment's size). */
  bytes: number;
  rows: number;
}

export interface GetOptions {
  /** Wait up to this long for the name to be put (default: fail at once with ERR_NOT_FOUND). */
  timeoutMs?: number;
}

export interface StoreEntry {
  name: string;
  version: number;
  bytes: number;
  ipcLength: number;
  rows: number;
  createdMs: number;
  /** Gets of this version not yet released, all clients. */
  holds: number;
  metadata: KeyValues;
}

export interface StoreEvent {
  event: 'put' | 'delete' | 'evict';
  name: string;
  version: number;
  /** For `put`: the new version's accounted bytes. */
  bytes?: number;
}

interface Pending {
  resolve: (answer: { kv: KeyValues; table?: ReceivedTable }) => void;
  reject: (e: unknown) => void;
}

/** A store answers a waiting get by ERR_TIMEOUT itself; the client gives it this much longer. */
const GRACE_MS = 5000;

export class StoreClient {
  #link: StoreLink;
  #options: StoreClientOptions;
  #pending = new Map<bigint, Pending>();
  #watches = new Map<bigint, StoreWatch>();
  /** What received tables need of us: RELEASE for a held one. */
  #origin: TableOrigin;

  private constructor(link: StoreLink, options: StoreClientOptions) {
    this.#link = link;
    this.#options = options;
    const notARequest = () => Promise.reject(fail('ERR_INVALID_ARGUMENT', 'a table from a store is not a request'));
    this.#origin = { sendFrameWithTable: notARequest, sendError: notARequest, releaseLease: (id) => this.#releaseHold(id) };
  }

  /** Connects to the store at `address` and completes the handshake. */
  static async open(address: string, options: StoreClientOptions = {}): Promise<StoreClient> {
    const fd = await connectSocket(address, true, options.timeoutMs);
    let client: StoreClient | null = null;
    const events = {
      onOpen: (link: StoreLink) => void (client = new StoreClient(link, options)),
      onFrame: (frame: Frame, fds: number[]) => client!.#onFrame(frame, fds),
      onClose: (error: ArrowShmError) => {
        if (client) client.#onClose(error);
      },
    };
    await StoreLink.open(new PacketSocket(fd), 'connector', { handshakeTimeoutMs: options.timeoutMs, ...options }, events, options.maxMessageBytes ?? MAX_NODE_MESSAGE_BYTES);
    return client!;
  }

  get closed(): boolean {
    return this.#link.closed;
  }

  /**
   * Puts a table (written once into a new sealed segment), raw IPC stream bytes, or a PreparedTable
   * (no copy; it stays yours to close) under `name`.
   */
  async put(name: string, data: Sendable, options: PutOptions = {}): Promise<PutResult> {
    const metadata = putMetadata(name, options.metadata, options.replace);
    const prepared = data instanceof PreparedTable ? data : PreparedTable.from(data);
    let answer: Promise<{ kv: KeyValues }>;
    try {
      const request = this.#request({ kind: FrameKind.Table, ipcOffset: BigInt(prepared.ipcOffset), ipcLength: BigInt(prepared.ipcLength), fdCount: 1, metadata }, [prepared.segment.fd]);
      answer = request.answer;
      await request.sent;
    } finally {
      if (prepared !== data) prepared.close(); // the store has its own fd now
    }
    const { kv } = await answer;
    return { version: decimal(kv.version, 'version'), bytes: decimal(kv.bytes, 'bytes'), rows: decimal(kv.rows, 'rows') };
  }

  /**
   * The table under `name`, mapped read-only (zero copy). The store holds that version (never
   * evicts it) until `close()` on the result; it stays readable even if the store goes away.
   */
  async get(name: string, options: GetOptions = {}): Promise<ReceivedTable> {
    checkName(name);
    const waitMs = options.timeoutMs ?? 0;
    if (!Number.isSafeInteger(waitMs) || waitMs < 0 || waitMs > 999_999_999) throw fail('ERR_INVALID_ARGUMENT', `timeoutMs must be an integer from 0 to 999999999, got ${options.timeoutMs}`);
    const kv: KeyValues = { op: 'get', name };
    if (waitMs > 0) kv.timeout_ms = String(waitMs);
    const { id, answer } = this.#request({ kind: FrameKind.Store, metadata: kv });
    let table: ReceivedTable | undefined;
    try {
      ({ table } = await withTimeout(answer, waitMs > 0 ? waitMs + GRACE_MS : undefined, `the store did not answer the get of ${name}`));
    } catch (e) {
      this.#pending.delete(id); // a late answer is handed back at once
      throw e;
    }
    if (!table) throw fail('ERR_PROTOCOL', 'the store answered a get without a table');
    return table;
  }

  /** Every name (starting with `prefix`), in byte order. */
  async list(prefix = ''): Promise<StoreEntry[]> {
    const kv: KeyValues = { op: 'list' };
    if (checkPrefix(prefix)) kv.prefix = prefix;
    const { table: message } = await this.#request({ kind: FrameKind.Store, metadata: kv }).answer;
    if (!message) throw fail('ERR_PROTOCOL', 'the store answered a list without a table');
    try {
      return listEntries(message.table);
    } finally {
      message.close();
    }
  }

  /** Removes `name` (holders keep their version); resolves with the version removed. */
  async delete(name: string): Promise<number> {
    const { kv } = await this.#request({ kind: FrameKind.Store, metadata: { op: 'delete', name: checkName(name) } }).answer;
    return decimal(kv.version, 'version');
  }

  /** Usage: names, accounted and held bytes, the budget, evictions. */
  async stats(): Promise<StoreStats> {
    const { kv } = await this.#request({ kind: FrameKind.Store, metadata: { op: 'stats' } }).answer;
    const evict = kv.evict as EvictPolicy;
    if (evict !== 'lru' && evict !== 'none') throw fail('ERR_PROTOCOL', `the store reported evict=${JSON.stringify(kv.evict)}`);
    return { entries: decimal(kv.entries, 'entries'), bytes: decimal(kv.bytes, 'bytes'), heldBytes: decimal(kv.held_bytes, 'held_bytes'), memory: decimal(kv.memory, 'memory'), evict, evictions: decimal(kv.evictions, 'evictions') };
  }

  /**
   * Events for every later put, delete and eviction of a name starting with `prefix`, as an async
   * iterable; `await watch.ready` to know the store has it. `close()` ends it.
   */
  watch(prefix = ''): StoreWatch {
    const kv: KeyValues = { op: 'watch' };
    if (checkPrefix(prefix)) kv.prefix = prefix;
    const { id, answer } = this.#request({ kind: FrameKind.Store, metadata: kv });
    const watch = new StoreWatch(
      answer.then(() => undefined),
      () => this.#unwatch(id),
      this.#options.maxQueuedEvents ?? 4096,
    );
    this.#watches.set(id, watch);
    answer.catch((e) => {
      this.#watches.delete(id); // refused: nothing to unwatch
      watch.end(asError(e));
    });
    return watch;
  }

  /** Keeps (default) or stops keeping the Node process alive while the connection is open. */
  ref(keep = true): this {
    this.#link.ref(keep);
    return this;
  }

  /** Closes the connection: pending requests fail, watches end; tables already received stay readable. */
  close(): void {
    this.#link.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #unwatch(id: bigint): void {
    if (!this.#watches.delete(id) || this.#link.closed) return;
    this.#request({ kind: FrameKind.Store, metadata: { op: 'unwatch', watch: String(id) } }).answer.catch(() => {});
  }

  #request(init: Omit<FrameInit, 'messageId' | 'flags'>, fds: number[] = []): { id: bigint; sent: Promise<void>; answer: Promise<{ kv: KeyValues; table?: ReceivedTable }> } {
    const { id, sent } = this.#link.send({ ...init, flags: FrameFlags.REQUEST }, fds);
    const answer = new Promise<{ kv: KeyValues; table?: ReceivedTable }>((resolve, reject) => {
      if (this.#link.closed) return reject(this.#link.closeError);
      this.#pending.set(id, { resolve, reject });
    });
    answer.catch(() => {});
    const settled = () => this.#pending.delete(id);
    answer.then(settled, settled);
    return { id, sent, answer };
  }

  #releaseHold(id: bigint): void {
    if (!this.#link.closed) this.#link.send({ kind: FrameKind.Release, correlationId: id });
  }

  #onFrame(frame: Frame, fds: number[]): void {
    const pending = frame.flags & FrameFlags.RESPONSE ? this.#pending.get(frame.correlationId) : undefined;
    switch (frame.kind) {
      case FrameKind.Table:
        return this.#onTable(frame, fds, pending);
      case FrameKind.Store:
        if (frame.flags & FrameFlags.RESPONSE) pending?.resolve({ kv: frame.metadata });
        else this.#watches.get(frame.correlationId)?.push(frame.metadata);
        return;
      case FrameKind.Error:
        pending?.reject(remoteError(frame.metadata));
        return;
      default:
        return; // ACK, RELEASE: nothing to do
    }
  }

  /** A get's or list's answer: §5.1 with the sealed policy; a refused or unwanted held table is handed back at once. */
  #onTable(frame: Frame, fds: number[], pending: Pending | undefined): void {
    const held = (frame.flags & FrameFlags.LEASED) !== 0;
    if (!pending) {
      closeFds(fds);
      if (held) this.#releaseHold(frame.messageId);
      return;
    }
    let table: ReceivedTable;
    try {
      table = this.#link.mapTable(frame, fds, held ? this.#origin : null, this.#options.maxMessageBytes ?? MAX_NODE_MESSAGE_BYTES, this.#options.ipcLimits);
    } catch (e) {
      const error = asError(e);
      this.#link.sendError(error, frame.messageId, false); // ends the hold (§15.3)
      pending.reject(error);
      return;
    }
    pending.resolve({ kv: frame.metadata, table });
  }

  #onClose(error: ArrowShmError): void {
    const closed = error.code === 'ERR_CLOSED' || error.code === 'ERR_PEER_CLOSED' ? fail('ERR_PEER_CLOSED', 'the store connection closed before the store answered') : error;
    for (const p of this.#pending.values()) p.reject(closed);
    this.#pending.clear();
    for (const watch of this.#watches.values()) watch.end(error.code === 'ERR_CLOSED' ? null : error);
    this.#watches.clear();
  }
}

/** Events of one watch: `for await (const e of watch)`. */
export class StoreWatch implements AsyncIterable<StoreEvent> {
  #queue = new AsyncQueue<StoreEvent>();
  #error: ArrowShmError | null = null;
  #unwatch: () => void;
  #maxQueued: number;

  /** @internal */
  constructor(
    readonly ready: Promise<void>,
    unwatch: () => void,
    maxQueued: number,
  ) {
    this.#unwatch = unwatch;
    this.#maxQueued = maxQueued;
    ready.catch(() => {});
  }

  /** @internal */
  push(kv: KeyValues): void {
    if (this.#queue.closed) return;
    const event = kv.event;
    if ((event !== 'put' && event !== 'delete' && event !== 'evict') || kv.name === undefined) return this.end(fail('ERR_PROTOCOL', `malformed store event ${JSON.stringify(kv).slice(0, 200)}`));
    if (this.#queue.size >= this.#maxQueued) return this.end(fail('ERR_RESOURCE_LIMIT', `${this.#queue.size} store events not taken (maxQueuedEvents ${this.#maxQueued})`));
    const out: StoreEvent = { event, name: kv.name, version: decimal(kv.version, 'version') };
    if (kv.bytes !== undefined) out.bytes = decimal(kv.bytes, 'bytes');
    this.#queue.push(out);
  }

  /** @internal Ends the iteration: cleanly (null) or with `error` once the queued events are taken. */
  end(error: ArrowShmError | null): void {
    if (this.#queue.closed) return;
    this.#error = error;
    this.#queue.close();
    this.#unwatch();
  }

  close(): void {
    this.end(null);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<StoreEvent, void, undefined> {
    await this.ready;
    try {
      for (;;) {
        const next = await this.#queue.take();
        if (next) {
          yield next;
          continue;
        }
        if (this.#error) throw this.#error;
        return;
      }
    } finally {
      this.close();
    }
  }
}

/** The listing table of §15.3 as plain objects. */
function listEntries(table: Table): StoreEntry[] {
  const column = (name: string) => {
    const c = table.getChild(name);
    if (!c) throw fail('ERR_PROTOCOL', `the store's listing has no column ${name}`);
    return c;
  };
  const [names, versions, bytes, ipcLengths, rows, created, holds, metadata] = ['name', 'version', 'bytes', 'ipc_length', 'rows', 'created_ms', 'holds', 'metadata'].map(column);
  const out: StoreEntry[] = [];
  for (let i = 0; i < table.numRows; i++) {
    out.push({
      name: String(names!.get(i)),
      version: Number(versions!.get(i)),
      bytes: Number(bytes!.get(i)),
      ipcLength: Number(ipcLengths!.get(i)),
      rows: Number(rows!.get(i)),
      createdMs: Number(created!.get(i)),
      holds: Number(holds!.get(i)),
      metadata: JSON.parse(String(metadata!.get(i))) as KeyValues,
    });
  }
  return out;
}

/** A number the store sent: a malformed one is the store's fault (ERR_PROTOCOL). */
function decimal(text: string | undefined, key: string): number {
  try {
    return Number(parseStoreDecimal(text, key, 19));
  } catch (e) {
    throw fail('ERR_PROTOCOL', `the store sent ${(e as Error).message}`);
  }
}

/** Connects to a table store. */
export function openStore(address: string, options: StoreClientOptions = {}): Promise<StoreClient> {
  return StoreClient.open(address, options);
}
