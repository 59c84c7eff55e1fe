import { workerData } from 'node:worker_threads';
import { attachSwapDirtyLog, type SwapDirtyLogShareData } from '../swap-dirty-log.js';

/** Data a producer worker gets: the log's `share().data`, and which pages to mark. */
export interface SwapProducerData {
  share: SwapDirtyLogShareData;
  /**
   * Int32 [0] = batches done (all workers), [1] = go (waits for non-zero), [2] = syncs the test
   * made while the producers were mid-stream: each producer stops halfway through its batches
   * until it is non-zero, so at least one sync is bound to fall between batches (on a loaded
   * machine the producers could otherwise finish before the test's first sync).
   */
  control: SharedArrayBuffer;
  /** This worker marks pages first, first + step, first + 2·step, … below `pages`, `batch` at a time. */
  first: number;
  step: number;
  batch: number;
}

const data = workerData as SwapProducerData;
// What a live vCPU worker does with the AttachSpec the log's share() names.
const log = attachSwapDirtyLog(data.share);
const pages = data.share.slots[0]?.pages ?? 0;
const control = new Int32Array(data.control);
const offsets = new Uint32Array(data.batch);
Atomics.wait(control, 1, 0);
const halfway = Math.floor(Math.ceil((pages - data.first) / data.step) / data.batch / 2);
let n = 0;
let batches = 0;
for (let p = data.first; p < pages; p += data.step) {
  offsets[n++] = p;
  if (n === data.batch) {
    log.markDirty(0, offsets, n, -1);
    Atomics.add(control, 0, 1);
    n = 0;
    if (++batches === halfway) {
      // Bounded: after 20 s the producer goes on, and the test's mid-stream check fails instead.
      for (let i = 0; i < 400 && Atomics.load(control, 2) === 0; i++) Atomics.wait(control, 2, 0, 50);
    }
  }
}
if (n > 0) log.markDirty(0, offsets, n, -1);
