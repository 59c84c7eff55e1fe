import { Socket } from 'node:net';
import { PAGE_SIZE } from '@dirtytrack/core';
import { loadLibc, SO_RCVLOWAT, SOL_SOCKET } from './libc.js';

/** Bytes of a connection's reused read buffer (multifd and preempt connections). */
export const READ_BUFFER_BYTES = 2 ** 20;

/**
 * Bytes of the main connection's reused read buffer: precopy's page records all arrive there, and
 * each must be copied out of the buffer (an 8-byte header sits between every two pages, so none
 * can be read in place). Reads of up to 4 MiB instead of 1 MiB made an idle 1 GiB precopy on
 * loopback 10–18% faster on this project's test machine (nine pairs, the 1 MiB run first in each:
 * 671–793 ms against 821–1,000 ms of `total-time`) — fewer reads, wake-ups and decoder entries
 * per byte. With `stagePage` (below), the two measured 0.94 of the old `total-time` end to end
 * (median of 22 pairs run in both orders).
 * Multifd channels read their pages in place and showed no difference, so they keep
 * {@link READ_BUFFER_BYTES}.
 */
export const MAIN_READ_BUFFER_BYTES = 4 * 2 ** 20;

/**
 * Bytes a main connection's reads wait for while precopy's page records stream in
 * ({@link BufferedSocket.batchReads}). Woken at every segment, the destination read an idle 1 GiB
 * precopy in ~6,500 reads, each a callback into JavaScript and a pass of the decoder; waiting for
 * 512 KiB it reads it in ~1,600, and the migration's `total-time` fell to 0.89× on this project's
 * test machine (10 alternating pairs: median 498 ms against 581). 1 and 2 MiB did no better (4
 * rounds: 513 and 514 ms against 502 for 512 KiB and 563 unbatched).
 */
export const MAIN_READ_BATCH_BYTES = 512 * 1024;

/**
 * While reads are batched, a connection with no read for this long reads what it has: the kernel
 * wakes a reader only once the batch is queued, so the last bytes before a pause (a command the
 * source then waits on) would wait for ever.
 */
export const READ_BATCH_IDLE_MS = 1;

/**
 * A read of this many bytes (or of the batch) while the idle timer has lowered the option: the
 * stream goes on in bulk, so reads wait for a batch again. A command is a few bytes; on loopback a
 * segment carries up to ~64 KiB.
 */
export const READ_BATCH_RESUME_BYTES = 32 * 1024;

/** Gets each read's bytes (valid until it returns); return false to stop reading until `resume()`. */
export type ChunkHandler = (chunk: Uint8Array) => boolean;

/**
 * Reads that may go straight to where their bytes belong (a multifd packet's pages, into guest
 * memory) instead of into the reused buffer.
 */
export interface InPlaceReads {
  /**
   * Asked before each read: where it should go — a view to read into in place, a number to read
   * at most that many bytes into the reused buffer (a header, so that what follows it can go in
   * place), or undefined for the whole reused buffer.
   */
  target(): Uint8Array | number | undefined;
  /** The last read put `n` bytes at the start of its target; false stops reading until `resume()`. */
  landed(n: number): boolean;
}

/** Each read buffer's allocation — the buffer, then one scratch page — and that page, by its memory. */
const scratchOf = new WeakMap<ArrayBufferLike, { whole: Uint8Array; page: Uint8Array }>();

/**
 * Copies the 4 KiB page at `at` of `chunk` — a chunk that a {@link withReadBuffer} socket handed
 * its handler — into the scratch page kept right after that read buffer, and returns the scratch
 * page (valid until the next call for that buffer). Undefined for any other chunk, or a page not
 * wholly inside `chunk`. Inside one plain buffer the copy is a `copyWithin` (a `memmove`) and
 * allocates nothing, where handing the page on as a view (`subarray`) costs an object per page:
 * 262,144 per GiB, and a scavenge every few MB of them on the destination's thread.
 */
