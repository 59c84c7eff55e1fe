import type { Worker } from 'node:worker_threads';
import { expectError as expectDirtytrackError } from './__fixtures__/expect-error.js';
import { describe, expect, it } from 'vitest';
import type { DirtytrackError } from './errors.js';
import { isDirtytrackError, type DirtytrackErrorCode } from './errors.js';
import { RWLOCK_BYTES, attachRWLock, createRWLock, type RWLock } from './rwlock.js';
import { ACTOR, STRESS, type ActorData, type StressData, type StressMode } from './__fixtures__/layouts.js';
import { startWorker, terminateAll, waitUntil } from './__fixtures__/workers.js';

const STRESS_WORKER = new URL('./__fixtures__/rwlock-stress.worker.ts', import.meta.url);
const ACTOR_WORKER = new URL('./__fixtures__/rwlock-actor.worker.ts', import.meta.url);
const FREE = { readers: 0, waitingWriters: 0, writer: false };

function elapsedMs(since: bigint): number {
  return Number(process.hrtime.bigint() - since) / 1e6;
}

/** Resolves with each worker's exit code; a worker that throws rejects with its error. */
function exitCodes(workers: readonly Worker[]): Promise<number[]> {
  return Promise.all(
    workers.map(
      (w) =>
        new Promise<number>((resolve, reject) => {
          w.once('error', reject);
          w.once('exit', resolve);
        }),
    ),
  );
}

describe('RWLock, single thread', () => {
  it('admits several readers, and a writer only when nobody holds the lock', () => {
    const lock = createRWLock();
    expect(lock.inspect()).toEqual(FREE);
    expect(lock.tryReadLock()).toBe(true);
    expect(lock.tryReadLock()).toBe(true);
    expect(lock.inspect()).toEqual({ readers: 2, waitingWriters: 0, writer: false });
    expect(lock.tryWriteLock()).toBe(false);
    lock.readUnlock();
    expect(lock.tryWriteLock()).toBe(false);
    lock.readUnlock();
    expect(lock.inspect()).toEqual(FREE);
    expect(lock.tryWriteLock()).toBe(true);
    expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: true });
    expect(lock.tryReadLock()).toBe(false);
    expect(lock.tryWriteLock()).toBe(false);
    lock.writeUnlock();
    expect(lock.inspect()).toEqual(FREE);
    expect(lock.readLock()).toBe(true);
    expect(lock.readLock(0)).toBe(true);
    lock.readUnlock();
    lock.readUnlock();
    expect(lock.writeLock()).toBe(true);
    lock.writeUnlock();
    expect(lock.writeLock(0)).toBe(true);
    lock.writeUnlock();
    expect(lock.inspect()).toEqual(FREE);
  });

  it('throws invalid-state on an unlock without the lock held, and leaves the state as it was', () => {
    const lock = createRWLock();
    expect(expectError(() => lock.readUnlock(), 'invalid-state').message).toBe(
      '[dirtytrack] [rwlock] readUnlock without a read lock held',
    );
    expect(expectError(() => lock.writeUnlock(), 'invalid-state').message).toBe(
      '[dirtytrack] [rwlock] writeUnlock without the write lock held',
    );
    expect(lock.inspect()).toEqual(FREE);

    expect(lock.tryWriteLock()).toBe(true);
    expectError(() => lock.readUnlock(), 'invalid-state');
    expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: true });
    lock.writeUnlock();

    expect(lock.tryReadLock()).toBe(true);
    expectError(() => lock.writeUnlock(), 'invalid-state');
    expect(lock.inspect()).toEqual({ readers: 1, waitingWriters: 0, writer: false });
    lock.readUnlock();
    expectError(() => lock.readUnlock(), 'invalid-state');
    expect(lock.inspect()).toEqual(FREE);
  });

  it('writeLock(timeout) with a reader held returns false after the timeout and withdraws', () => {
    const lock = createRWLock();
    expect(lock.tryReadLock()).toBe(true);
    const start = process.hrtime.bigint();
    expect(lock.writeLock(50)).toBe(false);
    const waited = elapsedMs(start);
    expect(waited).toBeGreaterThanOrEqual(50);
    expect(waited).toBeLessThan(2_000);
    expect(lock.inspect()).toEqual({ readers: 1, waitingWriters: 0, writer: false });
    expect(lock.tryReadLock()).toBe(true); // the withdrawn writer no longer holds readers back
    lock.readUnlock();
    lock.readUnlock();
    expect(lock.writeLock(0)).toBe(true);
    lock.writeUnlock();
  });

  it('readLock(timeout) while a writer holds returns false after the timeout', () => {
    const lock = createRWLock();
    expect(lock.tryWriteLock()).toBe(true);
    const start = process.hrtime.bigint();
    expect(lock.readLock(30)).toBe(false);
    expect(elapsedMs(start)).toBeGreaterThanOrEqual(30);
    expect(lock.readLock(0)).toBe(false);
    expect(lock.writeLock(0)).toBe(false);
    expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: true });
    lock.writeUnlock();
    expect(lock.inspect()).toEqual(FREE);
  });

  it('rejects bad timeouts with invalid-argument', () => {
    const lock = createRWLock();
    expectError(() => lock.readLock(-1), 'invalid-argument');
    expectError(() => lock.writeLock(NaN), 'invalid-argument');
    expect(lock.inspect()).toEqual(FREE);
  });

  it('attaches to a lock at a 4-byte-aligned offset of a SharedArrayBuffer, sharing its state', () => {
    expect(RWLOCK_BYTES).toBe(4);
    const buffer = new SharedArrayBuffer(12);
    const a = attachRWLock(buffer, 4);
    const b = attachRWLock(buffer, 8);
    const a2 = attachRWLock(buffer, 4);
    expect(a.buffer).toBe(buffer);
    expect(a.byteOffset).toBe(4);
    expect(a.tryWriteLock()).toBe(true);
    expect(a2.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: true });
    expect(a2.tryReadLock()).toBe(false);
    expect(b.tryReadLock()).toBe(true); // a different slot is a different lock
    expect(Array.from(new Int32Array(buffer))).toEqual([0, 1 << 30, 1]);
    a2.writeUnlock(); // any attachment may release: the lock is the shared word
    b.readUnlock();
    expect(Array.from(new Int32Array(buffer))).toEqual([0, 0, 0]);
    expect(createRWLock().buffer.byteLength).toBe(RWLOCK_BYTES);
  });

  it('rejects non-shared buffers and bad offsets', () => {
    expectError(() => attachRWLock(new ArrayBuffer(4) as unknown as SharedArrayBuffer), 'unsupported');
    expectError(() => attachRWLock(new SharedArrayBuffer(8), 2), 'out-of-range');
    expectError(() => attachRWLock(new SharedArrayBuffer(8), 8), 'out-of-range');
    expectError(() => attachRWLock(new SharedArrayBuffer(8), -4), 'out-of-range');
    expectError(() => attachRWLock(new SharedArrayBuffer(2)), 'out-of-range');
  });
});

