/**
 * The few libc calls the live link makes itself, through koffi: `writev` on a socket's descriptor
 * (page records straight from guest memory, fd-writer.ts), `poll` to wait for room, a typed
 * array's address, and for zero-copy-send a pipe per connection that guest pages are `vmsplice`d
 * into by reference and `splice`d from into the socket. Loaded once per thread, lazily; null where
 * it cannot load (not Linux, koffi missing), and the callers then use Node's own reads and writes.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import type * as Koffi from 'koffi';

export const EAGAIN = 11;
export const EINTR = 4;
export const POLLOUT = 4;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const F_SETPIPE_SZ = 1031;
export const SPLICE_F_MOVE = 1;
export const SPLICE_F_NONBLOCK = 2;
export const SPLICE_F_MORE = 4;
export const SOL_SOCKET = 1;
export const SO_RCVLOWAT = 18;

export interface Libc {
  writev(fd: number, iov: Uint8Array, count: number): number | bigint;
  poll(fds: Int32Array, count: number, timeoutMs: number): number;
  addressOf(bytes: Uint8Array): number;
  errno(): number;
  /** `pipe2(fds, flags)`: fds[0] the read end, fds[1] the write end. */
  pipe2(fds: Int32Array, flags: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  close(fd: number): number;
  vmsplice(fd: number, iov: Uint8Array, count: number, flags: number): number | bigint;
  /** `splice(from, NULL, to, NULL, length, flags)` (no offsets: a pipe and a socket). */
  splice(from: number, to: number, length: number, flags: number): number | bigint;
  /** `setsockopt(fd, level, name, &value, 4)` for an int option: 0, or -1 (see `errno()`). */
  setsockoptInt(fd: number, level: number, name: number, value: number): number;
}

let libc: Libc | null | undefined;
let koffiLibc: { koffi: typeof Koffi; lib: Koffi.LibraryHandle } | null | undefined;

/** koffi and libc loaded through it, once per thread; null where they cannot load (not Linux, koffi missing). */
export function loadKoffiLibc(): { koffi: typeof Koffi; lib: Koffi.LibraryHandle } | null {
  if (koffiLibc !== undefined) return koffiLibc;
  koffiLibc = null;
  if (process.platform !== 'linux') return koffiLibc;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof Koffi;
    koffiLibc = { koffi, lib: koffi.load('libc.so.6') };
  } catch {
    koffiLibc = null;
  }
  return koffiLibc;
}

/** Whether this thread has loaded libc through koffi already ({@link loadLibc}). */
export function libcLoaded(): boolean {
  return libc != null;
}

/**
 * libc through koffi, once per thread; null where it cannot load (not Linux, koffi missing).
 *
 * A thread terminated while koffi's native module initializes aborts the whole process (Node's
 * `FATAL ERROR: Error::ThrowAsJavaScriptException napi_throw`; reproduced here about once in
 * 3,000–7,000 workers terminated 0–40 ms into loading it). A component whose thread may be killed
 * at any moment (a destination, in the fault tests) loads it when it starts.
 */
export function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  const loaded = loadKoffiLibc();
  if (loaded === null) return libc;
  try {
    const { koffi, lib } = loaded;
    const writev = lib.func('long writev(int fd, void *iov, int iovcnt)') as Libc['writev'];
    const poll = lib.func('int poll(void *fds, unsigned long nfds, int timeout)') as Libc['poll'];
    // memmove(p, p, 0) returns p: koffi passes a typed array's memory itself, so this is its address.
    const memmove = lib.func('uintptr_t memmove(void *dst, void *src, size_t n)') as (
      d: Uint8Array,
      s: Uint8Array,
      n: number,
    ) => number | bigint;
    const splice = lib.func(
      'long splice(int from, void *fromOffset, int to, void *toOffset, unsigned long length, unsigned int flags)',
    ) as (from: number, fo: null, to: number, tof: null, length: number, flags: number) => number | bigint;
    const setsockopt = lib.func(
      'int setsockopt(int fd, int level, int name, void *value, uint32_t length)',
    ) as (fd: number, level: number, name: number, value: Int32Array, length: number) => number;
    const option = new Int32Array(1);
    libc = {
      writev,
      poll,
      addressOf: (bytes) => Number(memmove(bytes, bytes, 0)),
      errno: () => koffi.errno(),
      pipe2: lib.func('int pipe2(int *fds, int flags)') as Libc['pipe2'],
      fcntl: lib.func('int fcntl(int fd, int cmd, int arg)') as Libc['fcntl'],
      close: lib.func('int close(int fd)') as Libc['close'],
      vmsplice: lib.func(
        'long vmsplice(int fd, void *iov, unsigned long count, unsigned int flags)',
      ) as Libc['vmsplice'],
      splice: (from, to, length, flags) => splice(from, null, to, null, length, flags),
      setsockoptInt: (fd, level, name, value) => {
        option[0] = value;
        return setsockopt(fd, level, name, option, 4);
      },
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
