/**
 * `writev` on a socket's own descriptor, through koffi: page records written straight from guest
 * memory, each record's header and its page as two iovecs, as QEMU's `qemu_put_buffer_async` hands
 * them to `qio_channel_writev`. Node's stream layer would cost two chunk objects and a write
 * request per page; here a slice of 512 records is one {@link Gather} list — a header's 8 bytes
 * and two 16-byte iovecs per page, no object — written with `writev` 1024 iovecs (Linux's
 * `IOV_MAX`) at a time.
 *
 * For the sender thread's batches: page records on the main connection and postcopy's preempt
 * channel, multifd packets (a header, then runs of consecutive pages) on theirs. Node still owns
 * each socket (its reads carry the return path, its 'close' and 'error' events the faults); the
 * writer waits until Node has nothing queued before it writes, and writes its lists one after
 * the other, each whole, before their promises resolve — so the stream's bytes are exactly those
 * the staged path sends.
 *
 * **Zero-copy-send** (`splice: true`, QEMU's `zero-copy-send` capability for multifd channels):
 * QEMU hands the pages to `sendmsg` with `MSG_ZEROCOPY`, so the kernel sends them from guest
 * memory without copying them. Here each connection gets a pipe: runs of guest pages are
 * `vmsplice`d into it by reference, the bytes between them (headers, commands) are written into
 * it (copied: the arena may be reused at once), and the pipe is `splice`d into the socket, whose
 * buffers then hold references to the guest's pages — on loopback the only copy is the
 * receiver's. A page the guest writes after it was queued goes out with the newer bytes; it is
 * dirty again and is sent again, and the destination applies what arrives in order (multifd
 * syncs keep the rounds apart), so it ends with the last version as before. Measured side by side
 * here (a Node sender thread, 512 KiB packets into a reader thread in place): 23.8–26.1 Gbit/s
 * against 16.8–20.8 with `writev`. Page records (8-byte headers between 4 KiB pages) went slower
 * this way (8.6 against 12.8), hence multifd only.
 */
import {
  EAGAIN,
  EINTR,
  errnoName,
  F_SETPIPE_SZ,
  loadLibc,
  O_CLOEXEC,
  O_NONBLOCK,
  POLLOUT,
  SPLICE_F_MORE,
  SPLICE_F_MOVE,
  SPLICE_F_NONBLOCK,
  type Libc,
} from './libc.js';
import { RAM_HEADER_BYTES, writeRamHeader } from './wire.js';

/** Linux's `IOV_MAX`: iovecs per `writev`. */
const IOV_MAX = 1024;
/**
 * How long one `poll` may block the sender thread before it yields to its event loop, which
 * carries the return path: postcopy's page requests wait at most this long behind a full socket.
 */
const POLL_MS = 1;
const TWO32 = 0x1_0000_0000;
/** Bytes of a guest page. */
const PAGE_BYTES = 4096;

/**
 * One flush's bytes as an iovec list: ranges of guest memory in place, everything else (record
 * headers, section markers, commands) copied into the list's own buffer. Adjacent ranges merge.
 */
