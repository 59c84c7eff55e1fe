import { workerData } from 'node:worker_threads';
import { Bitmap } from '../bitmap.js';
import { SETTER_CONTROL as CONTROL, type SetterData } from './layouts.js';

// In each epoch the main thread starts, sets this worker's slice of pages into the shared bitmap
// with `setAtomic` (then a prefix of it again) while the main thread collects from the same
// bitmap; then reports the epoch finished. See SETTER_CONTROL for the handshake.

const data = workerData as SetterData;
const control = new Int32Array(data.control);
try {
  const bitmap = Bitmap.wrap(data.buffer, data.bits, data.byteOffset);
  const pages = data.pages;
  Atomics.add(control, CONTROL.READY, 1);
  for (let epoch = 1; epoch <= data.epochs; epoch++) {
    const deadline = performance.now() + 10_000;
    for (;;) {
      const started = Atomics.load(control, CONTROL.EPOCH);
      if (started >= epoch) break;
      if (performance.now() > deadline) throw new Error(`epoch ${epoch} did not start within 10 s`);
      Atomics.wait(control, CONTROL.EPOCH, started, 100);
    }
    const first = (epoch - 1) * data.perEpoch;
    for (let i = first; i < first + data.perEpoch; i++) bitmap.setAtomic(pages[i] as number);
    for (let i = first; i < first + data.again; i++) bitmap.setAtomic(pages[i] as number);
    Atomics.add(control, CONTROL.FINISHED, 1);
  }
} catch (error) {
  Atomics.add(control, CONTROL.FAILED, 1);
  throw error;
}
