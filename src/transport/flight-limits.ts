// Limits of the Flight transport (docs/PROTOCOL.md §13.3): a network port trusts nobody, so every
// call is bounded in size, count and time, the server in calls and held bytes, and FlightData is
// verified message by message (the flatbuffer verification and decoding limits of §14.1) as it
// arrives, before apache-arrow sees a byte. Both directions use it: a server reading DoPut and
// DoExchange, a client reading DoGet and DoExchange responses.
import { createHash, timingSafeEqual } from 'node:crypto';
import { ArrowShmError, fail } from '../errors.js';
import { resolveIpcLimits, type IpcLimits } from '../ipc/limits.js';
import { verifyMessageFlatbuffer } from '../ipc/flatbuffer.js';

export interface FlightLimits {
  /** Largest single FlightData (one gRPC message), checked by gRPC from its length prefix. */
  maxFlightDataBytes: number;
  /** Bytes of FlightData (headers, bodies, app_metadata) in one call: the largest table. */
  maxCallBytes: number;
  /** FlightData messages in one call (schema, dictionaries, batches). */
  maxCallMessages: number;
  /** Server: calls reading data (DoPut, DoExchange, Handshake) at once, all connections together. */
  maxConcurrentCalls: number;
  /** Server: calls open at once on one connection (HTTP/2 streams; a client queues the others). */
  maxCallsPerConnection: number;
  /** Server: bytes held for calls being read, tables not yet received and tables kept for DoGet. */
  maxHeldBytes: number;
  /** Received tables waiting for `receive()` (server) or a channel's `receive()`. */
  maxInboxMessages: number;
  /** A call reading data gets no FlightData for this long: refused (a client's clocks start at the first FlightData). */
  callIdleTimeoutMs: number;
  /** Reading one call's data takes at most this long (slow-drip streams). */
  callTimeoutMs: number;
  /** Server: a connection without calls for this long is closed. */
  connectionIdleTimeoutMs: number;
  /** FlightInfos in one ListFlights answer (a server lists no more, a client reads no more). */
  maxListedFlights: number;
  /** Decoding limits (§14.1) applied to every data_header; the IPC defaults when absent. */
  ipc: Partial<IpcLimits>;
}

const MiB = 2 ** 20;
export const DEFAULT_FLIGHT_LIMITS: Readonly<FlightLimits> = Object.freeze({
  maxFlightDataBytes: 256 * MiB,
  maxCallBytes: 1024 * MiB,
  maxCallMessages: 100_000,
  maxConcurrentCalls: 64,
  maxCallsPerConnection: 16,
  maxHeldBytes: 2048 * MiB,
  maxInboxMessages: 64,
  callIdleTimeoutMs: 30_000,
  callTimeoutMs: 600_000,
  connectionIdleTimeoutMs: 300_000,
  maxListedFlights: 1000,
  ipc: {},
});

/** The limits in force: the defaults, `limits`, and the older `maxMessageBytes` option (= maxCallBytes). */
export function flightLimits(limits: Partial<FlightLimits> | undefined, maxMessageBytes?: number): FlightLimits {
  const resolved: FlightLimits = { ...DEFAULT_FLIGHT_LIMITS, ...(maxMessageBytes !== undefined ? { maxCallBytes: maxMessageBytes } : {}), ...limits };
  for (const [key, value] of Object.entries(resolved)) {
    if (key !== 'ipc' && (!Number.isSafeInteger(value) || (value as number) <= 0)) throw fail('ERR_INVALID_ARGUMENT', `${key} must be a positive integer, got ${String(value)}`);
  }
  resolved.ipc = resolveIpcLimits(resolved.ipc); // checked now, and resolved once rather than per FlightData
  return resolved;
}

// ----------------------------------------------------------------------------------- exposure

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^(::ffff:)?127\.\d+\.\d+\.\d+$/.test(h);
}

