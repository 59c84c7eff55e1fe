/** Shared-memory layouts the worker fixtures and the tests that start them agree on. */

/** Int32 slots of the bitmap setters' control buffer. */
export const SETTER_CONTROL = {
  /** +1 by each worker once it has attached to the bitmap. */
  READY: 0,
  /** The epoch the main thread has started (1-based; 0 = none yet). Workers wait on it. */
  EPOCH: 1,
  /** +1 by each worker each time it finishes an epoch. */
  FINISHED: 2,
  /** +1 by each worker that threw. */
  FAILED: 3,
  LENGTH: 4,
} as const;

export interface SetterData {
  buffer: SharedArrayBuffer;
  byteOffset: number;
  bits: number;
  /** `epochs` consecutive slices of `perEpoch` pages: what this worker sets in each epoch, in order. */
  pages: Uint32Array;
  epochs: number;
  perEpoch: number;
  /**
   * After setting its slice once, the worker sets the slice's first `again` pages a second time:
   * those must not be counted twice. (Only pages set once can reveal a lost bit.)
   */
  again: number;
  control: SharedArrayBuffer;
}

/** Int32 slots of the rwlock stress test's shared memory. */
export const STRESS = {
  /** +1 by each worker once it has attached to the lock. */
  READY: 0,
  /** Set to 1 (and notified) by the main thread to start all workers at once. */
  GO: 1,
  /** +1 by each worker when it stops, successfully or not. */
  FINISHED: 2,
  /** +1 by each worker that threw. */
  FAILED: 3,
  /** 1 while a writer is inside its critical section. */
  WRITER_INSIDE: 4,
  /** Readers inside their critical section (atomic +1 / -1). */
  READERS_INSIDE: 5,
  /** Incremented non-atomically (load, busy work, store) by writers: lost updates show here. */
  COUNTER: 6,
  /** Mutual-exclusion violations seen (a writer with a reader or another writer inside). */
  VIOLATIONS: 7,
  /** Blocking lock calls that timed out although nothing should hold the lock that long. */
  DEADLOCKS: 8,
  /** Write critical sections completed (atomic): what COUNTER must equal. */
  WRITES: 9,
  /** Read critical sections completed. */
  READS: 10,
  /** tryReadLock / tryWriteLock calls that failed, and short writeLock timeouts that expired. */
  BACKOFFS: 11,
  /** Workers that reached the barrier (mode 'barrier'). */
  ARRIVED: 12,
  LENGTH: 13,
} as const;

export type StressMode =
  /** Mixed readers and writers under the lock. */
  | 'locked'
  /** Only writers, under the lock (alternating writeLock and tryWriteLock). */
  | 'writers'
  /** Only writers, without the lock: the negative control (lost updates expected). */
  | 'unlocked'
  /** Each worker reads COUNTER, waits until all have read it, then writes it + 1 (certain loss). */
  | 'barrier';

export interface StressData {
  mode: StressMode;
  lock: SharedArrayBuffer;
  lockOffset: number;
  shm: SharedArrayBuffer;
  worker: number;
  workers: number;
  iterations: number;
  seed: number;
  /** Busy-work iterations inside each critical section. */
  busy: number;
  /** Timeout of every blocking lock call; expiring counts as a deadlock. */
  timeoutMs: number;
}

/** Int32 slots shared with the rwlock actor workers (writer-preference tests). */
export const ACTOR = {
  /** Set to 1 by the reader once it holds its read lock. */
  READER_HOLDS: 0,
  /** Set to 1 by the main thread to make the reader release. */
  READER_RELEASE: 1,
  /** 0 while the writer waits; then 1 if writeLock returned true, 2 if it returned false. */
  WRITER_RESULT: 2,
  /** Set to 1 by the main thread to make the writer release (if it got the lock). */
  WRITER_RELEASE: 3,
  /** Set to 1 by the reader just before it calls readLock. */
  READER_TRYING: 4,
  LENGTH: 5,
} as const;

export interface ActorData {
  role: 'reader' | 'writer';
  lock: SharedArrayBuffer;
  lockOffset: number;
  shm: SharedArrayBuffer;
  /** Timeout of the writer's writeLock call. */
  timeoutMs: number;
}
