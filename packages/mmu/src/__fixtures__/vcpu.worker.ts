import { parentPort } from 'node:worker_threads';
import { attachRWLock, Bitmap, createRng } from '@dirtytrack/core';
import { attachMmu } from '../mmu.js';
import { CONTROL, storedValue, type VcpuWorkerData } from './vcpu-layout.js';

// A vCPU thread of the stress test's pool: each message is one run. It attaches to that run's
// MMU and, in guest mode, repeatedly writes one page — first through the MMU (which reports a
// W 0→1 transition to the sink before returning, as KVM records the gfn before the faulting
// store retires), then the store itself into guest memory. The sink is the run's shared dirty
// bitmap, set with atomics (mark_page_dirty_in_slot). The message 'exit' ends the thread.

function waitFor(control: Int32Array, index: number, value: number, what: string): void {
  const deadline = performance.now() + 20_000;
  for (;;) {
    const seen = Atomics.load(control, index);
    if (seen >= value) return;
    if (performance.now() > deadline) throw new Error(`no ${what} within 20 s`);
    Atomics.wait(control, index, seen, 50);
  }
}

function run(data: VcpuWorkerData): void {
  const control = new Int32Array(data.control);
  const v = data.vcpu;
  try {
    const mmu = attachMmu(data.descriptor);
    const pages = data.descriptor.slots[0]?.slot.pages ?? 0;
    const dirty = Bitmap.wrap(data.dirty, pages);
    let reported = 0;
    const lock = data.sinkLock === undefined ? undefined : attachRWLock(data.sinkLock, 0);
    mmu.attach({
      markDirty(_slot, offsets, count) {
        lock?.readLock();
        try {
          for (let i = 0; i < count; i++) dirty.setAtomic(offsets[i] as number);
          reported += count;
        } finally {
          lock?.readUnlock();
        }
      },
    });
    const memory = new Int32Array(data.memory);
    const rng = createRng(data.seed).fork(v);
    const hot = new Uint32Array(data.hotPages);
    rng.fillInts(hot, hot.length, pages);
    const one = new Uint32Array(1);
    const halt = new Int32Array(new SharedArrayBuffer(4));

    Atomics.add(control, CONTROL.READY, 1);
    Atomics.notify(control, CONTROL.READY);
    waitFor(control, CONTROL.GO, 1, `GO for vCPU ${v}`);

    const deadline = performance.now() + data.maxMs;
    let writes = 0;
    mmu.enterGuest(v);
    for (; writes < data.maxWrites; writes++) {
      if (Atomics.load(control, CONTROL.STOP) !== 0) break;
      if ((writes & 1023) === 0 && performance.now() > deadline) break;
      if (writes > 0 && writes % data.haltEvery === 0) {
        mmu.exitGuest(v); // HLT: a VM exit, then the vCPU thread sleeps.
        Atomics.wait(halt, 0, 0, data.haltMs);
        mmu.enterGuest(v);
      }
      const r = rng.nextU32();
      const page = (r & 255) < data.hotShare ? (hot[(r >>> 8) % hot.length] as number) : rng.nextInt(pages);
      one[0] = page;
      mmu.write(v, 0, one, 1);
      Atomics.store(
        memory,
        page * data.wordsPerPage + rng.nextInt(data.wordsPerPage),
        storedValue(v, writes),
      );
    }
    mmu.exitGuest(v);
    Atomics.store(control, CONTROL.PER_VCPU + v * CONTROL.PER_VCPU_WORDS, writes);
    Atomics.store(control, CONTROL.PER_VCPU + v * CONTROL.PER_VCPU_WORDS + 1, reported);
    Atomics.add(control, CONTROL.DONE, 1);
    Atomics.notify(control, CONTROL.DONE);
  } catch (error) {
    Atomics.add(control, CONTROL.FAILED, 1);
    Atomics.notify(control, CONTROL.DONE);
    throw error;
  }
}

const port = parentPort;
if (port === null) throw new Error('vcpu.worker.ts runs as a worker thread');
port.on('message', (message: VcpuWorkerData | 'exit') => {
  if (message === 'exit') port.close();
  else run(message);
});