export function stagePage(chunk: Uint8Array, at: number): Uint8Array | undefined {
  if (chunk !== staged.chunk) {
    // Once per chunk, not per page: `chunk.buffer` is a call into V8's runtime (with the WeakMap
    // lookup, ~10 % of staging a page; ~6 % of the destination thread's time in a migration).
    const s = scratchOf.get(chunk.buffer);
    staged.chunk = chunk;
    staged.scratch = s;
    staged.delta = s === undefined ? 0 : chunk.byteOffset - s.whole.byteOffset;
  }
  const s = staged.scratch;
  if (s === undefined || !(at >= 0 && at + PAGE_SIZE <= chunk.length)) return undefined;
  const from = staged.delta + at;
  s.whole.copyWithin(s.whole.length - PAGE_SIZE, from, from + PAGE_SIZE);
  return s.page;
}

/**
 * The chunk {@link stagePage} saw last (a read's every page record comes in the same chunk), its
 * read buffer's scratch and where the chunk starts in that allocation. A closed connection's
 * buffer is let go ({@link withReadBuffer}).
 */
const staged: {
  chunk: Uint8Array | undefined;
  scratch: { whole: Uint8Array; page: Uint8Array } | undefined;
  delta: number;
} = { chunk: undefined, scratch: undefined, delta: 0 };

/** A socket that reads into one reused buffer, and the handler its reads go to. */
export interface BufferedSocket {
  readonly socket: Socket;
  /** Sets the handler (and, optionally, where reads may go in place) and starts reading. */
  start(onChunk: ChunkHandler, inPlace?: InPlaceReads): void;
  /**
   * Reads in batches: the kernel wakes the reader once `bytes` are queued (`SO_RCVLOWAT`) instead
   * of at every segment, and a connection with no read for {@link READ_BATCH_IDLE_MS} reads what it
   * has (the option is lowered to 1, which wakes it, and raised again at the next read of
   * {@link READ_BATCH_RESUME_BYTES} or of the batch: the stream goes on in bulk). For a bulk
   * stream only: each pause costs up to twice that idle time. `bytes` ≤ 1 reads as the bytes come
   * again. False where the option cannot be set (not Linux, no koffi, the socket closed): reads go
   * on as they were. `idleMs`: the idle time (tests).
   */
  batchReads(bytes: number, idleMs?: number): boolean;
  /** Reads so far (each one callback into JavaScript). */
  readonly reads: number;
  /** The `SO_RCVLOWAT` in effect: the batch, or 1 (not batching, or lowered by the idle timer). */
  readonly lowWater: number;
}

interface HandleHolder {
  _handle: { readStop(): number; fd?: unknown } | null;
}

/**
 * Moves an accepted connection onto a `net.Socket` that reads into one reused buffer (Node's
 * `onread` option), so a read allocates nothing. Node's default read allocates a fresh 64 KiB
 * buffer per read; receiving 1 GiB into guest memory that way ran at 4–7 Gbit/s on this project's
 * test machine (the allocations' page faults and garbage collection), against 11–13 Gbit/s with
 * one reused 1 MiB buffer — as fast as discarding the bytes.
 *
 * `net.Server` takes no `onread` option for the connections it accepts, so the accepted handle is
 * wrapped again, the way `net` wraps it itself (`new Socket({ handle })`); the old socket object
 * is dropped without closing the handle. Returns undefined — keep using `socket` with 'data'
 * events — when the handle cannot be moved: the socket ended, was destroyed or holds bytes already
 * (a peer that sent ahead of the handshake's answer), or this Node keeps its handle elsewhere.
 * `into`: the buffer and its scratch page (`bytes` + 4 KiB) to read into — a record RAM's
 * (record-ram.ts), inside guest memory's own buffer — instead of a new one.
 */
