// Preloaded (`NODE_OPTIONS=--require …`) into every thread of a `serve` process under test: a
// standby vCPU worker (workerData.standby) blocks here for ever, before its modules load, as a
// worker hung in its imports would. Every other thread goes on. Worker.terminate() ends the wait.
'use strict';
// A CommonJS preload, since Node 20 runs --require modules in worker threads and --import ones not.
// eslint-disable-next-line @typescript-eslint/no-require-imports, no-undef
const { isMainThread, workerData } = require('node:worker_threads');

if (!isMainThread && workerData !== null && typeof workerData === 'object' && workerData.standby === true)
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
