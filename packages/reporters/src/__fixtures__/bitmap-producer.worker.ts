import { workerData } from 'node:worker_threads';
import { attachRWLock } from '@dirtytrack/core';
import { createBitmapReporter } from '../bitmap-reporter.js';
import { PRODUCER, epochPages, type ProducerData } from './bitmap-layouts.js';

// A vCPU-like producer: attaches a bitmap reporter to the main thread's shared slot bitmap (and
// mmu_lock) and marks pages through it. See PRODUCER for the handshake.

const data = workerData as ProducerData;
const control = new Int32Array(data.control);

function waitFor(index: number, value: number, what: string): void {
  const deadline = performance.now() + 10_000;
  for (;;) {
    const seen = Atomics.load(control, index);
    if (seen >= value) return;
    if (performance.now() > deadline) throw new Error(`producer ${data.producer}: no ${what} within 10 s`);
    Atomics.wait(control, index, seen, 50);
  }
}

try {
  const reporter = createBitmapReporter({
    rearmer: {
      rearm: () => {
        throw new Error('a producer never harvests');
      },
    },
    slots: [data.slot],
    buffers: data.buffers,
    updates: data.updates,
    ...(data.lock === undefined ? {} : { lock: attachRWLock(data.lock.buffer, data.lock.byteOffset) }),
  });
  const id = data.slot.id;
  Atomics.add(control, PRODUCER.READY, 1);
  if (data.mode === 'stress') {
    for (let epoch = 1; epoch <= data.epochs; epoch++) {
      waitFor(PRODUCER.EPOCH, epoch, `epoch ${epoch}`);
      const pages = epochPages(data.producer, data.producers, data.slot.pages, epoch);
      for (let i = 0; i < pages.length; i += data.batch) {
        const batch = pages.subarray(i, i + data.batch);
        reporter.markDirty(id, batch, batch.length, data.producer);
      }
      Atomics.add(control, PRODUCER.FINISHED, 1);
      Atomics.notify(control, PRODUCER.FINISHED);
    }
  } else {
    for (let step = 1; step <= data.epochs; step++) {
      waitFor(PRODUCER.EPOCH, step, `step ${step}`);
      Atomics.store(control, PRODUCER.TRYING, step);
      Atomics.notify(control, PRODUCER.TRYING);
      reporter.markDirty(id, Uint32Array.of(data.stepPages[step - 1] as number), 1, data.producer);
      Atomics.store(control, PRODUCER.DONE, step);
      Atomics.notify(control, PRODUCER.DONE);
    }
  }
} catch (error) {
  Atomics.add(control, PRODUCER.FAILED, 1);
  throw error;
}
