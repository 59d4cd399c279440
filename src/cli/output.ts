// Where recv and sub write what they receive (--out). The path is checked before anything is
// accepted (an acknowledged table can no longer be refused), and every file is written beside its
// target under a temporary name and renamed into place only once complete: a failed or torn copy
// (a seed-compat sender truncating its unsealed memfd) leaves nothing behind.
import { accessSync, closeSync, constants, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { ArrowShmError } from '../errors.js';
import { UsageError } from './files.js';

/** One file being written: `commit` renames it into place, `abort` removes it. */
export interface OutputFile {
  write(bytes: Uint8Array): void;
  commit(): void;
  abort(): void;
}

export class Output {
  private constructor(
    private readonly target: string,
    private readonly isDirectory: boolean,
  ) {}

  /**
   * `--out` for `count` tables: a FILE whose directory exists, or (an existing directory, or any
   * count > 1) a DIR, created if needed. Throws a UsageError when it cannot be written.
   */
  static prepare(out: string | undefined, count: number): Output | null {
    if (!out) return null;
    const isDirectory = count > 1 || statOrNull(out)?.isDirectory() === true;
    const dir = isDirectory ? out : path.dirname(out);
    if (isDirectory) {
      try {
        mkdirSync(out, { recursive: true });
      } catch (e) {
        throw new UsageError(`cannot create the --out directory ${out}: ${errnoName(e)}`);
      }
    } else if (statOrNull(dir)?.isDirectory() !== true) {
      throw new UsageError(`cannot write --out ${out}: no directory ${dir}`);
    }
    try {
      accessSync(dir, constants.W_OK | constants.X_OK);
    } catch (e) {
      throw new UsageError(`cannot write --out ${out}: ${dir} is not writable (${errnoName(e)})`);
    }
    return new Output(out, isDirectory);
  }

  /** FILE, or DIR/000000.arrows, DIR/000001.arrows, ... */
  path(index: number): string {
    return this.isDirectory ? path.join(this.target, `${String(index).padStart(6, '0')}.arrows`) : this.target;
  }

  open(index: number): OutputFile {
    const target = this.path(index);
    const temp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.partial`);
    let fd: number | null = null;
    const discard = (): void => {
      if (fd !== null) closeSync(fd);
      fd = null;
      rmSync(temp, { force: true });
    };
    try {
      fd = openSync(temp, 'w', 0o644);
    } catch (e) {
      throw writeError(target, e);
    }
    return {
      write(bytes: Uint8Array): void {
        if (fd === null) throw writeError(target, new Error('already closed'));
        try {
          // writeSync may write less than asked; a fault in the source (a truncated mapping) throws EFAULT.
          for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
        } catch (e) {
          discard();
          throw writeError(target, e);
        }
      },
      commit(): void {
        if (fd === null) return;
        try {
          closeSync(fd);
          fd = null;
          renameSync(temp, target);
        } catch (e) {
          discard();
          throw writeError(target, e);
        }
      },
      abort(): void {
        if (fd !== null) discard();
      },
    };
  }

  /** Writes one table's bytes; the file appears complete or not at all. */
  write(index: number, bytes: Uint8Array): void {
    const file = this.open(index);
    try {
      file.write(bytes);
      file.commit();
    } finally {
      file.abort();
    }
  }
}

function statOrNull(p: string): ReturnType<typeof statSync> | null {
  try {
    return statSync(p);
  } catch {
    return null;
  }
}

function errnoName(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

function writeError(target: string, e: unknown): ArrowShmError {
  const err = e as NodeJS.ErrnoException;
  return new ArrowShmError('ERR_SYSCALL', `cannot write ${target}: ${err.code ?? err.message}`, err.errno === undefined ? undefined : Math.abs(err.errno), err.syscall);
}
