/**
 * The few libc calls the live link makes itself, through koffi: `writev` on a socket's descriptor
 * (page records straight from guest memory, fd-writer.ts), `poll` to wait for room, and a typed
 * array's address. Loaded once per thread, lazily; null where
 * it cannot load (not Linux, koffi missing), and the callers then use Node's own reads and writes.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import type * as Koffi from 'koffi';

export const EAGAIN = 11;
export const EINTR = 4;
export const POLLOUT = 4;

export interface Libc {
  writev(fd: number, iov: Uint8Array, count: number): number | bigint;
  poll(fds: Int32Array, count: number, timeoutMs: number): number;
  addressOf(bytes: Uint8Array): number;
  errno(): number;
}

let libc: Libc | null | undefined;

/** libc through koffi, once per thread; null where it cannot load (not Linux, koffi missing). */
export function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  if (process.platform !== 'linux') return libc;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof Koffi;
    const lib = koffi.load('libc.so.6');
    const writev = lib.func('long writev(int fd, void *iov, int iovcnt)') as Libc['writev'];
    const poll = lib.func('int poll(void *fds, unsigned long nfds, int timeout)') as Libc['poll'];
    // memmove(p, p, 0) returns p: koffi passes a typed array's memory itself, so this is its address.
    const memmove = lib.func('uintptr_t memmove(void *dst, void *src, size_t n)') as (
      d: Uint8Array,
      s: Uint8Array,
      n: number,
    ) => number | bigint;
    libc = {
      writev,
      poll,
      addressOf: (bytes) => Number(memmove(bytes, bytes, 0)),
      errno: () => koffi.errno(),
    };
  } catch {
    libc = null;
  }
  return libc;
}

/** `ECONNRESET` for 104, as Node names a failed write's cause ('write ECONNRESET'). */
export function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}
