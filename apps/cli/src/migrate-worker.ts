/**
 * The worker thread `dirtytrack migrate` runs its migration in (live.ts `migrateInWorker`): the
 * migration loop blocks the thread it runs on, and only the main thread sees signals — so the
 * main thread stays free for Ctrl-C and sets the cancel word this worker's loop polls.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runMigrate, type MigratePlan, type MigrateWorkerMessage } from './live.js';
import { describeError } from './worker-errors.js';

const { plan, cancel } = workerData as { plan: MigratePlan; cancel: Int32Array };
const port = parentPort;
if (port === null) throw new Error('migrate-worker: not a worker thread');
const post = (message: MigrateWorkerMessage): void => port.postMessage(message);

try {
  const result = await runMigrate(plan, {
    log: (line) => post({ kind: 'log', line }),
    onStatus: (status) => post({ kind: 'status', status }),
    cancelRequested: () => Atomics.load(cancel, 0) !== 0,
  });
  post({ kind: 'result', result });
} catch (error) {
  post({ kind: 'error', error: describeError(error) });
}
