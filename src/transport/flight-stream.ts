// Streams over Flight (docs/PROTOCOL.md §13.5): a gRPC call's FlightData one message at a time,
// in either direction, with HTTP/2 flow control as the back-pressure. A source is a call whose
// FlightData this side reads (a server's DoPut, a client's DoGet): pausing it stops reading, so
// the peer's window fills and its writes wait. A sink is a call this side writes (a server's DoGet,
// a client's DoPut): `write` resolves once there is room for more. src/stream builds the stream
// readers and writers on them; nothing here buffers more than the message in hand.
import * as grpc from '@grpc/grpc-js';
import { ArrowShmError, fail } from '../errors.js';
import { fromGrpc, toStatus } from './flight-status.js';
import type { FlightData, OutgoingFlightData } from './flight-codec.js';
import { flightDataParts } from './flight-wire.js';
import type { CallHandlers, GrpcStatus, Http2Call } from './flight-http2.js';

export interface SourceHandlers {
  data(m: FlightData): void;
  /** The peer ended the call well. */
  end(): void;
  /** The call failed (peer's status, cancellation, deadline): once, instead of `end`. */
  error(e: ArrowShmError): void;
}

/** FlightData arriving on one call, one message per `data`. */
export interface FlightDataSource {
  /** The peer, as gRPC reports it. */
  readonly peer: string;
  /** Starts the events (once). */
  start(handlers: SourceHandlers): void;
  /** Reads no more until `resume` (the peer's writes wait on HTTP/2 flow control). */
  pause(): void;
  resume(): void;
  /** Ends the call with `e` (a server: as its gRPC status; a client: cancels it). */
  fail(e: ArrowShmError): void;
}

/** FlightData leaving on one call. */
export interface FlightDataSink {
  readonly peer: string;
  /** Resolves once the call has room for more (HTTP/2 flow control); rejects once the call is gone. */
  write(m: OutgoingFlightData): Promise<void>;
  /** Ends the call well; resolves once the peer has taken it (a client's DoPut: the server's OK status). */
  end(): Promise<void>;
  /** Ends the call with `e` (a server: as its status; a client: cancels it). */
  fail(e: ArrowShmError): void;
  /** Runs once when the call is gone before `end` (peer left, cancelled, failed). */
  onGone(listener: (e: ArrowShmError) => void): void;
}

type Writable = { write(m: OutgoingFlightData): boolean; once(event: 'drain', listener: () => void): unknown };

/** The write half shared by both sides: one message, then wait for 'drain' or the call's end. */
class Writer {
  gone: ArrowShmError | null = null;
  #listeners: ((e: ArrowShmError) => void)[] = [];
  #waiting = new Set<() => void>();

  constructor(private readonly call: Writable) {}

  async write(m: OutgoingFlightData): Promise<void> {
    if (this.gone) throw this.gone;
    if (this.call.write(m)) return;
    await new Promise<void>((resolve) => {
      const wake = () => {
        this.#waiting.delete(wake);
        resolve();
      };
      this.#waiting.add(wake);
      this.call.once('drain', wake);
    });
    if (this.gone) throw this.gone;
  }