describe('RWLock across threads', () => {
  function startActor(role: ActorData['role'], lock: RWLock, shm: Int32Array, timeoutMs = 10_000): Worker {
    const data: ActorData = {
      role,
      lock: lock.buffer,
      lockOffset: lock.byteOffset,
      shm: shm.buffer as SharedArrayBuffer,
      timeoutMs,
    };
    return startWorker(ACTOR_WORKER, data);
  }

  it('prefers writers: while one waits, new readers are refused even though only readers hold', async () => {
    const lock = attachRWLock(new SharedArrayBuffer(16), 8);
    const shm = new Int32Array(new SharedArrayBuffer(ACTOR.LENGTH * 4));
    const workers: Worker[] = [];
    try {
      workers.push(startActor('reader', lock, shm));
      const exits = exitCodes(workers);
      await waitUntil(() => Atomics.load(shm, ACTOR.READER_HOLDS) === 1, 15_000, 'thread A to read-lock');
      expect(lock.inspect()).toEqual({ readers: 1, waitingWriters: 0, writer: false });

      workers.push(startActor('writer', lock, shm));
      const writerExit = exitCodes(workers.slice(1));
      await waitUntil(() => lock.inspect().waitingWriters === 1, 15_000, 'thread B to wait in writeLock');
      expect(lock.tryReadLock()).toBe(false);
      expect(lock.readLock(20)).toBe(false);
      expect(lock.tryWriteLock()).toBe(false);
      expect(lock.inspect()).toEqual({ readers: 1, waitingWriters: 1, writer: false });
      expect(Atomics.load(shm, ACTOR.WRITER_RESULT)).toBe(0);

      // A releases: B gets the lock (readers still kept out), then releases it too.
      Atomics.store(shm, ACTOR.READER_RELEASE, 1);
      Atomics.notify(shm, ACTOR.READER_RELEASE);
      await waitUntil(() => Atomics.load(shm, ACTOR.WRITER_RESULT) !== 0, 15_000, 'thread B to get the lock');
      expect(Atomics.load(shm, ACTOR.WRITER_RESULT)).toBe(1);
      expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: true });
      expect(lock.tryReadLock()).toBe(false);
      Atomics.store(shm, ACTOR.WRITER_RELEASE, 1);
      Atomics.notify(shm, ACTOR.WRITER_RELEASE);
      expect(await exits).toEqual([0]);
      expect(await writerExit).toEqual([0]);
      expect(lock.inspect()).toEqual(FREE);
      expect(lock.tryReadLock()).toBe(true);
      lock.readUnlock();
    } finally {
      await terminateAll(workers);
    }
  });

  it('writeUnlock wakes a reader blocked in readLock at once, not at its timeout', async () => {
    const lock = createRWLock();
    const shm = new Int32Array(new SharedArrayBuffer(ACTOR.LENGTH * 4));
    expect(lock.tryWriteLock()).toBe(true);
    const workers = [startActor('reader', lock, shm)];
    try {
      const exits = exitCodes(workers);
      await waitUntil(
        () => Atomics.load(shm, ACTOR.READER_TRYING) === 1,
        15_000,
        'the reader to call readLock',
      );
      await new Promise((resolve) => setTimeout(resolve, 50)); // let it block in Atomics.wait
      expect(Atomics.load(shm, ACTOR.READER_HOLDS)).toBe(0);
      const start = process.hrtime.bigint();
      lock.writeUnlock();
      // The reader's readLock timeout is 10 s; only a notify wakes it well before that.
      await waitUntil(
        () => Atomics.load(shm, ACTOR.READER_HOLDS) === 1,
        15_000,
        'the reader to get the lock',
      );
      expect(elapsedMs(start)).toBeLessThan(3_000);
      expect(lock.inspect()).toEqual({ readers: 1, waitingWriters: 0, writer: false });
      Atomics.store(shm, ACTOR.READER_RELEASE, 1);
      Atomics.notify(shm, ACTOR.READER_RELEASE);
      expect(await exits).toEqual([0]);
      expect(lock.inspect()).toEqual(FREE);
    } finally {
      await terminateAll(workers);
    }
  });

  it('a waiting writer whose timeout expires withdraws and wakes the readers it held back', async () => {
    const lock = createRWLock();
    const shm = new Int32Array(new SharedArrayBuffer(ACTOR.LENGTH * 4));
    const workers: Worker[] = [];
    try {
      workers.push(startActor('reader', lock, shm));
      await waitUntil(() => Atomics.load(shm, ACTOR.READER_HOLDS) === 1, 15_000, 'thread A to read-lock');
      workers.push(startActor('writer', lock, shm, 300));
      await waitUntil(() => lock.inspect().waitingWriters === 1, 15_000, 'thread B to wait in writeLock');
      // Blocks this thread until B gives up (about 300 ms after it started waiting), not 10 s.
      const start = process.hrtime.bigint();
      expect(lock.readLock(10_000)).toBe(true);
      expect(elapsedMs(start)).toBeLessThan(5_000);
      // B stores its result just after writeLock returns, which may be just after we woke.
      await waitUntil(() => Atomics.load(shm, ACTOR.WRITER_RESULT) !== 0, 15_000, 'thread B to give up');
      expect(Atomics.load(shm, ACTOR.WRITER_RESULT)).toBe(2);
      expect(lock.inspect()).toEqual({ readers: 2, waitingWriters: 0, writer: false });
      lock.readUnlock();
      Atomics.store(shm, ACTOR.READER_RELEASE, 1);
      Atomics.notify(shm, ACTOR.READER_RELEASE);
      expect(await exitCodes(workers)).toEqual([0, 0]);
      expect(lock.inspect()).toEqual(FREE);
    } finally {
      await terminateAll(workers);
    }
  });
});

