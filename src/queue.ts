// The hand-off between whoever produces items (frames off a socket, accepted connections, calls)
// and whoever awaits them: an item goes to the oldest waiter, or waits in line for the next one.
import { ArrowShmError, fail } from './errors.js';

interface Waiter<T> {
  resolve: (item: T | null) => void;
  reject: (e: unknown) => void;
}

export class AsyncQueue<T> {
  #items: T[] = [];
  #waiters: Waiter<T>[] = [];
  #closed = false;

  /** Items waiting to be taken. */
  get size(): number {
    return this.#items.length;
  }

  /** Someone awaits an item right now. */
  get awaited(): boolean {
    return this.#waiters.length > 0;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Hands `item` to the oldest waiter; true if one took it, false if it waits in line. */
  push(item: T): boolean {
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter.resolve(item);
      return true;
    }
    this.#items.push(item);
    return false;
  }

  /** The next item without waiting, if there is one. */
  shift(): T | undefined {
    return this.#items.shift();
  }

  /**
   * The next item: at once if one waits, otherwise when one is pushed. Null once the queue is
   * closed and empty. ERR_TIMEOUT (`what`) after `timeoutMs`; a waiter that timed out takes nothing.
   */
  take(timeoutMs?: number, what = 'nothing arrived'): Promise<T | null> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve(item);
    if (this.#closed) return Promise.resolve(null);
    return new Promise<T | null>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter: Waiter<T> = {
        resolve: (i) => (clearTimeout(timer), resolve(i)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
      this.#waiters.push(waiter);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          const at = this.#waiters.indexOf(waiter);
          if (at >= 0) this.#waiters.splice(at, 1);
          reject(fail('ERR_TIMEOUT', `${what} within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }

  /** Takes `item` out of the line; false if it was not there. */
  remove(item: T): boolean {
    const at = this.#items.indexOf(item);
    if (at < 0) return false;
    this.#items.splice(at, 1);
    return true;
  }

  /** Fails everyone waiting right now with `error` (items in line stay). */
  rejectWaiters(error: unknown): void {
    for (const w of this.#waiters.splice(0)) w.reject(error);
  }

  /** No more items will come: waiters get null, and so will take() once the line is empty. */
  close(): void {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w.resolve(null);
  }

  /** Takes every item in line out of the queue (to close them). */
  drain(): T[] {
    return this.#items.splice(0);
  }
}

/** Yields `next()` until it fails with ERR_CLOSED or `open()` turns false: a listener's `for await`. */
export async function* untilClosed<T>(next: () => Promise<T>, open: () => boolean): AsyncGenerator<T, void, undefined> {
  while (open()) {
    try {
      yield await next();
    } catch (e) {
      if (e instanceof ArrowShmError && e.code === 'ERR_CLOSED') return;
      throw e;
    }
  }
}
