import { parentPort, workerData } from 'node:worker_threads';
import { attachUffdWpTracker } from '../uffd-wp-tracker.js';

// One batch of vCPU stores into write-protected pages, from a worker thread in guest mode:
// `write` returns only once every page of the batch may be stored (sync uffd-wp), then the
// thread says so, leaves guest mode and ends.

const d = workerData as { descriptor: unknown; pages: number[] };
const vt = attachUffdWpTracker(d.descriptor);
vt.attach({ markDirty() {} });
vt.enterGuest?.(0);
vt.write(0, 0, Uint32Array.from(d.pages), d.pages.length);
parentPort?.postMessage('stored');
vt.exitGuest?.(0);