export function withReadBuffer(
  socket: Socket,
  bytes = READ_BUFFER_BYTES,
  into?: Uint8Array,
): BufferedSocket | undefined {
  if (into !== undefined && into.length < bytes + PAGE_SIZE)
    throw new RangeError(`withReadBuffer: into holds ${into.length} bytes, need ${bytes + PAGE_SIZE}`);
  const holder = socket as unknown as HandleHolder;
  const handle = holder._handle;
  if (
    handle === null ||
    typeof handle !== 'object' ||
    typeof handle.readStop !== 'function' ||
    socket.destroyed ||
    socket.readableEnded ||
    socket.readableLength > 0
  )
    return undefined;
  handle.readStop();
  holder._handle = null;
  socket.removeAllListeners();
  // No handle: destroy only emits 'close' and takes the connection off the server's count.
  socket.on('error', () => {});
  socket.destroy();
  // Not zero-filled: every byte a handler sees was read into it first. A zeroed 4 MiB buffer
  // cost each accepted connection ~2 ms (1,000 fuzzed connections: 3.8–4.3 s against 2.5–3.2).
  // A plain Uint8Array over the Buffer's memory, so that `slice()` copies, as callers expect.
  const raw = into ?? Buffer.allocUnsafeSlow(bytes + PAGE_SIZE);
  const whole = new Uint8Array(raw.buffer, raw.byteOffset, bytes + PAGE_SIZE);
  const buffer = whole.subarray(0, bytes);
  scratchOf.set(whole.buffer, { whole, page: whole.subarray(bytes) });
  let handler: ChunkHandler = () => false;
  let place: InPlaceReads | undefined;
  let reads = 0;
  // Batched reads: the batch asked for, whether the idle timer lowered the option to 1, the read
  // count at the timer's last look.
  let batch = 1;
  let lowered = false;
  let seen = 0;
  let idle: NodeJS.Timeout | undefined;
  /** SO_RCVLOWAT on the socket's descriptor, read now: a closed handle's is gone (never a stale number). */
  const setLowat = (bytes: number): boolean => {
    const fd = handle.fd;
    const libc = loadLibc();
    if (libc === null || typeof fd !== 'number' || fd < 0 || fresh.destroyed) return false;
    return libc.setsockoptInt(fd, SOL_SOCKET, SO_RCVLOWAT, bytes) === 0;
  };
  const stopBatching = (): void => {
    clearInterval(idle);
    idle = undefined;
    batch = 1;
    lowered = false;
  };
  const fresh = new Socket({
    handle,
    allowHalfOpen: true,
    readable: true,
    writable: true,
    pauseOnCreate: true,
    // Node asks for the next read's buffer after each read (and once before the first).
    onread: {
      buffer: () => {
        const t = place?.target();
        return t === undefined ? buffer : typeof t === 'number' ? buffer.subarray(0, Math.min(t, bytes)) : t;
      },
      // A main connection's reads all go to the buffer; a channel's in place ones elsewhere — into
      // guest RAM, which may be the same memory as the buffer (a record RAM), so by offset too.
      callback: (n: number, buf: Uint8Array) => {
        reads++;
        if (lowered && n >= Math.min(batch, READ_BATCH_RESUME_BYTES)) {
          lowered = false;
          setLowat(batch);
        }
        return place === undefined || (buf.byteOffset === buffer.byteOffset && buf.buffer === buffer.buffer)
          ? handler(buf.subarray(0, n))
          : place.landed(n);
      },
    },
  } as ConstructorParameters<typeof Socket>[0]);
  fresh.once('close', () => {
    stopBatching();
    if (staged.chunk?.buffer === whole.buffer) {
      staged.chunk = undefined;
      staged.scratch = undefined;
    }
  });
  return {
    socket: fresh,
    start(onChunk, inPlace) {
      handler = onChunk;
      place = inPlace;
      fresh.resume();
    },
    batchReads(bytes, idleMs = READ_BATCH_IDLE_MS) {
      if (bytes <= 1) {
        const had = batch > 1;
        stopBatching();
        // Lowering the option wakes a reader whose queued bytes it now covers.
        return had ? setLowat(1) : true;
      }
      if (!setLowat(bytes)) return false;
      batch = bytes;
      lowered = false;
      clearInterval(idle);
      seen = reads;
      idle = setInterval(() => {
        if (reads === seen && !lowered) lowered = setLowat(1);
        seen = reads;
      }, idleMs);
      idle.unref();
      return true;
    },
    get reads() {
      return reads;
    },
    get lowWater() {
      return lowered ? 1 : batch;
    },
  };
}
