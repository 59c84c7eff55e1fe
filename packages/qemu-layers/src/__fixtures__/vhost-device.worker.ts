import { workerData } from 'node:worker_threads';
import { attachRWLock } from '@dirtytrack/core';
import { attachVhostLog } from '../vhost-log.js';

/** Data the vhost device worker gets: the log's memory, an optional lock, and what to mark. */
export interface VhostDeviceData {
  buffer: SharedArrayBuffer;
  pages: number;
  lock?: { buffer: SharedArrayBuffer; byteOffset: number };
  /**
   * Int32 [0] = batches done, [1] = go (the worker waits for it to become non-zero), [2] = syncs
   * the main thread has done. The worker marks `batches` batches of `batch` pages and, every
   * `every` batches, waits for the next sync, so syncs are sure to run mid-stream.
   */
  control: SharedArrayBuffer;
  batches: number;
  batch: number;
  stride: number;
  every: number;
}

const data = workerData as VhostDeviceData;
const lock = data.lock === undefined ? undefined : attachRWLock(data.lock.buffer, data.lock.byteOffset);
const log = attachVhostLog(data.buffer, data.pages, lock === undefined ? {} : { lock });
const control = new Int32Array(data.control);
const offsets = new Uint32Array(data.batch);
let page = 0;
Atomics.wait(control, 1, 0);
for (let b = 0; b < data.batches; b++) {
  for (let i = 0; i < data.batch; i++) {
    offsets[i] = page;
    page = (page + data.stride) % data.pages;
  }
  log.markDirty(offsets, data.batch);
  Atomics.add(control, 0, 1);
  if ((b + 1) % data.every === 0 && b + 1 < data.batches)
    Atomics.wait(control, 2, Atomics.load(control, 2), 1000);
}
