import { workerData } from 'node:worker_threads';
import { createRng } from '../rng.js';
import { attachRWLock } from '../rwlock.js';
import { STRESS, type StressData } from './layouts.js';

// One thread of the rwlock stress test (see STRESS for the shared slots and StressMode for modes).

const data = workerData as StressData;
const shm = new Int32Array(data.shm);

let sink = 0;
function busy(n: number): void {
  for (let k = 0; k < n; k++) sink = (Math.imul(sink, 31) + k) | 0;
}

function waitFor(index: number, value: number, what: string): void {
  const deadline = performance.now() + 10_000;
  for (;;) {
    const seen = Atomics.load(shm, index);
    if (seen >= value) return;
    if (performance.now() > deadline) throw new Error(`worker ${data.worker}: no ${what} within 10 s`);
    Atomics.wait(shm, index, seen, 50);
  }
}

/** The non-atomic increment the lock (or its absence) is judged by. */
function increment(): void {
  const value = shm[STRESS.COUNTER] as number;
  busy(data.busy);
  shm[STRESS.COUNTER] = value + 1;
}

function readSection(): void {
  Atomics.add(shm, STRESS.READERS_INSIDE, 1);
  if (Atomics.load(shm, STRESS.WRITER_INSIDE) !== 0) Atomics.add(shm, STRESS.VIOLATIONS, 1);
  busy(data.busy);
  if (Atomics.load(shm, STRESS.WRITER_INSIDE) !== 0) Atomics.add(shm, STRESS.VIOLATIONS, 1);
  Atomics.sub(shm, STRESS.READERS_INSIDE, 1);
  Atomics.add(shm, STRESS.READS, 1);
}

function writeSection(): void {
  if (Atomics.exchange(shm, STRESS.WRITER_INSIDE, 1) !== 0) Atomics.add(shm, STRESS.VIOLATIONS, 1);
  if (Atomics.load(shm, STRESS.READERS_INSIDE) !== 0) Atomics.add(shm, STRESS.VIOLATIONS, 1);
  increment();
  if (Atomics.load(shm, STRESS.READERS_INSIDE) !== 0) Atomics.add(shm, STRESS.VIOLATIONS, 1);
  Atomics.store(shm, STRESS.WRITER_INSIDE, 0);
  Atomics.add(shm, STRESS.WRITES, 1);
}

/** A blocking lock call timed out: count it and stop (every further wait would likely time out too). */
function deadlock(): void {
  Atomics.add(shm, STRESS.DEADLOCKS, 1);
}

function runLocked(): void {
  const lock = attachRWLock(data.lock, data.lockOffset);
  const rng = createRng(data.seed).fork(data.worker);
  for (let i = 0; i < data.iterations; i++) {
    const roll = rng.nextInt(100);
    if (roll < 55) {
      if (!lock.readLock(data.timeoutMs)) return deadlock();
      readSection();
      lock.readUnlock();
    } else if (roll < 75) {
      if (!lock.writeLock(data.timeoutMs)) return deadlock();
      writeSection();
      lock.writeUnlock();
    } else if (roll < 85) {
      if (!lock.tryReadLock()) {
        Atomics.add(shm, STRESS.BACKOFFS, 1);
        continue;
      }
      readSection();
      lock.readUnlock();
    } else if (roll < 90) {
      if (!lock.tryWriteLock()) {
        Atomics.add(shm, STRESS.BACKOFFS, 1);
        continue;
      }
      writeSection();
      lock.writeUnlock();
    } else {
      // An impatient writer: announces itself, and often withdraws when its short timeout expires.
      if (!lock.writeLock(rng.nextInt(3))) {
        Atomics.add(shm, STRESS.BACKOFFS, 1);
        continue;
      }
      writeSection();
      lock.writeUnlock();
    }
  }
}

function runWriters(): void {
  const lock = attachRWLock(data.lock, data.lockOffset);
  for (let i = 0; i < data.iterations; i++) {
    if (i % 2 === 0) {
      if (!lock.writeLock(data.timeoutMs)) return deadlock();
    } else if (!lock.tryWriteLock()) {
      Atomics.add(shm, STRESS.BACKOFFS, 1);
      continue;
    }
    writeSection();
    lock.writeUnlock();
  }
}

function runUnlocked(): void {
  for (let i = 0; i < data.iterations; i++) {
    increment();
    Atomics.add(shm, STRESS.WRITES, 1);
  }
}

function runBarrier(): void {
  const value = shm[STRESS.COUNTER] as number;
  Atomics.add(shm, STRESS.ARRIVED, 1);
  Atomics.notify(shm, STRESS.ARRIVED);
  waitFor(STRESS.ARRIVED, data.workers, 'barrier');
  shm[STRESS.COUNTER] = value + 1;
  Atomics.add(shm, STRESS.WRITES, 1);
}

try {
  Atomics.add(shm, STRESS.READY, 1);
  waitFor(STRESS.GO, 1, 'GO');
  if (data.mode === 'locked') runLocked();
  else if (data.mode === 'writers') runWriters();
  else if (data.mode === 'unlocked') runUnlocked();
  else runBarrier();
  if (sink === 0.5) throw new Error('unreachable'); // keeps the busy work observable
} catch (error) {
  Atomics.add(shm, STRESS.FAILED, 1);
  throw error;
} finally {
  Atomics.add(shm, STRESS.FINISHED, 1);
}