export class Gather {
  /** Bytes in the list. */
  bytes = 0;
  /** iovecs: (address low, address high, length, 0) as 32-bit words. */
  iov = new Uint32Array(4 * 2 * IOV_MAX);
  count = 0;
  private arena = new Uint8Array(16 * 1024);
  /** The arena, for big-endian header words. */
  private view = new DataView(this.arena.buffer);
  private arenaBase: number;
  private used = 0;
  constructor(
    private readonly c: Libc,
    private readonly memoryBase: number,
    private readonly memoryBytes: number,
  ) {
    // Plain ArrayBuffers over 64 bytes keep their bytes off V8's heap, where they never move:
    // an address taken once stays valid.
    this.arenaBase = c.addressOf(this.arena);
  }
  /** `length` bytes of guest memory from `offset`. */
  memory(offset: number, length: number): void {
    // The kernel reads whatever an iovec names: nothing outside guest memory may reach the wire.
    if (!(offset >= 0 && length > 0 && offset + length <= this.memoryBytes))
      throw new Error(
        `fd-writer: ${length} bytes at ${offset} outside guest memory (${this.memoryBytes} bytes)`,
      );
    this.add(this.memoryBase + offset, length);
  }
  /** A RAM record's header (and a zero page's fill byte). */
  header(offset: number, flags: number, fill: boolean): void {
    const n = fill ? RAM_HEADER_BYTES + 1 : RAM_HEADER_BYTES;
    this.room(n);
    const at = this.used;
    writeRamHeader(this.arena, at, offset, flags);
    if (fill) this.arena[at + RAM_HEADER_BYTES] = 0;
    this.used += n;
    this.add(this.arenaBase + at, n);
  }
  /**
   * `n` page records of consecutive guest pages from `firstPage`, each an 8-byte header
   * (`offset | flags`, big-endian, into the arena) and its page in place: what `header` and
   * `memory` append page by page, in one loop (the sender's runs are up to an op's 32 pages:
   * 8,192 calls for an idle GiB instead of eight calls per page, and one shape of code for V8).
   */
  records(firstPage: number, n: number, flags: number): void {
    const offset = firstPage * PAGE_BYTES;
    if (!(n > 0 && offset >= 0 && offset + n * PAGE_BYTES <= this.memoryBytes))
      throw new Error(`fd-writer: ${n} pages at ${offset} outside guest memory (${this.memoryBytes} bytes)`);
    this.room(RAM_HEADER_BYTES * n);
    // No merging with the iovec before (as `add` would): one loop without a branch that V8 could
    // first meet after optimizing it; an unmerged header costs one iovec.
    const iov = this.reserve(this.count + 2 * n);
    const view = this.view;
    let at = this.used;
    let c = this.count * 4;
    // Each 64-bit value's low half as `x - hi * 2^32`: a double's `%` is a call into C, and a
    // carry branch would be code first met after optimization (a deopt).
    let headerAddress = this.arenaBase + at;
    let pageAddress = this.memoryBase + offset;
    for (let i = 0, o = offset; i < n; i++) {
      const oHi = Math.floor(o / TWO32);
      view.setUint32(at, oHi);
      view.setUint32(at + 4, ((o - oHi * TWO32) | flags) >>> 0);
      const hHi = Math.floor(headerAddress / TWO32);
      const pHi = Math.floor(pageAddress / TWO32);
      iov[c] = headerAddress - hHi * TWO32;
      iov[c + 1] = hHi;
      iov[c + 2] = RAM_HEADER_BYTES;
      iov[c + 3] = 0;
      iov[c + 4] = pageAddress - pHi * TWO32;
      iov[c + 5] = pHi;
      iov[c + 6] = PAGE_BYTES;
      iov[c + 7] = 0;
      c += 8;
      at += RAM_HEADER_BYTES;
      headerAddress += RAM_HEADER_BYTES;
      o += PAGE_BYTES;
      pageAddress += PAGE_BYTES;
    }
    this.count = c / 4;
    this.used = at;
    this.bytes += n * (RAM_HEADER_BYTES + PAGE_BYTES);
  }
  /** Any other bytes, copied. */
  copy(chunk: Uint8Array): void {
    const n = chunk.byteLength;
    if (n === 0) return;
    this.room(n);
    this.arena.set(chunk, this.used);
    this.add(this.arenaBase + this.used, n);
    this.used += n;
  }
  /** Empties the list for reuse. */
  reset(): void {
    this.count = 0;
    this.used = 0;
    this.bytes = 0;
  }
  private add(address: number, length: number): void {
    this.bytes += length;
    const iov = this.iov;
    const last = (this.count - 1) * 4;
    if (
      last >= 0 &&
      (iov[last + 2] as number) + length < 2 ** 31 &&
      (iov[last] as number) + (iov[last + 1] as number) * TWO32 + (iov[last + 2] as number) === address
    ) {
      iov[last + 2] = (iov[last + 2] as number) + length;
      return;
    }
    const list = this.reserve(this.count + 1);
    const at = this.count++ * 4;
    list[at] = address % TWO32;
    list[at + 1] = Math.floor(address / TWO32);
    list[at + 2] = length;
    list[at + 3] = 0;
  }
  /** The iovec list, grown (at least doubled) to hold `iovecs` entries. */
  private reserve(iovecs: number): Uint32Array {
    if (iovecs * 4 > this.iov.length) {
      const grown = new Uint32Array(Math.max(iovecs * 4, this.iov.length * 2));
      grown.set(this.iov);
      this.iov = grown;
    }
    return this.iov;
  }
  /** Makes room for `n` more bytes in the arena: a larger one (its earlier bytes stay where they are). */
  private room(n: number): void {
    if (this.used + n <= this.arena.byteLength) return;
    // The old arena's bytes are still referenced by earlier iovecs: keep it alive until reset.
    this.retired.push(this.arena);
    this.arena = new Uint8Array(Math.max(2 * this.arena.byteLength, n));
    this.view = new DataView(this.arena.buffer);
    this.arenaBase = this.c.addressOf(this.arena);
    this.used = 0;
  }
  /** Arenas outgrown while this list was filled (their bytes are in its iovecs). */
  private retired: Uint8Array[] = [];
  /** Drops the outgrown arenas (after the list was written). */
  release(): void {
    // Setting an array's length is a call into the runtime even when it is already 0.
    if (this.retired.length !== 0) this.retired.length = 0;
  }
}