/** Refuses to serve a non-loopback address without TLS and a token, unless the caller insists. */
export function checkExposure(host: string, tls: boolean, token: string | undefined, insecure: boolean | undefined): void {
  if (insecure || isLoopback(host) || (tls && token)) return;
  const missing = [tls ? null : 'TLS', token ? null : 'a token'].filter(Boolean).join(' and ');
  throw fail(
    'ERR_INVALID_ARGUMENT',
    `refusing to listen on ${host || 'every address'} without ${missing}: anyone who reaches the port could send tables and read them; use 127.0.0.1, give TLS and a token, or say insecure (option insecure: true, CLI --insecure)`,
  );
}

/** Compares `authorization` call metadata with `Bearer <token>` in constant time (fixed-size digests). */
export function tokenChecker(token: string | undefined): (header: unknown) => boolean {
  if (!token) return () => true;
  const expected = createHash('sha256').update(`Bearer ${token}`).digest();
  return (header) => typeof header === 'string' && timingSafeEqual(createHash('sha256').update(header).digest(), expected);
}

// ---------------------------------------------------------------------------------- resources

/** A server's bytes in memory; `reclaim` may free some (drop tables kept for DoGet) before a refusal. */
export class HeldBytes {
  total = 0;
  constructor(
    readonly max: number,
    private readonly reclaim: (needed: number) => void = () => {},
  ) {}

  take(n: number): void {
    if (this.total + n > this.max) this.reclaim(this.total + n - this.max);
    if (this.total + n > this.max) throw fail('ERR_RESOURCE_LIMIT', `the server holds ${this.total} bytes; ${n} more would pass its ${this.max}-byte limit (maxHeldBytes)`);
    this.total += n;
  }

  give(n: number): void {
    this.total = Math.max(0, this.total - n);
  }
}

/**
 * Counts the server's calls that read data, per connection. When all `max` are taken, a call from
 * a connection holding at least two fewer calls than the busiest one takes that one's oldest call
 * (which is refused), so one client's flood cannot lock out the others; otherwise it is refused.
 */
export class CallGate {
  active = 0;
  /** Per connection, its calls oldest first, each with the way to end it. */
  #calls = new Map<string, Set<(e: ArrowShmError) => void>>();
  constructor(readonly max: number) {}

  /** A release function, or a typed error when the server is full. `evict` ends this call to make room for another. */
  enter(connection: string, evict: (e: ArrowShmError) => void): () => void {
    if (this.active >= this.max) this.#makeRoom(connection);
    let calls = this.#calls.get(connection);
    if (!calls) this.#calls.set(connection, (calls = new Set()));
    calls.add(evict);
    this.active++;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.active--;
      calls.delete(evict);
      if (calls.size === 0 && this.#calls.get(connection) === calls) this.#calls.delete(connection);
    };
  }

  #makeRoom(connection: string): void {
    const mine = this.#calls.get(connection)?.size ?? 0;
    let busiest: Set<(e: ArrowShmError) => void> | null = null;
    for (const calls of this.#calls.values()) if (!busiest || calls.size > busiest.size) busiest = calls;
    if (!busiest || busiest.size < mine + 2) throw fail('ERR_RESOURCE_LIMIT', `the server is reading ${this.active} calls already (maxConcurrentCalls)`);
    const oldest = busiest.values().next().value!;
    oldest(fail('ERR_RESOURCE_LIMIT', `the server is reading ${this.active} calls and this connection holds the most: its oldest call makes room for another connection's (maxConcurrentCalls)`));
    if (this.active >= this.max) throw fail('ERR_RESOURCE_LIMIT', `the server is reading ${this.active} calls already (maxConcurrentCalls)`);
  }
}

const EMPTY = new Uint8Array(0);

/** FlightData, or a PutResult (app_metadata only). */
interface FlightDataLike {
  data_header?: Uint8Array;
  data_body?: Uint8Array;
  app_metadata?: Uint8Array;
}

