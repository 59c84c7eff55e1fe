import { DirtytrackError } from './errors.js';

/**
 * A reader-writer lock in one 32-bit word of a `SharedArrayBuffer`, built on `Atomics.wait` /
 * `Atomics.notify`, so threads (worker_threads) that share the buffer share the lock. It models
 * KVM's `mmu_lock` on x86 (an rwlock: page faults read, zaps and re-protects write) and the
 * slides' proposal for QEMU's dirty bitmaps.
 *
 * Writer preference: once a writer waits, new readers wait too, so a stream of readers cannot
 * starve a writer. Every blocking call takes an optional timeout and returns `false` when it
 * expires, leaving the lock as it was.
 *
 * State word layout: bits 0–15 active readers, bits 16–29 waiting writers, bit 30 writer active.
 * Every change of any part changes the word, which is what `Atomics.wait` keys on.
 */
export interface RWLock {
  /** The shared memory holding the lock; post it to workers and `attachRWLock` there. */
  readonly buffer: SharedArrayBuffer;
  readonly byteOffset: number;
  tryReadLock(): boolean;
  /** Blocks until read-locked, or until `timeoutMs` passes (returns false). */
  readLock(timeoutMs?: number): boolean;
  readUnlock(): void;
  tryWriteLock(): boolean;
  /** Blocks until write-locked, or until `timeoutMs` passes (returns false). */
  writeLock(timeoutMs?: number): boolean;
  writeUnlock(): void;
  /** A snapshot of the state, for tests and diagnostics. */
  inspect(): { readers: number; waitingWriters: number; writer: boolean };
}

const READER = 1;
const READER_MASK = 0xffff;
const WAITER = 1 << 16;
const WAITER_MASK = 0x3fff << 16;
const WRITER = 1 << 30;

/** Bytes one lock needs (one Int32, 4-byte aligned). */
export const RWLOCK_BYTES = 4;

/** Creates a lock in a fresh `SharedArrayBuffer`. */
export function createRWLock(): RWLock {
  return attachRWLock(new SharedArrayBuffer(RWLOCK_BYTES), 0);
}

/** Attaches to a lock living at `byteOffset` of `buffer` (e.g. in a worker). */
export function attachRWLock(buffer: SharedArrayBuffer, byteOffset = 0): RWLock {
  if (typeof SharedArrayBuffer === 'undefined' || !(buffer instanceof SharedArrayBuffer)) {
    throw new DirtytrackError('unsupported', 'an RWLock needs a SharedArrayBuffer', { component: 'rwlock' });
  }
  if (byteOffset % 4 !== 0 || byteOffset < 0 || byteOffset + RWLOCK_BYTES > buffer.byteLength) {
    throw new DirtytrackError(
      'out-of-range',
      `lock offset ${byteOffset} is not a 4-byte-aligned slot of the buffer`,
      {
        component: 'rwlock',
      },
    );
  }
  const state = new Int32Array(buffer, byteOffset, 1);

  const deadline = (timeoutMs: number): number => {
    if (!(timeoutMs >= 0)) {
      throw new DirtytrackError('invalid-argument', `timeout ${timeoutMs} ms must be >= 0`, {
        component: 'rwlock',
      });
    }
    return timeoutMs === Infinity ? Infinity : performanceNow() + timeoutMs;
  };
  const waitChange = (seen: number, until: number): boolean => {
    const left = until === Infinity ? Infinity : until - performanceNow();
    if (left <= 0) return false;
    Atomics.wait(state, 0, seen, left);
    return true;
  };
  const tryRead = (): boolean => {
    const s = Atomics.load(state, 0);
    if ((s & (WRITER | WAITER_MASK)) !== 0) return false;
    if ((s & READER_MASK) === READER_MASK) {
      throw new DirtytrackError('internal', 'more than 65535 concurrent readers', { component: 'rwlock' });
    }
    return Atomics.compareExchange(state, 0, s, s + READER) === s;
  };

  const lock: RWLock = {
    buffer,
    byteOffset,
    tryReadLock() {
      for (;;) {
        const s = Atomics.load(state, 0);
        if ((s & (WRITER | WAITER_MASK)) !== 0) return false;
        if (tryRead()) return true;
      }
    },
    readLock(timeoutMs = Infinity) {
      const until = deadline(timeoutMs);
      for (;;) {
        const s = Atomics.load(state, 0);
        if ((s & (WRITER | WAITER_MASK)) === 0) {
          if (tryRead()) return true;
          continue;
        }
        if (!waitChange(s, until)) return false;
      }
    },
    readUnlock() {
      // Check and decrement in one compare-exchange: a blind `Atomics.sub` on a word with no
      // readers would borrow into the waiter and writer bits, and other threads could see that
      // garbage before it was undone (spurious errors, a write lock nobody can release).
      let prev: number;
      for (;;) {
        prev = Atomics.load(state, 0);
        if ((prev & READER_MASK) === 0) {
          throw new DirtytrackError('invalid-state', 'readUnlock without a read lock held', {
            component: 'rwlock',
          });
        }
        if (Atomics.compareExchange(state, 0, prev, prev - READER) === prev) break;
      }
      // The last reader out lets a waiting writer in.
      if ((prev & READER_MASK) === READER && (prev & WAITER_MASK) !== 0) Atomics.notify(state, 0);
    },
    tryWriteLock() {
      return Atomics.compareExchange(state, 0, 0, WRITER) === 0;
    },
    writeLock(timeoutMs = Infinity) {
      const until = deadline(timeoutMs);
      if (Atomics.compareExchange(state, 0, 0, WRITER) === 0) return true;
      // Announce ourselves: from now on new readers wait (writer preference).
      for (;;) {
        const s = Atomics.load(state, 0);
        if ((s & WAITER_MASK) === WAITER_MASK) {
          throw new DirtytrackError('internal', 'more than 16383 waiting writers', { component: 'rwlock' });
        }
        if (Atomics.compareExchange(state, 0, s, s + WAITER) === s) break;
      }
      for (;;) {
        const s = Atomics.load(state, 0);
        if ((s & (WRITER | READER_MASK)) === 0) {
          if (Atomics.compareExchange(state, 0, s, s - WAITER + WRITER) === s) return true;
          continue;
        }
        if (!waitChange(s, until)) {
          // Give up: withdraw the announcement and wake readers it was holding back.
          Atomics.sub(state, 0, WAITER);
          Atomics.notify(state, 0);
          return false;
        }
      }
    },
    writeUnlock() {
      for (;;) {
        const s = Atomics.load(state, 0);
        if ((s & WRITER) === 0) {
          throw new DirtytrackError('invalid-state', 'writeUnlock without the write lock held', {
            component: 'rwlock',
          });
        }
        if (Atomics.compareExchange(state, 0, s, s & ~WRITER) === s) break;
      }
      Atomics.notify(state, 0);
    },
    inspect() {
      const s = Atomics.load(state, 0);
      return {
        readers: s & READER_MASK,
        waitingWriters: (s & WAITER_MASK) >>> 16,
        writer: (s & WRITER) !== 0,
      };
    },
  };
  return lock;
}

// Wall time is needed only to bound waits; it never influences what the lock decides.
function performanceNow(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}
