// recv's listening side: every connection is served at the same time and tables are counted across
// them, so an idle connection holds up nobody; a connection that breaks the protocol is dropped on
// its own (one line on stderr) and the listener keeps serving (SECURITY.md).
import { ArrowShmError, fail } from '../errors.js';
import type { Channel } from '../transport/channel.js';
import type { Listener } from '../transport/listener.js';
import type { ReceivedTable } from '../transport/received.js';

/** One line on stderr for a connection the listener gave up on (not one whose peer hung up). */
export function reportDropped(error: unknown, pid?: number): void {
  if (error instanceof ArrowShmError && error.code === 'ERR_PEER_CLOSED') return;
  const why = error instanceof ArrowShmError ? `${error.code}: ${error.message}` : String(error);
  process.stderr.write(`arrow-shm: dropped a connection${pid ? ` (pid ${pid})` : ''}: ${why}\n`);
}

/**
 * Takes `count` tables from the connections of `listener`, handing each to `onTable` with its index
 * in order of arrival. Rejects with `onTable`'s error, or ERR_TIMEOUT when no table arrived for
 * `timeoutMs`. Closes every connection it accepted before it settles.
 */
export function serveTables(listener: Listener, count: number, timeoutMs: number | undefined, onTable: (message: ReceivedTable, index: number) => void): Promise<void> {
  const channels = new Set<Channel>();
  let received = 0;
  let finished = false;
  let timer: NodeJS.Timeout | undefined;
  return new Promise<void>((resolve, reject) => {
    const finish = (error?: unknown): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      for (const channel of channels) channel.close();
      if (error === undefined) resolve();
      else reject(error);
    };
    const armTimer = (): void => {
      if (timeoutMs === undefined) return;
      clearTimeout(timer);
      timer = setTimeout(() => finish(fail('ERR_TIMEOUT', `no table arrived within ${timeoutMs} ms (${received} of ${count} received)`)), timeoutMs);
    };
    const serve = async (channel: Channel): Promise<void> => {
      channels.add(channel);
      try {
        while (!finished) {
          const message = await channel.receive();
          if (finished) return message.close();
          try {
            onTable(message, received++);
          } catch (e) {
            return finish(e);
          }
          if (received === count) return finish();
          armTimer();
        }
      } catch (e) {
        if (!finished) reportDropped(e, channel.peer.pid); // silent for a sender that hung up: it is done
      } finally {
        channels.delete(channel);
        channel.close();
      }
    };
    const acceptAll = async (): Promise<void> => {
      while (!finished) {
        let channel: Channel;
        try {
          channel = await listener.accept();
        } catch (e) {
          return finish(e); // the listener closed under us
        }
        if (finished) channel.close();
        else void serve(channel);
      }
    };
    armTimer();
    void acceptAll();
  });
}
