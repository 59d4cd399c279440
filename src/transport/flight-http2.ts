// The data calls of a Flight client (DoPut, DoExchange, DoGet) as gRPC over node:http2:
// grpc-js copies every message twice on the way out (its serialiser's buffer, then again behind
// the 5-byte prefix), while here the FlightData's parts (tags, the table's own buffers) are
// written as they are. gRPC's semantics a Flight server relies on are kept: call metadata, the
// deadline (grpc-timeout, and a local timer), the status from trailers (or a trailers-only
// answer), cancellation (RST_STREAM CANCEL), TLS (ALPN h2, the given or the system's CAs).
import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { flightDataBodyOffset } from './flight-wire.js';

/**
 * The HTTP/2 receive window of each call and of each connection, client and server: HTTP/2's
 * default 64 KiB makes a sender wait for a WINDOW_UPDATE every 64 KiB (measured, 6 MB from
 * pyarrow: a DoGet ~19 → ~12 ms, a DoPut ~29 → ~8 ms; 16 MiB measured no better). It is also what
 * a peer may send ahead of what we read (a paused call) on one connection.
 */
export const RECEIVE_WINDOW = 4 * 2 ** 20;

/** A call's end as grpc-js reports it (fromGrpc reads `code` and `details`). */
export interface GrpcStatus {
  code: grpc.status;
  details: string;
}

const { OK, CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE } = grpc.status;

/** What a call reports: each message (the gRPC prefix removed), then its status, once. */
export interface CallHandlers {
  message(bytes: Buffer): void;
  end(status: GrpcStatus): void;
}

/** One call in flight: write gRPC messages (as parts), half-close, or cancel. */
export interface Http2Call {
  /** False: wait for `drain` before writing more (HTTP/2 flow control). */
  write(message: { parts: Uint8Array[]; length: number }): boolean;
  /** Room to write again, or the call ended. */
  once(event: 'drain', listener: () => void): void;
  end(): void;
  cancel(): void;
}

/**
 * Gives the connections of a grpc-js server RECEIVE_WINDOW: grpc-js has no option for it and
 * leaves HTTP/2's default. Its HTTP/2 servers are a private field of grpc-js (pinned, 1.14): if
 * that changes, the server works as before, only slower.
 */
export function widenReceiveWindows(server: grpc.Server): void {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map)) return;
  for (const h of servers.keys() as Iterable<http2.Http2Server | http2.Http2SecureServer>) {
    h.updateSettings({ initialWindowSize: RECEIVE_WINDOW });
    h.on('session', (session: http2.ServerHttp2Session) => session.setLocalWindowSize(RECEIVE_WINDOW));
  }
}

/** One HTTP/2 connection to a Flight server, made again when it was lost (like a grpc-js channel). */
export class Http2Connection {
  #session: http2.ClientHttp2Session | null = null;
  /** Calls in flight, per session. */
  #active = new WeakMap<http2.ClientHttp2Session, number>();

  constructor(
    /** host:port */
    readonly target: string,
    readonly tls: boolean,
    readonly rootCertificate: Uint8Array | undefined,
  ) {}

  #connected(): http2.ClientHttp2Session {
    if (this.#session && !this.#session.closed && !this.#session.destroyed) return this.#session;
    // No session memory cap (as grpc-js): a 64 MiB table being written must not make Node refuse the
    // next call; what is buffered is bounded per call instead (maxMessageBytes, the collector's limits).
    // Receive windows of RECEIVE_WINDOW (HTTP/2's default is 64 KiB; pyarrow's gRPC grows its own):
    // a server answering a DoGet does not wait for a WINDOW_UPDATE every 64 KiB; what it may send
    // ahead of what we read is bounded by them.
    const options: http2.SecureClientSessionOptions = { maxSessionMemory: Number.MAX_SAFE_INTEGER, settings: { initialWindowSize: RECEIVE_WINDOW } };
    if (this.tls && this.rootCertificate) options.ca = Buffer.from(this.rootCertificate);
    const session = http2.connect(`${this.tls ? 'https' : 'http'}://${this.target}`, options);
    session.on('error', () => {}); // each call reports it through its stream
    session.on('goaway', () => session.close());
    session.once('connect', () => session.setLocalWindowSize(RECEIVE_WINDOW)); // the connection's window, not only each stream's
    session.unref(); // an idle connection does not keep the process alive; a call in flight does (#track)
    this.#session = session;
    return session;
  }

