import { workerData } from 'node:worker_threads';
import { attachRWLock } from '@dirtytrack/core';
import { createSwapDirtyLog } from '../swap-dirty-log.js';

/** Data a producer worker gets: the slot's memory, the lock, and which pages to mark. */
export interface SwapProducerData {
  buffer: SharedArrayBuffer;
  pages: number;
  lock: { buffer: SharedArrayBuffer; byteOffset: number };
  /** Int32 [0] = batches done (all workers), [1] = go (waits for non-zero). */
  control: SharedArrayBuffer;
  /** This worker marks pages first, first + step, first + 2·step, … below `pages`, `batch` at a time. */
  first: number;
  step: number;
  batch: number;
}

const data = workerData as SwapProducerData;
const lock = attachRWLock(data.lock.buffer, data.lock.byteOffset);
const slot = { id: 0, asId: 0, baseGfn: 0, pages: data.pages };
const log = createSwapDirtyLog({ slots: [slot], lock, buffers: new Map([[0, data.buffer]]) });
const control = new Int32Array(data.control);
const offsets = new Uint32Array(data.batch);
Atomics.wait(control, 1, 0);
let n = 0;
for (let p = data.first; p < data.pages; p += data.step) {
  offsets[n++] = p;
  if (n === data.batch) {
    log.markDirty(0, offsets, n, -1);
    Atomics.add(control, 0, 1);
    n = 0;
  }
}
if (n > 0) log.markDirty(0, offsets, n, -1);