/**
 * The FlightData of one call, bounded as it arrives: count, bytes (the call's and the server's),
 * each data_header verified, idle and overall deadlines. The first violation calls `onFail` once
 * and drops what was collected; later messages are ignored.
 */
export class FlightDataCollector<T extends FlightDataLike> {
  messages: T[] = [];
  bytes = 0;
  #failed: ArrowShmError | null = null;
  #finished = false;
  #idle: NodeJS.Timeout | null = null;
  #overall: NodeJS.Timeout | null = null;
  private readonly held: HeldBytes | null;
  private readonly what: string;

  constructor(
    private readonly limits: FlightLimits,
    private readonly onFail: (e: ArrowShmError) => void,
    options: { held?: HeldBytes; clockFromStart: boolean; what: string },
  ) {
    this.held = options.held ?? null;
    this.what = options.what;
    if (options.clockFromStart) {
      this.#startClock();
      this.#armIdle();
    }
  }

  #startClock(): void {
    this.#overall = setTimeout(() => this.fail(fail('ERR_TIMEOUT', `${this.what} took longer than ${this.limits.callTimeoutMs} ms (callTimeoutMs)`)), this.limits.callTimeoutMs);
  }

  #armIdle(): void {
    if (this.#idle) this.#idle.refresh();
    else this.#idle = setTimeout(() => this.fail(fail('ERR_TIMEOUT', `${this.what} sent nothing for ${this.limits.callIdleTimeoutMs} ms (callIdleTimeoutMs)`)), this.limits.callIdleTimeoutMs);
  }

  /** Neither failed nor finished: still taking messages. */
  get collecting(): boolean {
    return !this.#failed && !this.#finished;
  }

  /** Takes one message; false once the call failed. */
  add(m: T): boolean {
    if (this.#failed || this.#finished) return false;
    try {
      const header = m.data_header ?? EMPTY;
      const size = header.length + (m.data_body?.length ?? 0) + (m.app_metadata?.length ?? 0);
      if (this.messages.length >= this.limits.maxCallMessages) throw fail('ERR_RESOURCE_LIMIT', `${this.what} has more than ${this.limits.maxCallMessages} FlightData messages (maxCallMessages)`);
      if (this.bytes + size > this.limits.maxCallBytes) throw fail('ERR_TOO_LARGE', `${this.what} has more than ${this.limits.maxCallBytes} bytes (maxCallBytes)`);
      if (size > this.limits.maxFlightDataBytes) throw fail('ERR_TOO_LARGE', `a FlightData of ${size} bytes passes the ${this.limits.maxFlightDataBytes}-byte limit (maxFlightDataBytes)`);
      // Before it is kept: the decoding limits count what Message.decode would produce.
      if (header.length > 0) verifyMessageFlatbuffer(header, this.limits.ipc);
      this.held?.take(size);
      this.bytes += size;
      this.messages.push(m);
      if (!this.#overall) this.#startClock();
      this.#armIdle();
      return true;
    } catch (e) {
      this.fail(e instanceof ArrowShmError ? e : fail('ERR_IPC_INVALID', String(e), e));
      return false;
    }
  }

  /** The call ended well: the messages, and the bytes are the caller's to give back (`release`). */
  finish(): T[] | null {
    if (this.#failed) return null;
    this.#finished = true;
    this.#stopTimers();
    return this.messages;
  }

  /** Gives the collected bytes back to the server's count and drops the messages. */
  release(): void {
    this.held?.give(this.bytes);
    this.bytes = 0;
    this.messages = [];
  }

  fail(e: ArrowShmError): void {
    if (this.#failed || this.#finished) return;
    this.#failed = e;
    this.#stopTimers();
    this.release();
    this.onFail(e);
  }

  #stopTimers(): void {
    if (this.#idle) clearTimeout(this.#idle);
    if (this.#overall) clearTimeout(this.#overall);
    this.#idle = this.#overall = null;
  }
}