  /** Keeps the process alive while calls are in flight (grpc-js does the same); returns the call's release. */
  #track(session: http2.ClientHttp2Session): () => void {
    const active = this.#active.get(session) ?? 0;
    if (active === 0) session.ref();
    this.#active.set(session, active + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = this.#active.get(session)! - 1;
      this.#active.set(session, left);
      if (left === 0 && !session.destroyed) session.unref();
    };
  }

  /**
   * Starts a call of `method` (`/package.Service/Method`). `maxMessageBytes` bounds each message
   * from its 5-byte prefix, before it is buffered; `deadline` is a Date.now() time.
   */
  call(method: string, metadata: Record<string, string>, deadline: number | undefined, maxMessageBytes: number, handlers: CallHandlers): Http2Call {
    let ended = false;
    let stream: http2.ClientHttp2Stream | undefined;
    let release = () => {};
    /** Writers waiting for room: woken by 'drain', or by the end of the call (no room will come). */
    const waiting = new Set<() => void>();
    const wake = () => {
      for (const w of waiting) w();
      waiting.clear();
    };
    const end = (status: GrpcStatus) => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      release();
      wake();
      handlers.end(status);
      if (status.code !== OK && stream && !stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
    };
    const headers: http2.OutgoingHttpHeaders = { ':method': 'POST', ':path': method, 'content-type': 'application/grpc', te: 'trailers', 'grpc-accept-encoding': 'identity', ...metadata };
    if (deadline !== undefined) headers['grpc-timeout'] = timeoutHeader(deadline - Date.now());
    const timer = deadline === undefined ? undefined : setTimeout(() => end({ code: DEADLINE_EXCEEDED, details: 'Deadline exceeded' }), Math.max(0, deadline - Date.now()));
    let request: http2.ClientHttp2Stream;
    try {
      const session = this.#connected();
      request = session.request(headers);
      release = this.#track(session);
    } catch (e) {
      const status = { code: UNAVAILABLE, details: `cannot reach ${this.target}: ${(e as Error).message}` };
      queueMicrotask(() => end(status));
      return { write: () => true, once: (_event, listener) => listener(), end: () => {}, cancel: () => {} };
    }
    stream = request;
    const reader = new MessageReader(maxMessageBytes, handlers.message, (status) => end(status));
    const statusOf = (h: http2.IncomingHttpHeaders): GrpcStatus | null => {
      const code = h['grpc-status'];
      if (code === undefined) return null;
      return { code: Number(code), details: decodeMessage(String(h['grpc-message'] ?? '')) };
    };
    request.on('response', (h) => {
      const status = statusOf(h); // trailers-only: the call ended at once
      if (status) end(status);
      else if (h[':status'] !== 200) end({ code: UNAVAILABLE, details: `HTTP status ${h[':status']}` });
    });
    request.on('drain', wake);
    request.on('data', (chunk: Buffer) => {
      if (!ended) reader.push(chunk);
    });
    request.on('trailers', (h) => end(statusOf(h) ?? { code: INTERNAL, details: 'the server ended the call without a status' }));
    request.on('error', (e) => end({ code: UNAVAILABLE, details: e.message }));
    request.on('close', () => {
      const code = request.rstCode === http2.constants.NGHTTP2_CANCEL ? CANCELLED : request.rstCode ? UNAVAILABLE : INTERNAL;
      end({ code, details: code === INTERNAL ? 'the server ended the call without a status' : `the call was reset (HTTP/2 error ${request.rstCode})` });
    });
    return {
      write: ({ parts, length }) => {
        const prefix = Buffer.allocUnsafe(5);
        prefix[0] = 0; // not compressed
        prefix.writeUInt32BE(length, 1);
        request.cork();
        let room = request.write(prefix);
        for (const p of parts) room = request.write(p);
        request.uncork();
        return room;
      },
      once: (_event, listener) => void (ended ? listener() : waiting.add(listener)),
      end: () => void request.end(),
      cancel: () => end({ code: CANCELLED, details: 'Cancelled on client' }),
    };
  }

  close(): void {
    this.#session?.close();
    this.#session = null;
  }
}