/** Bytes asked of each zero-copy pipe (`F_SETPIPE_SZ`; the default `pipe-max-size` allows 1 MiB). */
const PIPE_BYTES = 2 ** 20;

/** Whether this thread can call `writev` through koffi (Linux, koffi loads). */
export function fdWritesAvailable(): boolean {
  return loadLibc() !== null;
}

/** Writes {@link Gather} lists to one socket's descriptor; see the module comment. */
export interface FdWriter {
  /** An empty list (reused once written). */
  gather(): Gather;
  /**
   * Writes `list` after every list written before it. Resolves once the kernel has taken every
   * byte; rejects on a socket error or when `alive()` turns false while it waits for room.
   */
  write(list: Gather): Promise<void>;
  /** Bytes of the lists given to `write` that the kernel has not taken yet (Node's `writableLength`). */
  readonly pending: number;
  /** Zero-copy-send: page bytes handed to the kernel by reference (`vmsplice`) so far. */
  readonly splicedBytes: number;
}

export interface FdWriterOptions {
  /** Called for every `writev` (the sender counts them). */
  onWritev?: () => void;
  /** Zero-copy-send: guest pages go through a pipe by reference (see the module comment). */
  splice?: boolean;
}

interface SocketLike {
  _handle?: { fd?: unknown } | null;
  writableLength: number;
  write(b: Uint8Array, cb: () => void): boolean;
}

/**
 * A writer for `socket` whose guest-memory ranges are offsets into `memory`, or undefined where
 * `writev` cannot be called (not Linux, koffi missing, no descriptor): the caller then uses
 * Node's own writes.
 */
