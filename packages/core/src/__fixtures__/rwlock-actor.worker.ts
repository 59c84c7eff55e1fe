import { workerData } from 'node:worker_threads';
import { attachRWLock } from '../rwlock.js';
import { ACTOR, type ActorData } from './layouts.js';

// A reader that holds its read lock until told to release, or a writer that waits in writeLock
// and holds the lock until told to release (see ACTOR for the shared slots).

const data = workerData as ActorData;
const shm = new Int32Array(data.shm);
const lock = attachRWLock(data.lock, data.lockOffset);

function waitForOne(index: number): void {
  const deadline = performance.now() + 10_000;
  while (Atomics.load(shm, index) === 0) {
    if (performance.now() > deadline)
      throw new Error(`actor ${data.role}: slot ${index} not set within 10 s`);
    Atomics.wait(shm, index, 0, 50);
  }
}

if (data.role === 'reader') {
  Atomics.store(shm, ACTOR.READER_TRYING, 1);
  if (!lock.readLock(10_000)) throw new Error('reader: readLock timed out');
  Atomics.store(shm, ACTOR.READER_HOLDS, 1);
  waitForOne(ACTOR.READER_RELEASE);
  lock.readUnlock();
} else {
  const acquired = lock.writeLock(data.timeoutMs);
  Atomics.store(shm, ACTOR.WRITER_RESULT, acquired ? 1 : 2);
  if (acquired) {
    waitForOne(ACTOR.WRITER_RELEASE);
    lock.writeUnlock();
  }
}
