// The seed proof of concept's protocol (docs/PROTOCOL.md §10), for interoperating with it:
// SOCK_STREAM, the sender listens and sends one byte 'F' with an unsealed memfd; no handshake.
import { readSync } from 'node:fs';
import { fail } from '../errors.js';
import { native } from '../native.js';
import { checkIpcStream, validateIpcStream } from '../ipc/messages.js';
import { layoutIpcStream, writeIpcLayout, type TableLike } from '../ipc/writer.js';
import { Segment, type Mapping } from '../shm/segment.js';
import { ReceivedTable } from './received.js';
import { closeListeningSocket, connectSocket, listenSocket, waitForFd, type ListeningSocket } from './socket.js';

export const SEED_SOCKET_PATH = '/tmp/memfd_socket';
export const SEED_SEGMENT_SIZE = 4096 * 10;

export interface SeedSendOptions {
  timeoutMs?: number;
  /** Called once the socket listens (the CLI prints its "listening" line here). */
  onListening?: () => void;
}

/** Listens at `address`, accepts one connection and hands it the stream in an unsealed memfd. */
export async function seedSend(address: string, data: TableLike | Uint8Array, options: SeedSendOptions = {}): Promise<void> {
  const layout = data instanceof Uint8Array ? null : layoutIpcStream(data);
  if (data instanceof Uint8Array) validateIpcStream(data);
  const size = layout ? layout.byteLength : (data as Uint8Array).byteLength;
  const segment = Segment.adopt(native.memfdCreate('arrow_zero_copy', Math.max(SEED_SEGMENT_SIZE, size), false));
  let listener: ListeningSocket | null = null;
  try {
    const target = segment.writableBytes();
    if (layout) writeIpcLayout(layout, target);
    else target.set(data as Uint8Array);
    listener = listenSocket(address, false, 1);
    options.onListening?.();
    let conn = native.accept(listener.fd);
    while (conn < 0) {
      await waitForFd(listener.fd, false, options.timeoutMs, 'no seed receiver connected');
      conn = native.accept(listener.fd);
    }
    try {
      while (native.sendmsg(conn, Uint8Array.of(0x46 /* 'F' */), [segment.fd]) < 0) {
        await waitForFd(conn, true, options.timeoutMs, 'the seed receiver did not take the segment');
      }
    } finally {
      native.close(conn);
    }
  } finally {
    if (listener) closeListeningSocket(listener, address);
    segment.close();
  }
}

/** Connects to a seed-style sender and maps what it sends (unsealed: trusted by the user's choice). */
export async function seedReceive(address: string, options: { timeoutMs?: number } = {}): Promise<ReceivedTable> {
  const fd = await connectSocket(address, false, options.timeoutMs);
  let received;
  try {
    const buffer = new Uint8Array(1);
    for (;;) {
      received = native.recvmsg(fd, buffer);
      if (received) break;
      await waitForFd(fd, false, options.timeoutMs, 'nothing arrived from the seed sender');
    }
  } finally {
    native.close(fd);
  }
  if (received.bytes === 0 && received.fds.length === 0) throw fail('ERR_PEER_CLOSED', 'the seed sender closed without sending a segment');
  if (received.fds.length !== 1) {
    for (const f of received.fds) native.close(f);
    throw fail('ERR_PROTOCOL', `expected one fd from the seed sender, got ${received.fds.length}`);
  }
  const mapping = copyIntoOwnSegment(Segment.adopt(received.fds[0]!));
  try {
    const checked = checkIpcStream(mapping.bytes());
    return new ReceivedTable(null, 1n, 0, Object.create(null), mapping, 0, checked.summary.streamLength, checked);
  } catch (e) {
    mapping.release();
    throw e;
  }
}

/**
 * The seed's segments are unsealed: mapped, a truncation by the sender would SIGBUS this process.
 * So the bytes are read (pread, which only comes up short) into a sealed segment of our own.
 */
function copyIntoOwnSegment(theirs: Segment): Mapping {
  let own: Segment | null = null;
  try {
    const size = theirs.size;
    if (size === 0) throw fail('ERR_SEGMENT_BOUNDS', 'the seed sender sent an empty segment');
    own = Segment.create(size);
    const target = own.writableBytes();
    for (let done = 0; done < size; ) {
      const got = readSync(theirs.fd, target, done, size - done, done);
      if (got === 0) throw fail('ERR_SEGMENT_BOUNDS', `the seed sender's segment shrank to ${done} of ${size} bytes while it was read`);
      done += got;
    }
    own.seal('sealed');
    const mapping = own.takeReadOnlyMapping();
    own.close();
    return mapping;
  } catch (e) {
    own?.close();
    throw e;
  } finally {
    theirs.close();
  }
}
