import { workerData } from 'node:worker_threads';
import { Bitmap } from '../bitmap.js';
import { SETTER_CONTROL as CONTROL, type SetterData } from './layouts.js';

// Sets a known list of pages into a shared bitmap with `setAtomic`, `rounds` times over, while the
// main thread collects from the same bitmap (see SETTER_CONTROL for the handshake).

const data = workerData as SetterData;
const control = new Int32Array(data.control);
try {
  const bitmap = Bitmap.wrap(data.buffer, data.bits, data.byteOffset);
  Atomics.add(control, CONTROL.READY, 1);
  const deadline = performance.now() + 10_000;
  while (Atomics.load(control, CONTROL.GO) === 0) {
    if (performance.now() > deadline) throw new Error('no GO within 10 s');
    Atomics.wait(control, CONTROL.GO, 0, 100);
  }
  const pages = data.pages;
  for (let round = 0; round < data.rounds; round++) {
    for (let i = 0; i < pages.length; i++) bitmap.setAtomic(pages[i] as number);
  }
} catch (error) {
  Atomics.add(control, CONTROL.FAILED, 1);
  throw error;
} finally {
  Atomics.add(control, CONTROL.DONE, 1);
}
