import { parentPort } from 'node:worker_threads';
import { createRng, type VcpuTracker } from '@dirtytrack/core';
import { CONTROL, WORDS_PER_PAGE, storedValue, type UffdVcpuData } from './uffd-vcpu-layout.js';

// A vCPU thread of the uffd-wp live test: each message is one run. It rebuilds the tracker from
// the run's AttachSpec (the way any engine would), then loops: `write` a batch of random pages —
// which returns only when every store may proceed (a sync fault sleeps until the snapshot thread
// saved and unprotected the page) — check, before each store, that the page was saved when the
// sync snapshot is running, and store a real value into guest memory. It honours PAUSE (the VM
// stopped while the snapshot starts) and STOP. It is in guest mode while it runs (a flush after
// a re-protect waits for such vCPUs to begin their next write), out of it while paused and once
// it stops. The message 'exit' ends the thread.

function waitFor(control: Int32Array, index: number, value: number, what: string): void {
  const deadline = performance.now() + 20_000;
  for (;;) {
    const seen = Atomics.load(control, index);
    if (seen >= value) return;
    if (performance.now() > deadline) throw new Error(`no ${what} within 20 s`);
    Atomics.wait(control, index, seen, 50);
  }
}

async function run(data: UffdVcpuData): Promise<void> {
  const control = new Int32Array(data.control);
  const v = data.vcpu;
  try {
    const mod = (await import(data.spec.module)) as Record<string, (d: unknown) => VcpuTracker>;
    const factory = mod[data.spec.factory];
    if (factory === undefined) throw new Error(`${data.spec.module} has no export ${data.spec.factory}`);
    const vt = factory(data.spec.data);
    let reported = 0;
    vt.attach({
      markDirty(_slot, _offsets, count) {
        reported += count;
      },
    });
    const memory = new Int32Array(data.memory);
    const saved = new Int32Array(data.saved);
    const rng = createRng(data.seed).fork(v);
    const offsets = new Uint32Array(data.batch);

    Atomics.add(control, CONTROL.READY, 1);
    Atomics.notify(control, CONTROL.READY);
    waitFor(control, CONTROL.GO, 1, `GO for vCPU ${v}`);

    vt.enterGuest?.(v);
    const deadline = performance.now() + data.maxMs;
    let writes = 0;
    let trapped = 0;
    for (let iter = 0; ; iter++) {
      if (Atomics.load(control, CONTROL.STOP) !== 0) break;
      if ((iter & 255) === 0 && performance.now() > deadline) break;
      if (Atomics.load(control, CONTROL.PAUSE) !== 0) {
        vt.exitGuest?.(v); // A paused vCPU is out of guest mode: flushes do not wait for it.
        Atomics.add(control, CONTROL.PAUSED, 1);
        Atomics.notify(control, CONTROL.PAUSED);
        while (Atomics.load(control, CONTROL.PAUSE) !== 0 && Atomics.load(control, CONTROL.STOP) === 0) {
          Atomics.wait(control, CONTROL.PAUSE, 1, 50);
        }
        Atomics.sub(control, CONTROL.PAUSED, 1);
        vt.enterGuest?.(v);
        continue;
      }
      rng.fillInts(offsets, offsets.length, data.pages);
      trapped += vt.write(v, 0, offsets, offsets.length);
      const checking = Atomics.load(control, CONTROL.CHECK) !== 0;
      for (let i = 0; i < offsets.length; i++) {
        const page = offsets[i] as number;
        // §10.12: the store may proceed only once the page's old content is in the snapshot.
        if (checking && (Atomics.load(saved, page >>> 5) & (1 << (page & 31))) === 0) {
          Atomics.add(control, CONTROL.VIOLATIONS, 1);
        }
        Atomics.store(memory, page * WORDS_PER_PAGE + rng.nextInt(WORDS_PER_PAGE), storedValue(v, writes));
        writes++;
      }
    }
    vt.exitGuest?.(v);
    const base = CONTROL.PER_VCPU + v * CONTROL.PER_VCPU_WORDS;
    Atomics.store(control, base, writes);
    Atomics.store(control, base + 1, trapped);
    Atomics.store(control, base + 2, reported);
    Atomics.add(control, CONTROL.DONE, 1);
    Atomics.notify(control, CONTROL.DONE);
  } catch (error) {
    Atomics.add(control, CONTROL.FAILED, 1);
    Atomics.notify(control, CONTROL.DONE);
    throw error;
  }
}

const port = parentPort;
if (port === null) throw new Error('uffd-vcpu.worker.ts runs as a worker thread');
port.on('message', (message: UffdVcpuData | 'exit') => {
  if (message === 'exit') port.close();
  else void run(message);
});
