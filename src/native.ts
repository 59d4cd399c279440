// The only module that loads the compiled addon. Everything else imports from here.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ArrowShmError } from './errors.js';

export interface FileStat {
  size: number;
  mode: number;
  ino: number;
  dev: number;
}

export interface Credentials {
  pid: number;
  uid: number;
  gid: number;
}

export interface Received {
  /** 0 means the peer closed the connection. */
  bytes: number;
  fds: number[];
  truncated: boolean;
  controlTruncated: boolean;
}

export interface PollerHandle {
  readonly __poller: unique symbol;
}

export interface NativeBinding {
  memfdCreate(name: string, size: number, allowSealing?: boolean): number;
  ftruncate(fd: number, size: number): void;
  fstat(fd: number): FileStat;
  getSeals(fd: number): number;
  addSeals(fd: number, seals: number): void;
  close(fd: number): void;
  pwrite(fd: number, bytes: Uint8Array, offset: number): void;
  mmap(fd: number, length: number, writable: boolean, offset?: number): ArrayBuffer;
  unmap(buffer: ArrayBuffer): boolean;
  reportMapping(buffer: ArrayBuffer): void;
  populate(buffer: ArrayBuffer): void;
  /** populate() on the libuv threadpool; keep the mapping until the promise settles. */
  populateAsync(buffer: ArrayBuffer): Promise<void>;
  socket(seqpacket: boolean): number;
  bind(fd: number, address: string): void;
  listen(fd: number, backlog: number): void;
  accept(fd: number): number;
  connect(fd: number, address: string): number;
  socketError(fd: number): number;
  peerCredentials(fd: number): Credentials;
  shutdown(fd: number): void;
  sendmsg(fd: number, bytes: Uint8Array, fds: number[]): number;
  recvmsg(fd: number, buffer: Uint8Array): Received | null;
  eventfd(): number;
  eventfdWrite(fd: number): void;
  eventfdRead(fd: number): number;
  /**
   * Blocks this thread (a blocking ppoll) until the eventfd is readable, then resets its counter: 1;
   * until `hangupFd` (a socket; -1 for none) is hung up by its peer: 2; or `timeoutMicros` (-1: no
   * limit) passed or a signal interrupted the wait: 0.
   */
  eventfdWait(fd: number, timeoutMicros: number, hangupFd: number): 0 | 1 | 2;
  pollerCreate(fd: number, callback: (status: number, events: number) => void): PollerHandle;
  pollerStart(handle: PollerHandle, readable: boolean, writable: boolean): void;
  pollerRef(handle: PollerHandle, keepsLoopAlive: boolean): void;
  pollerClose(handle: PollerHandle): void;
  setErrorClass(ctor: unknown): void;
  constants: {
    F_SEAL_SEAL: number;
    F_SEAL_SHRINK: number;
    F_SEAL_GROW: number;
    F_SEAL_WRITE: number;
    F_SEAL_FUTURE_WRITE: number;
    S_IFMT: number;
    S_IFREG: number;
    UV_READABLE: number;
    UV_WRITABLE: number;
    UV_DISCONNECT: number;
    PAGE_SIZE: number;
  };
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(import.meta.url);

/** build/Release (a source build) if present, else the prebuild for this platform (node-gyp-build). */
function addonPath(): string {
  if (process.env.ARROW_SHM_NATIVE) return process.env.ARROW_SHM_NATIVE; // override: scripts/sanitize.sh
  try {
    return (require('node-gyp-build') as { path(dir: string): string }).path(root);
  } catch (cause) {
    throw new ArrowShmError('ERR_SYSCALL', `arrow-shm has no native addon for ${process.platform}-${process.arch}: build it with \`npm rebuild arrow-shm\` (needs cc, make and python3; recent npm runs it only after \`npm install-scripts approve arrow-shm\`)`, undefined, 'dlopen', { cause });
  }
}

function load(): NativeBinding {
  const file = addonPath();
  try {
    return require(file) as NativeBinding;
  } catch (cause) {
    throw new ArrowShmError('ERR_SYSCALL', `cannot load the arrow-shm native addon at ${file}: rebuild it with \`npm rebuild arrow-shm --build-from-source\``, undefined, 'dlopen', { cause });
  }
}

export const native: NativeBinding = load();

// The addon raises ArrowShmError directly; its constructor takes (code, message, errno, syscall).
native.setErrorClass(function NativeError(code: string, message: string, errno?: number, syscall?: string) {
  return new ArrowShmError(code as ArrowShmError['code'], message, errno, syscall);
});

export const { constants } = native;