export function createFdWriter(
  socket: SocketLike,
  memory: Uint8Array,
  alive: () => boolean,
  options: FdWriterOptions = {},
): FdWriter | undefined {
  const c = loadLibc();
  const fd = socket._handle?.fd;
  if (c === null || typeof fd !== 'number' || fd < 0) return undefined;
  const onWritev = options.onWritev ?? (() => {});
  const memoryBase = c.addressOf(memory);
  const memoryEnd = memoryBase + memory.byteLength;
  /** Zero-copy-send's pipe: [read end, write end], non-blocking; closed with the socket. */
  let pipe: Int32Array | undefined;
  if (options.splice === true) {
    pipe = new Int32Array(2);
    if (c.pipe2(pipe, O_NONBLOCK | O_CLOEXEC) !== 0)
      throw new Error(`zero-copy-send: pipe2 ${errnoName(c.errno())}`);
    // A larger pipe means fewer calls; where pipe-max-size refuses it, the default (64 KiB) works.
    c.fcntl(pipe[1] as number, F_SETPIPE_SZ, PIPE_BYTES);
    const fds = pipe;
    const closePipe = (): void => {
      c.close(fds[0] as number);
      c.close(fds[1] as number);
    };
    (socket as SocketLike & { once?: (e: string, f: () => void) => void }).once?.('close', closePipe);
  }
  let splicedBytes = 0;
  // struct pollfd: int fd, short events, short revents.
  const pollFd = new Int32Array(2);
  const pollEvents = new Int16Array(pollFd.buffer);
  const spare: Gather[] = [];
  /** The writes in order: a slice's write may start while the one before still waits for room. */
  let tail: Promise<void> = Promise.resolve();
  let pending = 0;

  /** Sleeps in poll until the socket has room, at most POLL_MS, then lets the event loop run. */
  const waitForRoom = async (): Promise<void> => {
    pollFd[0] = fd;
    pollEvents[2] = POLLOUT;
    pollEvents[3] = 0;
    if (c.poll(pollFd, 1, POLL_MS) <= 0) await new Promise<void>((r) => setImmediate(r));
  };
  /** Skips the iovecs of `iov` from `first` that `k` bytes covered whole; shortens a partial one. */
  const advance = (iov: Uint32Array, first: number, k: number): number => {
    for (let left = k; left > 0;) {
      const length = iov[first * 4 + 2] as number;
      if (left >= length) {
        left -= length;
        first++;
      } else {
        const at = (iov[first * 4] as number) + (iov[first * 4 + 1] as number) * TWO32 + left;
        iov[first * 4] = at % TWO32;
        iov[first * 4 + 1] = Math.floor(at / TWO32);
        iov[first * 4 + 2] = length - left;
        left = 0;
      }
    }
    return first;
  };
  const inMemory = (iov: Uint32Array, i: number): boolean => {
    const at = (iov[i * 4] as number) + (iov[i * 4 + 1] as number) * TWO32;
    return at >= memoryBase && at < memoryEnd;
  };
  /**
   * Zero-copy-send: the list through the pipe — runs of guest-memory iovecs `vmsplice`d, runs of
   * the others written (copied), the pipe `splice`d into the socket — until the pipe is empty.
   */
  const spliceList = async (list: Gather, pipeRead: number, pipeWrite: number): Promise<void> => {
    const iov = list.iov;
    const bytes = new Uint8Array(iov.buffer);
    let inPipe = 0;
    for (let first = 0; first < list.count || inPipe > 0;) {
      if (!alive()) throw new Error('the connection closed while a batch was being written');
      let moved = false;
      if (first < list.count) {
        const pages = inMemory(iov, first);
        let n = 1;
        while (first + n < list.count && n < IOV_MAX && inMemory(iov, first + n) === pages) n++;
        const at = bytes.subarray(first * 16);
        const k = Number(
          pages ? c.vmsplice(pipeWrite, at, n, SPLICE_F_NONBLOCK) : c.writev(pipeWrite, at, n),
        );
        if (k > 0) {
          first = advance(iov, first, k);
          inPipe += k;
          if (pages) splicedBytes += k;
          moved = true;
        } else if (k === 0) {
          throw new Error(`${pages ? 'vmsplice' : 'write'} took nothing of ${n} iovecs`);
        } else {
          const errno = c.errno();
          if (errno !== EAGAIN && errno !== EINTR)
            throw new Error(`${pages ? 'vmsplice' : 'write'} ${errnoName(errno)}`);
        }
      }
      if (inPipe > 0) {
        const more = first < list.count ? SPLICE_F_MORE : 0;
        const k = Number(c.splice(pipeRead, fd, inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK | more));
        if (k > 0) {
          inPipe -= k;
          pending -= k;
          moved = true;
        } else if (k === 0) {
          // Only this writer fills and empties its pipe: an empty one here is a bug, not a wait.
          throw new Error(`splice found the pipe empty with ${inPipe} bytes sent into it`);
        } else {
          const errno = c.errno();
          if (errno !== EAGAIN && errno !== EINTR) throw new Error(`splice ${errnoName(errno)}`);
        }
      }
      // Neither the pipe nor the socket took anything: the socket's buffer is full.
      if (!moved) await waitForRoom();
    }
  };

  const writeNow = async (list: Gather): Promise<void> => {
    // The iovecs hold raw addresses into `memory`: keep it referenced until the kernel has them
    // (a view no one else holds could otherwise be collected, its bytes freed, mid-write).
    if (memory.byteLength === 0 && list.count > 0) throw new Error('guest memory was detached');
    if (socket.writableLength > 0) await new Promise<void>((r) => socket.write(new Uint8Array(0), r));
    const iov = list.iov;
    const bytes = new Uint8Array(iov.buffer);
    if (pipe !== undefined) await spliceList(list, pipe[0] as number, pipe[1] as number);
    for (let first = 0; pipe === undefined && first < list.count;) {
      if (!alive()) throw new Error('the connection closed while a batch was being written');
      const k = Number(c.writev(fd, bytes.subarray(first * 16), Math.min(IOV_MAX, list.count - first)));
      onWritev();
      if (k < 0) {
        const errno = c.errno();
        if (errno !== EAGAIN && errno !== EINTR) throw new Error(`writev ${errnoName(errno)}`);
        // The socket's buffer is full: wait for room (the event loop runs meanwhile: the return
        // path, a fault) before trying again.
        await waitForRoom();
        continue;
      }
      pending -= k;
      first = advance(iov, first, k);
    }
    list.release();
    list.reset();
    spare.push(list);
  };

  return {
    gather: () => spare.pop() ?? new Gather(c, memoryBase, memory.byteLength),
    get pending() {
      return pending;
    },
    get splicedBytes() {
      return splicedBytes;
    },
    write(list) {
      pending += list.bytes;
      const written = tail.then(() => writeNow(list));
      tail = written.catch(() => {});
      return written;
    },
  };
}
