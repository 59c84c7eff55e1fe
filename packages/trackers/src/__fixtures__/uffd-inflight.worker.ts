import { workerData } from 'node:worker_threads';
import { attachUffdWpTracker } from '../uffd-wp-tracker.js';

// A vCPU (in guest mode) whose store is still in flight when the owner re-protects its page. `write` lets the
// store through (async uffd-wp: the page becomes WRITTEN) and the thread says so (flag 0), then
// holds the store for `holdMs`, still in guest mode, before it stores and says so (flag 1).
// `next`: it then starts one more write (which acknowledges any flush begun meanwhile) and leaves
// guest mode. Otherwise it stays in guest mode, idle, until the test sets flag 2.

interface Data {
  readonly descriptor: unknown;
  readonly memory: SharedArrayBuffer;
  readonly flags: SharedArrayBuffer;
  readonly page: number;
  readonly next: number | undefined;
  readonly holdMs: number;
}

const d = workerData as Data;
const vt = attachUffdWpTracker(d.descriptor);
vt.attach({ markDirty() {} });
vt.enterGuest?.(0);
const flags = new Int32Array(d.flags);
const memory = new Int32Array(d.memory);
vt.write(0, 0, Uint32Array.of(d.page), 1);
Atomics.store(flags, 0, 1);
Atomics.notify(flags, 0);
Atomics.wait(flags, 3, 0, d.holdMs); // Word 3 stays 0: a plain sleep, the store in flight.
Atomics.store(memory, d.page * 1024, 0x5eed);
Atomics.store(flags, 1, 1);
if (d.next !== undefined) {
  vt.write(0, 0, Uint32Array.of(d.next), 1);
  vt.exitGuest?.(0);
} else {
  for (let i = 0; i < 200 && Atomics.load(flags, 2) === 0; i++) Atomics.wait(flags, 2, 0, 50);
}