/** The first bytes of a message a reader gathers to find where a FlightData's body starts. */
const HEAD = 4096;

/**
 * Splits a gRPC response body into messages, each bounded by its prefix before anything is
 * allocated. A message spread over several chunks is copied once into a buffer of its exact size
 * (not zeroed), placed so that a FlightData's body lands 8-byte aligned (its first bytes, gathered
 * first, say where): decoding it then moves nothing.
 */
export class MessageReader {
  #prefix = Buffer.alloc(5);
  #prefixHave = 0;
  #head = Buffer.allocUnsafe(HEAD);
  #message: Buffer | null = null;
  #have = 0;
  #need = 0;

  constructor(
    private readonly max: number,
    private readonly onMessage: (bytes: Buffer) => void,
    private readonly onError: (status: GrpcStatus) => void,
  ) {}

  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#prefixHave < 5) {
        const n = Math.min(5 - this.#prefixHave, chunk.length - at);
        chunk.copy(this.#prefix, this.#prefixHave, at, at + n);
        this.#prefixHave += n;
        at += n;
        if (this.#prefixHave < 5) return;
        if (this.#prefix[0] !== 0) return this.onError({ code: INTERNAL, details: 'a compressed message, though none was accepted' });
        this.#need = this.#prefix.readUInt32BE(1);
        if (this.#need > this.max) return this.onError({ code: RESOURCE_EXHAUSTED, details: `Received message larger than max (${this.#need} vs ${this.max})` });
        this.#have = 0;
        if (this.#need === 0) this.#deliver(Buffer.alloc(0));
        continue;
      }
      let n = Math.min(this.#need - this.#have, chunk.length - at);
      if (this.#message) {
        chunk.copy(this.#message, this.#have, at, at + n);
      } else if (this.#have === 0 && n === this.#need) {
        this.#deliver(chunk.subarray(at, at + n)); // the whole message in this chunk: a view (the chunk is this read's own)
        at += n;
        continue;
      } else {
        n = Math.min(n, HEAD - this.#have);
        chunk.copy(this.#head, this.#have, at, at + n);
        const body = flightDataBodyOffset(this.#head.subarray(0, this.#have + n));
        if (body >= 0 || this.#have + n === HEAD || this.#have + n === this.#need) {
          this.#message = placed(this.#need, body);
          this.#head.copy(this.#message, 0, 0, this.#have + n);
        }
      }
      this.#have += n;
      at += n;
      if (this.#have === this.#need) this.#deliver(this.#message!);
    }
  }

  #deliver(message: Buffer): void {
    this.#message = null;
    this.#prefixHave = 0;
    this.onMessage(message);
  }
}

/** A buffer of `length` bytes for a message whose FlightData body starts at `body` (-1: unknown), placed so that it is 8-byte aligned. */
function placed(length: number, body: number): Buffer {
  const shift = body < 0 ? 0 : (8 - (body % 8)) % 8;
  // Small ones from Node's pool (its slices start 8-byte aligned), large ones in memory of their own.
  const buffer = length + shift <= 4096 ? Buffer.allocUnsafe(length + shift) : Buffer.allocUnsafeSlow(length + shift);
  return buffer.subarray(shift, shift + length);
}

/** At most 8 digits (gRPC over HTTP/2): milliseconds, else seconds. */
function timeoutHeader(ms: number): string {
  const n = Math.max(1, Math.ceil(ms));
  return n < 1e8 ? `${n}m` : `${Math.min(99_999_999, Math.ceil(n / 1000))}S`;
}

/** grpc-message is percent-encoded (gRPC over HTTP/2); a malformed one is shown as it came. */
function decodeMessage(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
