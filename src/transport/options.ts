// A channel's options, their defaults and limits (docs/PROTOCOL.md §14), checked in one place.
import { fail } from '../errors.js';
import { resolveIpcLimits, type IpcLimits } from '../ipc/limits.js';
import { MAX_NODE_MESSAGE_BYTES } from '../shm/segment.js';
import type { KeyValues } from './frame.js';

export { MAX_NODE_MESSAGE_BYTES };

export interface ChannelOptions {
  /** Peer uids allowed to connect (SO_PEERCRED). Default: this process's effective uid. */
  allowedUids?: number[];
  /** Largest IPC stream accepted, in bytes. Default and maximum 4 GiB (V8's limit for one ArrayBuffer). */
  maxMessageBytes?: number;
  /** Accept segments without seals (unsafe: a hostile sender can truncate them). Default false. */
  allowUnsealed?: boolean;
  /** Accept leased (reusable, not write-sealed) segments, docs/PROTOCOL.md §6.2. Default false. */
  acceptLeased?: boolean;
  /** How long a handshake may take. Default 5000 ms. */
  handshakeTimeoutMs?: number;
  /**
   * Send tables in leased, reusable, pre-faulted segments when the peer accepts them (§6.2):
   * a memcpy into warm pages instead of fresh pages, at the price of the write seal. Default false.
   */
  lease?: boolean;
  /** Pre-allocated spare segments kept per size class for sealed sends (0 disables). Default 1. */
  spareSegments?: number;
  /**
   * Tables whose IPC stream is at most this many bytes travel inside the frame when the peer
   * accepts inline tables (docs/PROTOCOL.md §5.3): one copy through the socket instead of a
   * segment, which costs more system calls than a small table is worth. At most what a frame
   * holds (about 64 KiB); 0 sends every table in a segment. Default 65536.
   */
  maxInlineBytes?: number;
  /** What one received IPC message may decode to (docs/PROTOCOL.md §14.1). */
  ipcLimits?: Partial<IpcLimits>;
  /**
   * Received messages not yet taken by receive() (requests included). Past it this side stops
   * reading the socket, so the kernel pushes back on the sender (§14.2). Default 64.
   */
  maxInboxMessages?: number;
  /** The same in mapped bytes. Default 1 GiB. */
  maxInboxBytes?: number;
  /** Stream offers (STREAM_OPEN) not yet accepted; more are refused with ERR_RESOURCE_LIMIT. Default 16. */
  maxStreamOffers?: number;
  /** Leased segments sent and not yet released by the peer; past it sends use sealed segments. Default 64. */
  maxLeases?: number;
  /** The same in bytes. Default 1 GiB. */
  maxLeasedBytes?: number;
}

export interface PeerInfo {
  pid: number;
  uid: number;
  gid: number;
  version: number;
  implementation: string;
  capabilities: string[];
}

export interface SendOptions {
  /** User metadata carried in the frame (string keys and values). */
  metadata?: KeyValues;
  /** Fail with ERR_TIMEOUT if the peer has not acknowledged within this many ms. */
  timeoutMs?: number;
}

export function normalizeOptions(o: ChannelOptions): Required<ChannelOptions> {
  const maxMessageBytes = o.maxMessageBytes ?? MAX_NODE_MESSAGE_BYTES;
  if (!Number.isSafeInteger(maxMessageBytes) || maxMessageBytes <= 0 || maxMessageBytes > MAX_NODE_MESSAGE_BYTES) throw fail('ERR_INVALID_ARGUMENT', `maxMessageBytes must be a positive integer up to 4 GiB, got ${maxMessageBytes}`);
  return {
    allowedUids: o.allowedUids ?? [process.geteuid?.() ?? 0],
    maxMessageBytes,
    allowUnsealed: o.allowUnsealed ?? false,
    acceptLeased: o.acceptLeased ?? false,
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 5000,
    lease: o.lease ?? false,
    spareSegments: o.spareSegments ?? 1,
    maxInlineBytes: nonNegative('maxInlineBytes', o.maxInlineBytes, 65536),
    ipcLimits: resolveIpcLimits(o.ipcLimits),
    maxInboxMessages: positive('maxInboxMessages', o.maxInboxMessages, 64),
    maxInboxBytes: positive('maxInboxBytes', o.maxInboxBytes, 1024 ** 3),
    maxStreamOffers: positive('maxStreamOffers', o.maxStreamOffers, 16),
    maxLeases: positive('maxLeases', o.maxLeases, 64),
    maxLeasedBytes: positive('maxLeasedBytes', o.maxLeasedBytes, 1024 ** 3),
  };
}

function nonNegative(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 0) throw fail('ERR_INVALID_ARGUMENT', `${name} must be a non-negative integer, got ${value}`);
  return value;
}

/** A limit option: a positive integer, or its default when not given. */
export function positive(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) throw fail('ERR_INVALID_ARGUMENT', `${name} must be a positive integer, got ${value}`);
  return value;
}