interface StressRun {
  shm: Int32Array;
  lock: RWLock;
  /** Calls the main thread made to `whileRunning` before the workers finished. */
  mainCalls: number;
}

/**
 * Runs `workers` stress workers in `mode` over one lock (at a non-zero offset of its buffer) and
 * waits for all of them; `whileRunning` is called in a loop on this thread meanwhile.
 */
async function runStress(
  mode: StressMode,
  options: { workers: number; iterations: number; busy: number; whileRunning?: (lock: RWLock) => void },
): Promise<StressRun> {
  const lock = attachRWLock(new SharedArrayBuffer(64), 16);
  const shm = new Int32Array(new SharedArrayBuffer(STRESS.LENGTH * 4));
  const workers = Array.from({ length: options.workers }, (_, worker) => {
    const data: StressData = {
      mode,
      lock: lock.buffer,
      lockOffset: lock.byteOffset,
      shm: shm.buffer as SharedArrayBuffer,
      worker,
      workers: options.workers,
      iterations: options.iterations,
      seed: 0xd1e7,
      busy: options.busy,
      timeoutMs: 5_000,
    };
    return startWorker(STRESS_WORKER, data);
  });
  const exits = exitCodes(workers);
  try {
    await waitUntil(() => Atomics.load(shm, STRESS.READY) === options.workers, 15_000, 'workers to start');
    Atomics.store(shm, STRESS.GO, 1);
    Atomics.notify(shm, STRESS.GO);
    let mainCalls = 0;
    if (options.whileRunning) {
      const deadline = performance.now() + 20_000;
      while (Atomics.load(shm, STRESS.FINISHED) < options.workers && performance.now() < deadline) {
        options.whileRunning(lock);
        mainCalls++;
      }
    }
    await waitUntil(
      () => Atomics.load(shm, STRESS.FINISHED) === options.workers,
      20_000,
      'workers to finish',
    );
    expect(await exits).toEqual(Array.from({ length: options.workers }, () => 0));
    return { shm, lock, mainCalls };
  } finally {
    await terminateAll(workers);
  }
}

