import { parentPort, workerData } from 'node:worker_threads';
import { attachUffdWpTracker } from '../uffd-wp-tracker.js';

// One vCPU store into a write-protected page, from a worker thread: `write` returns only once the
// page may be stored (sync uffd-wp), then the thread says so and ends.

const d = workerData as { descriptor: unknown; page: number };
const vt = attachUffdWpTracker(d.descriptor);
vt.attach({ markDirty() {} });
vt.write(0, 0, new Uint32Array([d.page]), 1);
parentPort?.postMessage('stored');