  leave(e: ArrowShmError): void {
    if (this.gone) return;
    this.gone = e;
    for (const wake of [...this.#waiting]) wake();
    for (const listener of this.#listeners.splice(0)) listener(e);
  }

  onGone(listener: (e: ArrowShmError) => void): void {
    if (this.gone) listener(this.gone);
    else this.#listeners.push(listener);
  }
}

/** A server's DoGet call as a sink (a subscriber of a publication). */
export function serverSink(call: grpc.ServerWritableStream<unknown, OutgoingFlightData>): FlightDataSink {
  const writer = new Writer(call);
  const peer = call.getPeer();
  let ended = false;
  const left = () => {
    if (!ended) writer.leave(fail('ERR_PEER_CLOSED', `the subscriber ${peer} went away`));
  };
  call.on('cancelled', left);
  call.on('error', left);
  call.on('close', left);
  return {
    peer,
    write: (m) => writer.write(m),
    end: async () => {
      if (writer.gone) throw writer.gone;
      ended = true;
      call.end();
    },
    fail: (e) => {
      if (ended || writer.gone) return;
      writer.leave(e);
      call.emit('error', toStatus(e));
    },
    onGone: (listener) => writer.onGone(listener),
  };
}

/**
 * The state every source shares: events before `start` are kept (a call may end while it waits
 * for accept()), `fail` ends the call and reports the error like any other end.
 */
class SourceState {
  #handlers: SourceHandlers | null = null;
  #outcome: ArrowShmError | null | undefined = undefined; // undefined: running, null: ended well
  #data: FlightData[] = [];

  constructor(private readonly endCall: (e: ArrowShmError) => void) {}

  start(handlers: SourceHandlers): void {
    this.#handlers = handlers;
    for (const m of this.#data.splice(0)) handlers.data(m);
    if (this.#outcome !== undefined) this.#report();
  }

  data(m: FlightData): void {
    if (this.#outcome !== undefined) return;
    if (this.#handlers) this.#handlers.data(m);
    else this.#data.push(m); // at most one: the call is paused until started (see the sources)
  }

  /** The call ended (null: well). */
  end(e: ArrowShmError | null): void {
    if (this.#outcome !== undefined) return;
    this.#outcome = e;
    this.#report();
  }

  fail(e: ArrowShmError): void {
    if (this.#outcome !== undefined) return;
    this.end(e); // first: ending the call makes gRPC report its own events
    this.endCall(e);
  }

  #report(): void {
    const handlers = this.#handlers;
    if (!handlers) return;
    this.#handlers = null;
    if (this.#outcome) handlers.error(this.#outcome);
    else handlers.end();
  }
}

/** A server's DoPut call as a source (a stream a client writes). */
export function serverSource(call: grpc.ServerDuplexStream<FlightData, { app_metadata: Buffer }>): FlightDataSource {
  const peer = call.getPeer();
  const state = new SourceState((e) => call.emit('error', toStatus(e)));
  let ended = false;
  call.pause(); // nothing is read before start()
  call.on('data', (m: FlightData) => state.data(m));
  call.on('end', () => {
    ended = true;
    call.end(); // no PutResult: the OK status says the server has it all
    state.end(null);
  });
  call.on('error', () => state.end(fail('ERR_PEER_CLOSED', `the client ${peer} went away`)));
  call.on('cancelled', () => {
    if (!ended) state.end(fail('ERR_PEER_CLOSED', `the client ${peer} went away mid-stream`));
  });
  let paused = true;
  return {
    peer,
    start: (handlers) => {
      state.start(handlers);
      paused = false;
      call.resume();
    },
    pause: () => {
      paused = true;
      call.pause();
    },
    resume: () => {
      if (paused) call.resume();
      paused = false;
    },
    fail: (e) => state.fail(e),
  };
}

/**
 * A client's DoPut call over node:http2 (flight-http2: each FlightData written as its parts, no
 * copy) as a sink. `start` opens the call with the handlers it is given; PutResults are dropped as
 * they come (each bounded by the call's per-message limit), so a server acknowledging every batch
 * of a long stream costs nothing kept.
 */
export function clientSink(start: (handlers: CallHandlers) => Http2Call, peer: string): FlightDataSink {
  let status: GrpcStatus | null = null;
  const statusKnown: (() => void)[] = [];
  let writer!: Writer;
  const call = start({
    message: () => {},
    end: (s) => {
      status = s;
      if (s.code !== grpc.status.OK) writer.leave(fromGrpc(s, `the stream to ${peer}`));
      for (const wake of statusKnown.splice(0)) wake();
    },
  });
  writer = new Writer({ write: (m) => call.write(flightDataParts(m)), once: (event, listener) => call.once(event, listener) });
  return {
    peer,
    write: (m) => writer.write(m),
    end: async () => {
      if (writer.gone) throw writer.gone;
      call.end();
      if (!status) await new Promise<void>((resolve) => statusKnown.push(resolve));
      if (writer.gone) throw writer.gone;
    },
    fail: (e) => {
      if (writer.gone || status) return;
      writer.leave(e);
      call.cancel();
    },
    onGone: (listener) => writer.onGone(listener),
  };
}

/** A client's DoGet call as a source (a publication read from a server). */
export function clientSource(call: grpc.ClientReadableStream<FlightData>, peer: string): FlightDataSource {
  const state = new SourceState(() => call.cancel());
  call.pause(); // nothing is read before start()
  call.on('data', (m: FlightData) => state.data(m));
  call.on('error', () => {}); // reported through 'status'
  call.on('status', (s: grpc.StatusObject) => state.end(s.code === grpc.status.OK ? null : fromGrpc(s, `the stream from ${peer}`)));
  return {
    peer,
    start: (handlers) => {
      state.start(handlers);
      call.resume();
    },
    pause: () => void call.pause(),
    resume: () => void call.resume(),
    fail: (e) => state.fail(e),
  };
}

/** A live stream a FlightServer offers for DoGet (`offerStream`): a publication. */
export interface OfferedStream {
  /** Its encapsulated Schema message (FlightInfo.schema). */
  readonly schema: Uint8Array;
  /** User metadata (FlightInfo.app_metadata, and the schema FlightData's). */
  readonly metadata: Record<string, string>;
  /** A DoGet for it: from now on the stream writes to `sink`. */
  subscribe(sink: FlightDataSink): void;
}