describe('RWLock stress (worker_threads)', () => {
  it('keeps writers exclusive, loses no update and never deadlocks', async () => {
    const WORKERS = 4;
    const { shm, lock } = await runStress('locked', { workers: WORKERS, iterations: 3_000, busy: 200 });
    expect(Atomics.load(shm, STRESS.FAILED)).toBe(0);
    expect(Atomics.load(shm, STRESS.VIOLATIONS)).toBe(0);
    expect(Atomics.load(shm, STRESS.DEADLOCKS)).toBe(0);
    const writes = Atomics.load(shm, STRESS.WRITES);
    const reads = Atomics.load(shm, STRESS.READS);
    // At least the blocking calls (55% reads, 20% writes of 12,000 draws) must have succeeded.
    expect(writes).toBeGreaterThan(2_000);
    expect(reads).toBeGreaterThan(6_000);
    expect(Atomics.load(shm, STRESS.COUNTER)).toBe(writes);
    expect(Atomics.load(shm, STRESS.WRITER_INSIDE)).toBe(0);
    expect(Atomics.load(shm, STRESS.READERS_INSIDE)).toBe(0);
    expect(lock.inspect()).toEqual(FREE);
  });

  it("a bogus readUnlock on one thread never disturbs another thread's write locking", async () => {
    // The main thread keeps calling readUnlock without a read lock while a worker write-locks
    // and unlocks as fast as it can. Each bogus call must just throw invalid-state; the worker
    // must never see a spurious error, a lock it cannot take, or a lock it cannot release.
    let refused = 0;
    let wrong = 0;
    const { shm, lock, mainCalls } = await runStress('writers', {
      workers: 1,
      iterations: 300_000,
      busy: 0,
      whileRunning: (l) => {
        try {
          l.readUnlock();
        } catch (error) {
          if (isDirtytrackError(error, 'invalid-state')) refused++;
          else wrong++;
        }
      },
    });
    expect(wrong).toBe(0);
    expect(refused).toBe(mainCalls);
    expect(mainCalls).toBeGreaterThan(1_000);
    expect(Atomics.load(shm, STRESS.FAILED)).toBe(0);
    expect(Atomics.load(shm, STRESS.DEADLOCKS)).toBe(0);
    expect(Atomics.load(shm, STRESS.VIOLATIONS)).toBe(0);
    expect(Atomics.load(shm, STRESS.WRITES)).toBeGreaterThan(150_000);
    expect(Atomics.load(shm, STRESS.COUNTER)).toBe(Atomics.load(shm, STRESS.WRITES));
    expect(lock.inspect()).toEqual(FREE);
  });

  describe('negative controls: the counter check does detect lost updates', () => {
    it('without the lock, 4 workers lose updates', async () => {
      const { shm } = await runStress('unlocked', { workers: 4, iterations: 20_000, busy: 200 });
      expect(Atomics.load(shm, STRESS.FAILED)).toBe(0);
      expect(Atomics.load(shm, STRESS.WRITES)).toBe(80_000);
      expect(Atomics.load(shm, STRESS.COUNTER)).toBeLessThan(80_000);
    });

    it('two workers that both read before either writes lose one update (deterministic)', async () => {
      const { shm } = await runStress('barrier', { workers: 2, iterations: 1, busy: 0 });
      expect(Atomics.load(shm, STRESS.FAILED)).toBe(0);
      expect(Atomics.load(shm, STRESS.WRITES)).toBe(2);
      expect(Atomics.load(shm, STRESS.COUNTER)).toBe(1);
    });
  });
});

function expectError(fn: () => unknown, code: DirtytrackErrorCode): DirtytrackError {
  return expectDirtytrackError(fn, code, 'rwlock');
}
