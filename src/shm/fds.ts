// Closing file descriptors that came from a peer or a failed step, whatever state they are in.
import { native } from '../native.js';

/** Closes every fd of `fds`, ignoring ones already closed (negative entries are skipped). */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    if (fd < 0) continue;
    try {
      native.close(fd);
    } catch {
      // already closed
    }
  }
}
